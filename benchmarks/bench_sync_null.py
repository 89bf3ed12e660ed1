"""The sync measure's null on long shots: every rotation's window sums by FFT against gathering the windows.

SyncMeasure.score calibrates a face against the same source's audio rotated far away (the null).
Gathering each rotation's window of a track's T frames, as the measure did before, takes n x T x 10
floats for an n-frame source: a track as long as its source is quadratic (a 4-minute single shot,
6000 frames: 8.8 GB and 32 s per measure). The measure now takes each rotation's sums by FFT
(stages/diarize/sync_measure._rotated_scores) and reads at most max_null_windows windows. Both
are timed here on the same synthetic face and voice (a mouth that follows the voice 2 frames
late), where the gathered windows fit in memory, and the results compared; longer sources are
timed with the FFT alone. Peak memory is the process's (the largest size is run last).

Run: PYTHONPATH=. .venv/bin/python -m benchmarks.bench_sync_null
"""

from __future__ import annotations

import dataclasses
import resource
import time

import numpy as np

from stages.diarize.sync_measure import SyncMeasure, SyncResult, _highpass, _zscore

FPS = 25.0
GATHERED_UP_TO = 2000  # frames: the gathered windows of a longer track take gigabytes


def gathered(measure: SyncMeasure, frames: np.ndarray, visual: np.ndarray, audio: np.ndarray,
             fps: float) -> SyncResult:
    """The baseline: SyncMeasure.score with every rotation's window of the track gathered and
    standardised, then scored, as the measure did before (all frames valid)."""
    v = _zscore(_highpass(np.asarray(visual, np.float64), measure.highpass_frames), 0)
    n = len(audio)
    lags, real_windows = measure._lag_windows(frames, audio)
    rot = (frames[None, :] + np.arange(n)[:, None]) % n
    results = []
    for kind in measure._kinds(v, audio):
        null = []
        for a, far in ((audio, True), (audio[::-1], False)):
            if far or len(null) < measure.min_null:
                idx = measure._null_windows(n, far)
                curve = measure._scores(v, _zscore(a[rot], 1), kind)
                null = np.concatenate([null, curve[idx].max(1)]) if len(idx) else np.asarray(null, float)
        results.append(measure._result(lags, measure._scores(v, real_windows, kind), null, fps))
    return max(results, key=lambda r: r.confidence)


def _face_and_voice(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    measure = SyncMeasure()
    audio = measure.audio(rng.standard_normal(int(n / FPS * 16000)).astype(np.float32), FPS, n)
    mix = rng.standard_normal((audio.shape[1], 10))
    visual = np.roll(audio, 2, axis=0) @ mix + 2.0 * rng.standard_normal((n, 10))  # the voice 2 frames late
    return np.arange(n), visual, audio


def main() -> list[dict]:
    rows = []
    for n in (500, 1000, 2000, 6000, 22500, 90000):
        frames, visual, audio = _face_and_voice(n)
        t0 = time.perf_counter()
        res = SyncMeasure().score(frames, visual, audio, fps=FPS)
        fft_s = time.perf_counter() - t0
        row = {"name": f"{n / FPS / 60:.1f} min shot", "frames": n, "fft_s": round(fft_s, 3),
               "offset": res.offset_frames, "confidence": res.confidence}
        if n <= GATHERED_UP_TO:
            t0 = time.perf_counter()
            old = gathered(SyncMeasure(), frames, visual, audio, FPS)
            row["gathered_s"] = round(time.perf_counter() - t0, 3)
            row["speedup"] = round(row["gathered_s"] / max(fft_s, 1e-9), 1)
            row["same_result"] = dataclasses.astuple(old) == dataclasses.astuple(res)
        row["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        print("  " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
