"""Face detectors behind one interface: mediapipe (bundled, offline) and insightface (SCRFD + ArcFace).

A detector takes an RGB frame and returns `Detection`s with boxes in that frame's pixels, and
`embed(rgb, det)` gives a unit identity embedding of one detection: ArcFace for insightface, dlib's
ResNet (face-recognition-models, offline) for mediapipe. Embeddings of different backends live in
different spaces: stages/faces/identity.py clusters each backend's tracks on its own.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
BACKENDS = ("mediapipe", "insightface")
INSIGHTFACE_PACK = "buffalo_l"
INSIGHTFACE_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"


@dataclass
class Detection:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in pixels
    score: float
    kps: np.ndarray | None = None  # (5, 2) eyes, nose, mouth corners when the detector gives them


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N, 4) with every box in b (M, 4) -> (N, M)."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def nms(dets: list[Detection], iou: float = 0.4) -> list[Detection]:
    """Keep the best-scoring detection of each overlapping group (tiles see the same face twice)."""
    dets = sorted(dets, key=lambda d: -d.score)
    keep: list[Detection] = []
    for d in dets:
        if not keep or box_iou(d.box, np.stack([k.box for k in keep])).max() < iou:
            keep.append(d)
    return keep


def square_tiles(w: int, h: int) -> list[tuple[int, int, int]]:
    """Overlapping square windows (x, y, side) covering a frame.

    Short-range models see the frame squeezed into a 128-192 px square, so faces in a wide group
    shot shrink below what they can find; square windows of the short side keep faces twice as big.
    """
    side = min(w, h)
    ratio = max(w, h) / side
    n = 1 if ratio < 1.05 else math.ceil(ratio + 0.5)
    offsets = np.linspace(0, max(w, h) - side, n).round().astype(int)
    return [(int(o), 0, side) if w >= h else (0, int(o), side) for o in offsets]


class MediapipeDetector:
    """mediapipe 0.10.21's bundled BlazeFace: full-range on overlapping square tiles, short-range on the frame.

    The full-range model misses faces that fill the frame (close-ups); the short-range one finds those.
    """

    name = "mediapipe"

    def __init__(self, min_confidence: float = 0.5, tiles: bool = True):
        import mediapipe as mp

        self.tiles = tiles
        fd = mp.solutions.face_detection.FaceDetection
        self._far = fd(model_selection=1, min_detection_confidence=min_confidence)
        self._near = fd(model_selection=0, min_detection_confidence=min_confidence)
        self._embedder: DlibEmbedder | None | bool = None  # False once known to be unavailable

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        h, w = rgb.shape[:2]
        windows = [(self._far, *t) for t in square_tiles(w, h)] if self.tiles else [(self._far, 0, 0, -1)]
        dets: list[Detection] = []
        for model, x, y, s in [(self._near, 0, 0, -1), *windows]:
            dets += self._run(model, rgb if s < 0 else rgb[y : y + s, x : x + s], x, y)
        return nms(dets)

    def detect_close(self, rgb: np.ndarray) -> list[Detection]:
        """Faces that fill much of `rgb` (a window around a known face): the short-range model alone."""
        return self._run(self._near, rgb, 0, 0)

    @staticmethod
    def _run(model, tile: np.ndarray, x: int, y: int) -> list[Detection]:
        """One model on one window; boxes and keypoints moved to the frame's pixels by (x, y)."""
        th, tw = tile.shape[:2]
        out = []
        for d in model.process(np.ascontiguousarray(tile)).detections or []:
            b = d.location_data.relative_bounding_box
            box = np.array([b.xmin * tw + x, b.ymin * th + y, (b.xmin + b.width) * tw + x, (b.ymin + b.height) * th + y])
            kps = np.array([[k.x * tw + x, k.y * th + y] for k in d.location_data.relative_keypoints])
            out.append(Detection(box, float(d.score[0]), kps))
        return out

    def embed(self, rgb: np.ndarray, det: Detection) -> np.ndarray | None:
        if self._embedder is None:
            try:
                self._embedder = DlibEmbedder()
            except (ImportError, FileNotFoundError) as e:
                log.warning("no identity embeddings (%s): the export will split by source instead of by person", e)
                self._embedder = False
        return self._embedder.embed(rgb, det) if self._embedder else None

    def close(self) -> None:
        self._far.close()
        self._near.close()


