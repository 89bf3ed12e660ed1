"""Watermark detection rate after a re-upload, and false positives on real footage: `python -m benchmarks.bench_watermark`.

Inputs: the demo corpus's real clips (pipeline/demo_corpus.py: talking, interview, cuts) and
the packaged real videos they are made from (carphone, bunny, bikes), cut into windows of
`--window` frames. Each window is marked with model/watermark.embed (a different checkpoint id
per window) at its own size and scaled to the sampler's 512x512, written as `emo sample` writes
(stages/media/video_io.write_mp4, CRF 20), then attacked:
decoded and re-encoded with PyAV/libx264 at CRF 28, at full size and at half size (the decoder's
scaler, as a re-upload would). `detect_video` must find the mark and read back the right id.

False positives: `detect_video` on every unmarked real video, whole and each window (as written
at CRF 20, and after the same half-size CRF 28 re-encode). The mark is called present only when a
16-bit magic and a 16-bit CRC both read back, so the chance rate is about 2^-32 per video; a
benchmark of this size can only bound it: the 95% interval (Clopper-Pearson) is printed with
every count.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
from scipy.stats import beta

from model.watermark import detect_video, embed
from pipeline.demo_corpus import build_demo_corpus, packaged_media
from stages.media.video_io import read_frames, write_mp4

DEFAULT_DIR = Path("bench-out/watermark")  # git-ignored
ATTACKS = {"crf 28": (1.0, 28), "crf 28, half size": (0.5, 28)}  # name -> (scale, crf)
GOAL_ATTACK = "crf 28, half size"


def real_videos(root: Path) -> dict[str, Path]:
    """The demo corpus's real clips and the packaged real videos they come from."""
    build_demo_corpus(root / "demo")
    media = packaged_media()
    return {**{n: root / "demo" / f"{n}.mp4" for n in ("talking", "interview", "cuts")},
            **{n: media[n] for n in ("carphone", "bunny", "bikes")}}


def windows(path: Path, length: int, limit: int) -> list[list[np.ndarray]]:
    """Consecutive windows of `length` frames (at most `limit`; a short video gives one window of all)."""
    out, cur = [], []
    for _, frame in read_frames(path):
        cur.append(frame)
        if len(cur) == length:
            out.append(cur)
            cur = []
            if len(out) == limit:
                break
    return out or [cur]


