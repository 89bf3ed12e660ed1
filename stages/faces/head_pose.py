"""Head pose (yaw, pitch, roll) from face-mesh landmarks, and head rotation speed for EMO's speed layers.

Pose is solvePnP of rigid mesh points against mediapipe's canonical face model, taken relative to
the line of sight (a face looking into the lens is yaw = pitch = 0 wherever it sits in the frame).
Signs: yaw > 0 turns the nose to the image's left, pitch > 0 looks down, roll > 0 turns the face
clockwise in the image. Absolute yaw and pitch carry a per-person bias (a real face is not the
canonical one; ~10-20 degrees on the test photos); speed, a difference, does not.
Speed is the angular change of the smoothed pose from frame to frame, in degrees per frame.
"""

from __future__ import annotations

import cv2
import numpy as np

# Rigid points of mediapipe's 468-point mesh and their coordinates in its canonical face model
# (mediapipe/modules/face_geometry/data/canonical_face_model.obj; x to the image's right, y up,
# z toward the camera, in cm). No mouth or chin points: they move with speech and smiles, and a
# smile alone tilted the astronaut's pitch by 20 degrees.
CANONICAL = {
    1: (0.0, -1.126865, 7.475604),  # nose tip
    4: (0.0, -0.463170, 7.586580),
    6: (0.0, 2.473255, 5.788627),  # nose bridge
    10: (0.0, 8.261778, 4.481535),  # forehead
    33: (-4.445859, 2.663991, 3.173422),  # eye outer corners
    263: (4.445859, 2.663991, 3.173422),
    133: (-1.856432, 2.585245, 3.757904),  # eye inner corners
    362: (1.856432, 2.585245, 3.757904),
}
_IDX = np.array(list(CANONICAL))
# To OpenCV's object frame (y down, z away from the camera): a proper rotation, so a frontal face has R = I.
_OBJ = np.array(list(CANONICAL.values()), np.float64) * np.array([1.0, -1.0, -1.0])


def head_pose(pts: np.ndarray, width: int, height: int) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from (468, 2) landmarks in pixels of a width x height frame."""
    f = float(max(width, height))
    cam = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], np.float64)
    img = pts[_IDX].astype(np.float64)
    # SQPnP finds the global minimum; the iterative solver can land on a mirror pose behind the camera.
    ok, rvec, tvec = cv2.solvePnP(_OBJ, img, cam, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        return (np.nan,) * 3
    r, _ = cv2.Rodrigues(rvec)
    (tx,), (ty,), (tz,) = tvec
    # R = Rz(roll) @ Ry(yaw) @ Rx(pitch); then remove the direction of the face from the optical axis.
    pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2])) + np.degrees(np.arctan2(ty, tz))
    yaw = np.degrees(np.arctan2(-r[2, 0], np.hypot(r[2, 1], r[2, 2]))) - np.degrees(np.arctan2(tx, tz))
    roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    return float(yaw), float(pitch), float(roll)


def fill_gaps(x: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaNs (frames where the mesh did not fit); all-NaN stays NaN."""
    x = np.asarray(x, np.float64).copy()
    ok = np.isfinite(x)
    if ok.any() and not ok.all():
        idx = np.arange(len(x))
        x[~ok] = np.interp(idx[~ok], idx[ok], x[ok])
    return x


def _smooth(x: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(x) < window:
        return x
    k = window // 2
    padded = np.pad(x, (k, k), mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def rotation_speed(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray, smooth: int = 5) -> np.ndarray:
    """Degrees per frame, per frame: central difference of the smoothed angles (roll unwrapped)."""
    angles = []
    for a in (yaw, pitch, np.degrees(np.unwrap(np.radians(roll)))):
        angles.append(_smooth(fill_gaps(a), smooth | 1))
    a = np.stack(angles, 1)  # (F, 3)
    if len(a) < 2:
        return np.zeros(len(a))
    d = np.gradient(a, axis=0)  # central differences inside, one-sided at the ends
    return np.linalg.norm(d, axis=1)
