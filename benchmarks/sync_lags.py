"""Each real source's own audio-visual lag, pooled over its longest face track, under feature variants.

The fitted projection (stages/diarize/sync_projection.py, the default score) and the top singular
value of the cross-correlation over four feature subsets ("all": every mouth and voice feature).
A lag that stays put (within a fraction of a frame) whichever features measure it is a property of the file,
not of the measure: this is how stages/diarize/sync_measure.py's visual_lead_s was chosen (on the
dev sources whose sync is known apart from "as published") and why some sources count as late.
Positive: the sound comes after the picture, in frames of the source's nominal rate, before any lead
is subtracted.

Run: PYTHONPATH=. .venv/bin/python -m benchmarks.sync_lags   (needs ../shared/real-media)
"""

from __future__ import annotations

import numpy as np

from benchmarks.sync_corpus import DEV, HELD_OUT, available, copy_with_picture
from manifests import ManifestStore
from stages.base import StageContext
from stages.diarize.speaking_face import _to_grid
from stages.diarize.stage import load_audio
from stages.diarize.sync_features import visual_features
from stages.diarize.sync_measure import SyncMeasure
from stages.media.clock import source_timeline

MEASURE = SyncMeasure()  # the default measure: +-15 frames, high-passed over 13, the fitted projection
SINGULAR = SyncMeasure(score="singular")  # the same without fitted weights (the feature subsets below use it)


def source_features(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames, visual features, high-passed audio features per frame) of a source's longest track."""
    out, src = copy_with_picture(name, "orig", name)
    tl = source_timeline(src, StageContext(out=out))
    wav = load_audio(out / src["audio_path"])  # 16 kHz mono, as diarize reads it
    track = max(ManifestStore(out).read("tracks").to_pylist(), key=lambda t: len(t["frames"] or []))
    frames, v = np.asarray(track["frames"], int), visual_features(track)
    if tl.constant_rate:
        times = np.asarray(tl.frame_s)
    else:
        frames, v = _to_grid(tl, frames, v)
        times = np.arange(int(round(tl.end_s * tl.fps))) / tl.fps
    a = MEASURE.audio(wav, tl.fps, times=times)
    keep = np.isfinite(v).all(1) & (frames < len(a))
    return frames[keep], v[keep], a


def variants(v: np.ndarray, a: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    shape = v[:, :6]
    signed = np.diff(shape[:, [0, 2, 4]], axis=0, prepend=shape[:1, [0, 2, 4]])
    return {"all": (v, a), "shape": (shape, a), "shape+velocity": (np.column_stack([shape, signed]), a),
            "velocity/band change": (signed, np.diff(a[:, :9], axis=0, prepend=a[:1, :9]))}


def main() -> None:
    if not available():
        print("../shared/real-media is absent: nothing to measure")
        return
    for label, names in (("dev", DEV), ("held", HELD_OUT)):
        for name in names:
            frames, v, a = source_features(name)
            lags = {"projection": MEASURE.raw_lag(frames, v, a)}
            lags.update({k: SINGULAR.raw_lag(frames, vv, aa) for k, (vv, aa) in variants(v, a).items()})
            print(f"{label:4s} {name[:34]:34s} " + " ".join(f"{k} {x:+.2f}" for k, x in lags.items()), flush=True)


if __name__ == "__main__":
    main()
