"""TrackMeasurer: everything measured on one track's frames in the second decode pass.

Per frame: face-mesh landmarks (-> head pose, rotation speed, mouth opening and shape, mouth-region
motion: what the sync measure in stages/diarize/sync_measure.py correlates with the voice); with mesh_every=k,
on every k-th frame of the track and its last, the pose and mouth opening between interpolated.
At sampled frames: blur and exposure of the face region, and an identity embedding at the
track's best few detections when the backend gives one.
"""

from __future__ import annotations

import cv2
import numpy as np

from stages.faces.detectors import Detection
from stages.faces.head_pose import fill_gaps, head_pose, rotation_speed
from stages.faces.landmarks import MOUTH_SHAPE, FaceMesher, lip_box, mouth_open, mouth_shape

EMBED_FRAMES = 5  # embeddings averaged per track, at its most confident detections


def blur_exposure(rgb: np.ndarray, box: np.ndarray) -> tuple[float, float]:
    """Variance of the Laplacian of the face at a fixed 128 px (so sizes compare), and mean luma 0..1."""
    x0, y0, x1, y1 = np.round(box).astype(int)
    face = rgb[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)]
    if face.size == 0:
        return np.nan, np.nan
    gray = cv2.cvtColor(cv2.resize(face, (128, 128), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var()), float(gray.mean() / 255.0)


class TrackMeasurer:
    def __init__(self, frames: np.ndarray, boxes: np.ndarray, samples: set[int], dets: dict[int, Detection],
                 embed=None, mesh_every: int = 1):
        """`embed(rgb, det)` gives an identity embedding, or is None. `mesh_every`: see the module."""
        self.frames, self.boxes, self.samples = frames, boxes, samples
        self.mesh_every = max(1, int(mesh_every))
        self.pts: list[np.ndarray | None] = [None] * len(frames)
        self.tried = 0  # frames the mesh was run on
        self.quality: list[tuple[float, float]] = []
        self.embeddings: list[np.ndarray] = []
        best = sorted(dets, key=lambda f: -dets[f].score)[:EMBED_FRAMES] if embed else []
        self._embed_at = {f: dets[f] for f in best}
        self._embed = embed
        self._mesher = FaceMesher()
        self._poses: np.ndarray | None = None
        self.motion = np.full(len(frames), np.nan)
        self._last_mouth: tuple[int, np.ndarray] | None = None

    @property
    def first(self) -> int:
        return int(self.frames[0])

    @property
    def last(self) -> int:
        return int(self.frames[-1])

    def _meshed(self, index: int) -> bool:
        return (index - self.first) % self.mesh_every == 0 or index == self.last

    def wants(self, index: int) -> bool:
        return self._meshed(index) or index in self.samples or index in self._embed_at

    def observe(self, index: int, rgb: np.ndarray) -> None:
        k = index - self.first
        box = self.boxes[k]
        if self._meshed(index):
            self.pts[k] = self._mesher.landmarks(rgb, box)
            self.tried += 1
            if self.pts[k] is not None:
                self._mouth_motion(k, rgb, self.pts[k])
        if index in self.samples:
            self.quality.append(blur_exposure(rgb, box))
        if index in self._embed_at:
            emb = self._embed(rgb, self._embed_at[index])
            if emb is not None:
                self.embeddings.append(emb)

    def _mouth_motion(self, k: int, rgb: np.ndarray, pts: np.ndarray) -> None:
        """Mean absolute change of the mouth region since the last meshed frame, per frame between.

        The region follows the lips' own box each frame, so head motion moves it along; what is
        left is the lips, teeth and tongue changing, which the mesh's few points undersample."""
        x0, y0, x1, y1 = lip_box(pts)
        cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, 1.0) * 1.3
        m = np.array([[32 / side, 0, 16 - 32 / side * cx], [0, 32 / side, 12 - 32 / side * cy]])
        patch = cv2.cvtColor(cv2.warpAffine(rgb, m, (32, 24), flags=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        patch = patch.astype(np.float32) / 255.0
        if self._last_mouth is not None:
            j, last = self._last_mouth
            self.motion[k] = float(np.abs(patch - last).mean()) / (k - j)
        self._last_mouth = (k, patch)

    def close(self) -> None:
        """Release the mesher; safe to call twice."""
        mesher, self._mesher = self._mesher, None
        if mesher:
            mesher.close()

    def poses(self, width: int, height: int) -> np.ndarray:
        """(N, 3) yaw, pitch, roll in degrees per frame; NaN where the mesh did not fit. Computed once."""
        if self._poses is None:
            self._poses = np.array([head_pose(p, width, height) if p is not None else (np.nan,) * 3
                                    for p in self.pts]).reshape(-1, 3)
        return self._poses

    def median_roll(self, width: int, height: int) -> float | None:
        """Median head roll in degrees over the frames where the mesh fit, or None."""
        roll = self.poses(width, height)[:, 2]
        return float(np.nanmedian(roll)) if np.isfinite(roll).any() else None

    def lip_boxes(self) -> np.ndarray:
        return np.array([lip_box(p) for p in self.pts if p is not None]).reshape(-1, 4)

    def measures(self, width: int, height: int) -> dict:
        """Columns of the track's row that come from this pass (per-frame lists aligned with frames)."""
        ok = [p is not None for p in self.pts]  # also False between meshed frames when mesh_every > 1
        pose = self.poses(width, height)
        mouth = np.array([mouth_open(p) if p is not None else np.nan for p in self.pts])
        shape = np.array([mouth_shape(p) if p is not None else [np.nan] * len(MOUTH_SHAPE) for p in self.pts])
        quality = np.array(self.quality).reshape(-1, 2)
        lm_frames = [int(f) for f, p in zip(self.frames, self.pts, strict=True) if p is not None and int(f) in self.samples]
        row = {
            "mesh_fraction": float(sum(ok) / max(self.tried, 1)),  # of the frames the mesh was run on
            "landmark_frames": lm_frames,
            "landmarks": [self.pts[f - self.first].astype(np.float32).ravel().tolist() for f in lm_frames],
            "blur": _nanmedian(quality[:, 0]),
            "exposure": _nanmedian(quality[:, 1]),
            "embedding": None,
        }
        if any(ok):
            yaw, pitch, roll = (fill_gaps(pose[:, i]) for i in range(3))
            row.update(yaw=yaw.tolist(), pitch=pitch.tolist(), roll=roll.tolist(),
                       head_speed=rotation_speed(yaw, pitch, roll).tolist(), mouth_open=fill_gaps(mouth).tolist(),
                       mouth_shape=np.stack([fill_gaps(c) for c in shape.T], 1).tolist(),
                       mouth_motion=fill_gaps(self.motion).tolist() if np.isfinite(self.motion).any() else None)
        else:
            row.update(yaw=None, pitch=None, roll=None, head_speed=None, mouth_open=None, mouth_shape=None,
                       mouth_motion=None)
        if self.embeddings:
            e = np.mean(self.embeddings, 0)
            row["embedding"] = (e / max(np.linalg.norm(e), 1e-9)).astype(np.float32).tolist()
        return row


def _nanmedian(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else None