def reencode(src: Path, dst: Path, scale: float, crf: int) -> Path:
    """Decode `src` and encode it again with libx264 at `crf`, scaled by the decoder's scaler."""
    _, first = next(iter(read_frames(src)))
    h, w = first.shape[:2]
    size = (int(w * scale) // 2 * 2, int(h * scale) // 2 * 2) if scale != 1.0 else None
    write_mp4(dst, (f for _, f in read_frames(src, size)), 25.0, crf=crf)
    return dst


def interval(k: int, n: int) -> tuple[float, float]:
    """Clopper-Pearson 95% interval of a rate k/n."""
    lo = beta.ppf(0.025, k, n - k + 1) if k else 0.0
    hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


def _rate_row(name: str, hits: int, n: int, **extra) -> dict:
    lo, hi = interval(hits, n)
    return {"name": name, "hits": hits, "n": n, "rate": hits / n if n else 0.0, "ci95_lo": lo, "ci95_hi": hi, **extra}


def detection(videos: dict[str, Path], work: Path, window: int, per_video: int, seed: int,
              sampler_size: int | None) -> tuple[list[dict], list[Path]]:
    """Mark every window, attack it every way; rows per size and attack, and the unmarked window files for the FP count.

    Each window is marked at its own size and, with `sampler_size`, also scaled to the square the
    sampler writes (512 for sd15), where the half-size copy still has more pixels than the mark's grid.
    """
    rng = np.random.default_rng(seed)
    sizes = ["native", *([f"{sampler_size}x{sampler_size}"] if sampler_size else [])]
    found = {(size, a): [] for size in sizes for a in ("as generated", *ATTACKS)}
    unmarked: list[Path] = []
    for name, path in videos.items():
        for k, frames in enumerate(windows(path, window, per_video)):
            plain = work / f"{name}_{k}.mp4"
            write_mp4(plain, frames, 25.0)
            unmarked.append(plain)
            for size in sizes:
                if size != "native":
                    frames = [cv2.resize(f, (sampler_size, sampler_size), interpolation=cv2.INTER_AREA) for f in frames]
                ident = int(rng.integers(0, 2**32))
                marked = work / "marked.mp4"
                write_mp4(marked, (embed(f, ident) for f in frames), 25.0)
                found[size, "as generated"].append((plain.stem, *_found(marked, ident)))
                for attack, (scale, crf) in ATTACKS.items():
                    attacked = reencode(marked, work / "attacked.mp4", scale, crf)
                    found[size, attack].append((plain.stem, *_found(attacked, ident)))
    rows = []
    for (size, attack), results in found.items():
        hits = sum(ok for _, ok, _, _ in results)
        rows.append(_rate_row(f"detected, {size}, {attack}", hits, len(results),
                              wrong_id=sum(wrong for _, _, wrong, _ in results),
                              mean_bit_accuracy=float(np.mean([acc for _, _, _, acc in results])),
                              missed=",".join(name for name, ok, _, _ in results if not ok)))
    return rows, unmarked


def _found(path: Path, ident: int) -> tuple[bool, bool, float]:
    """(mark found with the right id, mark found with a wrong id, bit accuracy)."""
    det = detect_video(str(path))
    right = det.present and det.checkpoint_id == f"{ident:08x}"
    return right, det.present and not right, det.bit_accuracy


def false_positives(videos: dict[str, Path], unmarked: list[Path], work: Path) -> list[dict]:
    scale, crf = ATTACKS[GOAL_ATTACK]
    trials = {
        "whole real videos": list(videos.values()),
        "real windows (CRF 20)": unmarked,
        f"real windows, {GOAL_ATTACK}": [reencode(p, work / f"{p.stem}_attacked.mp4", scale, crf) for p in unmarked],
    }
    rows = []
    for name, paths in trials.items():
        flagged = [p.name for p in paths if detect_video(str(p)).present]
        rows.append(_rate_row(f"false positives, {name}", len(flagged), len(paths), flagged=",".join(flagged)))
    return rows


def main(out: str | Path = DEFAULT_DIR, window: int = 50, per_video: int = 6, seed: int = 0,
         sampler_size: int | None = 512) -> list[dict]:
    """Detection rates per attack and false-positive rates, as run_all rows; prints them with counts."""
    out = Path(out)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    videos = real_videos(out)
    rows, unmarked = detection(videos, work, window, per_video, seed, sampler_size)
    rows += false_positives(videos, unmarked, work)
    sizes = {n: next(iter(read_frames(v)))[1].shape[1::-1] for n, v in videos.items()}
    print(f"{len(videos)} real videos ({', '.join(f'{n} {w}x{h}' for n, (w, h) in sizes.items())}), "
          f"windows of {window} frames, at most {per_video} each")
    print(render(rows))
    return rows


def render(rows: list[dict]) -> str:
    lines = [f"{'':56} {'count':>9} {'rate':>7} {'95% interval':>15}"]
    for r in rows:
        extra = ""
        if "wrong_id" in r:
            extra = f"  wrong id {r['wrong_id']}, mean bit accuracy {r['mean_bit_accuracy']:.3f}"
            extra += f"; missed: {r['missed']}" if r["missed"] else ""
        elif r.get("flagged"):
            extra = f"  flagged: {r['flagged']}"
        lines.append(f"{r['name']:56} {r['hits']:>4}/{r['n']:<4} {r['rate']:7.1%} "
                     f"[{r['ci95_lo']:5.1%}, {r['ci95_hi']:5.1%}]{extra}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(DEFAULT_DIR), help="work folder (the demo corpus is built there once)")
    parser.add_argument("--window", type=int, default=50, help="frames per window (2 s at 25 fps)")
    parser.add_argument("--per-video", type=int, default=6, help="windows taken from each video, at most")
    parser.add_argument("--seed", type=int, default=0, help="seed of the checkpoint ids embedded")
    parser.add_argument("--sampler-size", type=int, default=512,
                        help="also mark each window scaled to this square (the sampler's output size); 0: skip")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    main(args.dir, args.window, args.per_video, args.seed, args.sampler_size or None)
