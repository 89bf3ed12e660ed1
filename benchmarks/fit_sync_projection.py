"""Fit the offline sync measure's mouth-to-voice projection (stages/diarize/sync_projection.py) on the dev files.

The projection is the first canonical pair of the per-frame mouth features
(stages/diarize/sync_features.visual_features) and the voice's features (audio_features) of the same
frame, over every face track of the dev split's as-published videos (benchmarks/sync_corpus.py: DEV;
the held-out files are never read). Each track's features are high-passed and standardised as the
measure does (stages/diarize/sync_measure.py), the audio standardised per track, and both sides'
covariances get a ridge of RIDGE before whitening. Prints the canonical correlations and, with
--write, rewrites stages/diarize/sync_projection.py.

With --leave-out FILE the fit skips that dev file too (leave-one-file-out figures in bench_sync).
Run: PYTHONPATH=. .venv/bin/python -m benchmarks.fit_sync_projection [--write]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.sync_corpus import DEV, available, picture
from manifests import ManifestStore
from stages.base import StageContext
from stages.diarize.stage import load_audio
from stages.diarize.sync_features import visual_features
from stages.diarize.sync_measure import SyncMeasure, _highpass, _zscore
from stages.media.clock import source_timeline

RIDGE = 0.1
MIN_FRAMES = 50
TARGET = Path(__file__).resolve().parents[1] / "stages" / "diarize" / "sync_projection.py"


def frames_of(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(mouth rows, voice rows) of every track frame of these files, standardised per track."""
    measure, vs, au = SyncMeasure(), [], []
    for name in names:
        out, src = picture(name)
        ctx = StageContext(out=out)
        tl = source_timeline(src, ctx)
        audio = measure.audio(load_audio(out / src["audio_path"]), tl.fps, times=tl.frame_s)
        for tr in ManifestStore(out).read_shard("tracks", src["source_id"]).to_pylist():
            frames, v = np.asarray(tr["frames"], int), visual_features(tr)
            ok = np.isfinite(v).all(1) & (frames < len(audio))
            if ok.sum() >= MIN_FRAMES:
                vs.append(_zscore(_highpass(v[ok], measure.highpass_frames), 0))
                au.append(_zscore(audio[frames[ok]], 0))
    return np.concatenate(vs), np.concatenate(au)


def _whitener(x: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(np.cov(x.T) + RIDGE * np.eye(x.shape[1]))
    return vecs @ np.diag(vals ** -0.5) @ vecs.T


def fit(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(mouth weights, voice weights, canonical correlations, frames) of the first canonical pair."""
    v, a = frames_of(names)
    wv, wa = _whitener(v), _whitener(a)
    u, s, vt = np.linalg.svd((v @ wv).T @ (a @ wa) / len(v))
    pv, pa = wv @ u[:, 0], wa @ vt[0]
    if pv[0] > 0:  # one sign for every fit: the inner lip gap weighs negative, as in the shipped one
        pv, pa = -pv, -pa
    return pv, pa, s, len(v)


def module_text(pv: np.ndarray, pa: np.ndarray, s: np.ndarray, n: int, names: tuple[str, ...]) -> str:
    fmt = lambda x: "(" + ", ".join(f"{float(w):.4f}" for w in x) + ")"  # noqa: E731
    return f'''"""The offline sync measure's mouth-to-voice projection (stages/diarize/sync_measure.py: score="projection").

One direction in the mouth features (stages/diarize/sync_features.visual_features: inner and outer lip
gaps, widths, jaw drop, corner lift, the speeds of the gaps and the jaw, mouth-region motion) and one
in the voice's (8 mel bands, loudness, onsets) whose per-frame values follow each other most closely
when the voice is the face's own and in time: their first canonical pair, fitted by
benchmarks/fit_sync_projection.py on {n} frames of the dev split's as-published videos
({", ".join(Path(x).stem.split("_")[0] + "_" + Path(x).stem.split("_")[1] for x in names)}; the held-out
files never read). Canonical correlation on the fit: {s[0]:.3f} (next pairs {s[1]:.3f}, {s[2]:.3f}).
A fixed direction is scored per lag as one correlation: a few seconds of a segment cannot fit it to
chance the way the top singular value of the whole cross-correlation matrix does. Generated file:
refit with `python -m benchmarks.fit_sync_projection --write`.
"""

VISUAL = {fmt(pv)}
AUDIO = {fmt(pa)}
'''


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help=f"rewrite {TARGET.name}")
    p.add_argument("--leave-out", default=None, help="a dev file to leave out of the fit too")
    args = p.parse_args(argv)
    if not available():
        print("../shared/real-media is absent: nothing to fit on")
        return {}
    names = tuple(n for n in DEV if n != args.leave_out)
    pv, pa, s, n = fit(names)
    print(f"fitted on {len(names)} dev files, {n} frames; canonical correlations {np.round(s[:4], 3).tolist()}")
    print("visual", np.round(pv, 4).tolist())
    print("audio ", np.round(pa, 4).tolist())
    if args.write:
        TARGET.write_text(module_text(pv, pa, s, n, names))
        print(f"wrote {TARGET}")
    return {"canonical": s[:4].tolist(), "frames": n}


if __name__ == "__main__":
    main()