class DlibEmbedder:
    """dlib's ResNet face descriptor (128-d, unit length) from the face-recognition-models package.

    The face is aligned by dlib's 5-point shape predictor inside the detector's box. Measured on the
    packaged photos (tests/stages/test_faces.py): one person's faces are <= 0.06 apart in cosine
    distance, different people >= 0.10.
    """

    def __init__(self):
        import dlib

        spec = importlib.util.find_spec("face_recognition_models")  # not imported: it needs pkg_resources
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("face-recognition-models is not installed")
        models = Path(spec.submodule_search_locations[0]) / "models"
        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

    def embed(self, rgb: np.ndarray, det: Detection) -> np.ndarray:
        x0, y0, x1, y1 = (int(round(v)) for v in det.box)
        img = np.ascontiguousarray(rgb)
        shape = self._shape(img, self._dlib.rectangle(x0, y0, x1, y1))
        e = np.asarray(self._net.compute_face_descriptor(img, shape), np.float32)
        return e / max(float(np.linalg.norm(e)), 1e-9)


def insightface_pack_dir(root: str | None) -> Path:
    root = root or os.environ.get("INSIGHTFACE_HOME") or "~/.insightface"
    return Path(root).expanduser() / "models" / INSIGHTFACE_PACK


class InsightfaceDetector:
    """SCRFD detection and ArcFace embeddings from the user's buffalo_l pack (never downloaded here)."""

    name = "insightface"

    def __init__(self, root: str | None = None, min_confidence: float = 0.5, det_size: int = 640):
        pack = insightface_pack_dir(root)
        det_path, rec_path = pack / "det_10g.onnx", pack / "w600k_r50.onnx"
        if not (det_path.is_file() and rec_path.is_file()):
            raise FileNotFoundError(
                f"insightface model pack {INSIGHTFACE_PACK!r} not found in {pack} (need det_10g.onnx and "
                f"w600k_r50.onnx): download {INSIGHTFACE_URL} and unzip it into {pack}, or set "
                "insightface_root (or $INSIGHTFACE_HOME) to the folder that holds models/buffalo_l; "
                "or use backend='mediapipe', which ships inside the mediapipe package")
        from insightface.model_zoo import get_model

        self._det = get_model(str(det_path), providers=["CPUExecutionProvider"])
        self._det.prepare(ctx_id=-1, input_size=(det_size, det_size), det_thresh=min_confidence)
        self._rec = get_model(str(rec_path), providers=["CPUExecutionProvider"])
        self._rec.prepare(ctx_id=-1)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        boxes, kpss = self._det.detect(bgr)
        out = []
        for i, b in enumerate(boxes):
            out.append(Detection(b[:4].astype(float), float(b[4]), None if kpss is None else kpss[i].astype(float)))
        return out

    detect_close = detect  # SCRFD finds faces of any size in one pass

    def embed(self, rgb: np.ndarray, det: Detection) -> np.ndarray | None:
        from insightface.app.common import Face

        if det.kps is None:
            return None
        face = Face(bbox=det.box, kps=det.kps.astype(np.float32), det_score=det.score)
        emb = self._rec.get(np.ascontiguousarray(rgb[..., ::-1]), face)
        return emb / max(np.linalg.norm(emb), 1e-9)

    def close(self) -> None:
        pass


def make_detector(backend: str, insightface_root: str | None = None, min_confidence: float = 0.5):
    if backend == "mediapipe":
        return MediapipeDetector(min_confidence)
    if backend == "insightface":
        return InsightfaceDetector(insightface_root, min_confidence)
    raise ValueError(f"unknown face backend {backend!r}; known: {', '.join(BACKENDS)}")
