"""A mouth that opens with the speech: how the demo corpus makes its faces speak the audio under them.

No installed package ships a talking head with its own voice, and a model cannot learn the mouth
from dubbed video. So the demo corpus moves each face's jaw by the loudness of the speech it is
muxed with: per video frame, the lower lip, chin and jaw slide down by an amount that follows the
voice's loudness over that frame's own span, and the gap that opens between the lips is a dark
mouth. It is a puppet, not a person speaking: the rule it builds (loud is open, silent is closed)
is what the demo's model can learn in minutes and what the sync measure checks. Real lip sync is
measured on real footage (README, "Real footage"; benchmarks/bench_learn.py).
"""

from __future__ import annotations

import cv2
import numpy as np

from stages.faces.landmarks import CHIN, LOWER_LIP_INNER, MOUTH_CORNERS, UPPER_LIP_INNER, FaceMesher

# Mouth gap at full loudness, over mouth width (corner to corner): a wide-open vowel.
MAX_GAP = 0.45
# Loudness of a video frame's span, in dB below the speech's loud parts (95th percentile):
# CLOSED_DB down or quieter is a closed mouth, OPEN_DB down or louder is fully open.
CLOSED_DB, OPEN_DB = 25.0, 5.0
CAVITY_RGB = (45, 12, 18)


def openness(audio: np.ndarray, rate: int, fps: float, n_frames: int) -> np.ndarray:
    """(n_frames,) in [0, 1]: how open the mouth is at each video frame, from the audio over that
    frame's span [i / fps, (i + 1) / fps), so the mouth and the sound are at the same time."""
    from model.video_measures import loudness

    audio = np.asarray(audio, np.float64)
    if audio.ndim == 2:
        audio = audio.mean(1)
    db = loudness(audio, fps, n_frames, rate)
    loud = np.percentile(db, 95)
    return np.clip((db - (loud - CLOSED_DB)) / (CLOSED_DB - OPEN_DB), 0.0, 1.0)


def mouth_points(rgb: np.ndarray, mesher: FaceMesher | None = None) -> np.ndarray | None:
    """(468, 2) face-mesh points of the one face in `rgb` (a frame or a portrait), or None."""
    h, w = rgb.shape[:2]
    own = mesher is None
    mesher = mesher or FaceMesher()
    try:
        return mesher.landmarks(rgb, np.array([0.0, 0.0, w, h]))
    finally:
        if own:
            mesher.close()


def open_mouth(rgb: np.ndarray, pts: np.ndarray, amount: float) -> np.ndarray:
    """`rgb` with the face's jaw dropped by `amount` (0 closed .. 1 wide open) and a dark gap between
    the lips. Everything above the lips stays where it is; below the chin the pull fades out."""
    if amount <= 0:
        return rgb
    h, w = rgb.shape[:2]
    left, right = pts[MOUTH_CORNERS[0]], pts[MOUTH_CORNERS[1]]
    width = max(float(np.linalg.norm(right - left)), 1.0)
    ex = (right - left) / width  # along the mouth
    ey = np.array([-ex[1], ex[0]])  # the face's down, whatever its roll
    top = np.array([(left[0] + right[0]) / 2, pts[UPPER_LIP_INNER, 1]])  # the upper lip stays put
    top = top + ex * float((pts[UPPER_LIP_INNER] - top) @ ex)
    already = max(float((pts[LOWER_LIP_INNER] - top) @ ey), 0.0)  # a mouth already open in the picture
    chin = max(float((pts[CHIN] - top) @ ey), 1.0)
    gap = amount * MAX_GAP * width

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    along = (xs - top[0]) * ex[0] + (ys - top[1]) * ex[1]
    down = (xs - top[0]) * ey[0] + (ys - top[1]) * ey[1]
    across = np.exp(-((along / (0.6 * width)) ** 2))  # the jaw, wider than the mouth
    below_chin = np.exp(-((np.maximum(down - chin, 0) / (0.8 * width)) ** 2))  # slope < 1: no fold
    pull = np.where(down > 0, gap * across * below_chin, 0).astype(np.float32)
    out = cv2.remap(rgb, xs - pull * ey[0], ys - pull * ey[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    # The gap between the lips: a lens as wide as the mouth, as tall as the pull (and any gap the
    # picture already had) at its centre.
    lens = (already + gap) * np.clip(1 - (along / (0.5 * width)) ** 2, 0, 1)
    alpha = np.clip(np.minimum(down, lens - down), 0, 1.5) / 1.5  # soft one-pixel edges
    alpha = alpha[..., None].astype(np.float32)
    return (out * (1 - alpha) + np.array(CAVITY_RGB, np.float32) * alpha).astype(np.uint8)
