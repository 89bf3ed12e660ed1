"""The offline sync measure's mouth-to-voice projection (stages/diarize/sync_measure.py: score="projection").

One direction in the mouth features (stages/diarize/sync_features.visual_features: inner and outer lip
gaps, widths, jaw drop, corner lift, the speeds of the gaps and the jaw, mouth-region motion) and one
in the voice's (8 mel bands, loudness, onsets) whose per-frame values follow each other most closely
when the voice is the face's own and in time: their first canonical pair, fitted by
benchmarks/fit_sync_projection.py on 2972 frames of the dev split's as-published videos
(r2_v03, r2_v09, r3_v07, r3_v12, r3_v14, r3_v22; the held-out
files never read). Canonical correlation on the fit: 0.462 (next pairs 0.220, 0.100).
A fixed direction is scored per lag as one correlation: a few seconds of a segment cannot fit it to
chance the way the top singular value of the whole cross-correlation matrix does. Generated file:
refit with `python -m benchmarks.fit_sync_projection --write`.
"""

VISUAL = (-0.1862, 0.1898, -0.1235, 0.1419, -0.3303, -0.1537, -0.1876, 0.0302, -0.0446, -0.2560)
AUDIO = (0.3489, -0.2753, -0.7339, 0.0486, -0.1515, -0.2362, -0.0115, 0.4736, 0.1229, -0.2479)
