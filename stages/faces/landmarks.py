"""FaceMesher: mediapipe's bundled 468-point face mesh, run per track on a crop that follows its box.

One mesher per track, in tracking mode: after the first frame mediapipe finds the face from its
previous landmarks instead of running its detector again (about 5x cheaper per frame).
"""

from __future__ import annotations

import cv2
import numpy as np

MESH_POINTS = 468
UPPER_LIP_INNER, LOWER_LIP_INNER = 13, 14
FOREHEAD, CHIN = 10, 152
MOUTH_CORNERS, INNER_CORNERS = (61, 291), (78, 308)
UPPER_LIP_OUTER, LOWER_LIP_OUTER, NOSE_TIP = 0, 17, 1
# Per-frame mouth shape, each over face height: what a speaking mouth changes (see mouth_shape).
MOUTH_SHAPE = ("inner_height", "inner_width", "outer_height", "corner_width", "jaw_drop", "corner_lift")
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)


class FaceMesher:
    """Landmarks of the face inside one box per frame, in frame pixels."""

    def __init__(self, crop_px: int = 256, expand: float = 1.6):
        import mediapipe as mp

        self.crop_px = crop_px
        self.expand = expand
        self._fm = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=1, refine_landmarks=False,
            min_detection_confidence=0.5, min_tracking_confidence=0.5)

    def landmarks(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """(468, 2) pixels, or None when no face fits inside the box (occluded, turned away, someone else)."""
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        size = max(box[2] - box[0], box[3] - box[1], 1.0)
        scale = self.crop_px / (size * self.expand)
        # frame -> crop: scale about the box centre; outside the frame is black, not smeared edge pixels.
        m = np.array([[scale, 0, self.crop_px / 2 - scale * cx], [0, scale, self.crop_px / 2 - scale * cy]])
        crop = cv2.warpAffine(rgb, m, (self.crop_px, self.crop_px), flags=cv2.INTER_LINEAR)
        result = self._fm.process(crop)
        if not result.multi_face_landmarks:
            return None
        lm = result.multi_face_landmarks[0].landmark
        pts = np.array([(p.x, p.y) for p in lm[:MESH_POINTS]]) * self.crop_px
        pts = (pts - m[:, 2]) / scale  # crop -> frame
        centre = pts.mean(0)
        if np.hypot(centre[0] - cx, centre[1] - cy) > 0.5 * size:
            return None  # the mesh latched onto a neighbouring face
        return pts

    def close(self) -> None:
        self._fm.close()


def mouth_open(pts: np.ndarray) -> float:
    """Inner lip gap over face height (forehead to chin): about 0 closed, 0.1+ wide open."""
    height = np.linalg.norm(pts[FOREHEAD] - pts[CHIN])
    return float(np.linalg.norm(pts[UPPER_LIP_INNER] - pts[LOWER_LIP_INNER]) / max(height, 1e-6))


def mouth_shape(pts: np.ndarray) -> np.ndarray:
    """MOUTH_SHAPE of one face: lip gaps, mouth widths, jaw drop (nose tip to chin) and how far the
    corners sit above the lip centre, each divided by face height so they compare across sizes."""
    height = max(float(np.linalg.norm(pts[FOREHEAD] - pts[CHIN])), 1e-6)

    def dist(i: int, j: int) -> float:
        return float(np.linalg.norm(pts[i] - pts[j]))

    centre_y = (pts[UPPER_LIP_INNER, 1] + pts[LOWER_LIP_INNER, 1]) / 2
    lift = centre_y - (pts[MOUTH_CORNERS[0], 1] + pts[MOUTH_CORNERS[1], 1]) / 2
    return np.array([dist(UPPER_LIP_INNER, LOWER_LIP_INNER), dist(*INNER_CORNERS), dist(UPPER_LIP_OUTER, LOWER_LIP_OUTER),
                     dist(*MOUTH_CORNERS), dist(NOSE_TIP, CHIN), lift]) / height


def lip_box(pts: np.ndarray) -> np.ndarray:
    lips = pts[list(LIPS_OUTER)]
    return np.concatenate([lips.min(0), lips.max(0)])
