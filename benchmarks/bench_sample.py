"""Sampling any length in bounded memory: the tiny model on 10 s and 60 s of real speech.

    .venv/bin/python -m benchmarks.bench_sample [--seconds 10 60] [--steps 2] [--checkpoint RUN]

Each length is sampled in its own process (`python -m model.sample`), which reports its own peak
resident memory; wall time gives seconds per frame. Memory that does not grow with the audio's
length shows as a peak-RSS ratio near 1 between the longest and the shortest run; the frame count
of each video is checked against the audio's length at 25 fps. Without --checkpoint, a tiny
checkpoint is trained for one step on the model tests' clips (weights do not change the cost).
The speech is pyannote.audio's sample.wav, looped to length.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import soundfile as sf

RSS_PROBE = ("import resource, runpy, sys; sys.argv = ['emo sample'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('model.sample', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")


def tiny_checkpoint(tmp: Path) -> Path:
    from model.train import main as train_main
    from tests.fixtures.tiny_clips import build_clips

    data = build_clips(tmp / "clips_out")
    run = tmp / "ckpt"
    train_main(["--data", str(data), "--stage", "2", "--out", str(run), "--steps", "1", "--quiet"])
    return run


def frame_count(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0])
    p.add_argument("--steps", type=int, default=2, help="DDIM steps per window (cost scales with it)")
    p.add_argument("--checkpoint", help="a trained run folder; default: a one-step tiny checkpoint")
    args = p.parse_args(argv if argv is not None else [])
    from pipeline.demo_corpus import packaged_media

    media = packaged_media()
    wav, rate = sf.read(media["sample_wav"], dtype="float32")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_sample_") as d:
        tmp = Path(d)
        ckpt = Path(args.checkpoint) if args.checkpoint else tiny_checkpoint(tmp)
        portrait = media["hanks"]
        for seconds in sorted(args.seconds):
            speech = tmp / f"speech_{seconds:g}.wav"
            sf.write(speech, np.resize(wav, int(seconds * rate)), rate)
            video = tmp / f"video_{seconds:g}.mp4"
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", RSS_PROBE, "--checkpoint", str(ckpt), "--image", str(portrait),
                                   "--audio", str(speech), "--out", str(video), "--steps", str(args.steps),
                                   "--device", "cpu"], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0 or "PEAK_RSS_KB" not in proc.stdout:
                raise RuntimeError(f"sampling {seconds} s failed:\n{proc.stderr[-2000:]}")
            rss_mb = int(proc.stdout.split("PEAK_RSS_KB")[-1].split()[0]) / 1024
            frames = frame_count(video)
            expected = round(seconds * 25)
            rows.append({"name": f"sample_{seconds:g}s", "frames": frames, "frames_expected": expected,
                         "s_per_frame": wall / frames, "peak_rss_mb": rss_mb, "steps": args.steps})
            print(f"{seconds:5.0f} s of speech: {frames} frames (expected {expected}), {wall:.1f} s wall, "
                  f"{wall / frames:.3f} s/frame, peak RSS {rss_mb:.0f} MB", flush=True)
    if len(rows) > 1:
        ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
        length = rows[-1]["frames"] / rows[0]["frames"]
        print(f"peak RSS {rows[-1]['name']} / {rows[0]['name']}: {ratio:.2f} for {length:.0f}x the length "
              f"(flat memory: near 1)")
        rows.append({"name": "sample_memory_growth", "rss_ratio": ratio, "length_ratio": length})
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
