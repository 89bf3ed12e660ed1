"""The face stage: face tracks per shot, their head pose, speed and mouth opening, crop windows and masks.

Two decode passes over a source. Pass 1 detects faces every `stride` frames, links them into
tracks within each shot (never across a cut) and pins each track's first and last frame by
detecting near it in the frames between samples. The whole frame is searched for new faces every
`scan_every` samples; the samples between only look near the faces already tracked (about a
third of the detector's work on a one-person shot), and a face found by a scan is followed back
frame by frame to where it appeared. Pass 2 runs the face mesh on every frame of
every track. No video is encoded here: each track gets a crop window, and the quality stage
writes crops of only the clips it keeps, straight from the source (one encode, and none for
footage that is rejected).
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path
from typing import Any

import av
import numpy as np

from stages.base import Resources, Stage, StageContext, StageError
from stages.faces.detectors import Detection, box_iou, make_detector, nms
from stages.faces.measures import TrackMeasurer
from stages.faces.tracker import FaceTracker, Track, track_boxes
from stages.media.crops import DEFAULT_MARGIN, box_mask, crop_window, write_png
from stages.media.video_io import feed_ranges, iter_frames, to_rgb

log = logging.getLogger(__name__)
DARK_LUMA = 0.06  # mean luma under which a sampled frame counts as black
SIDEWAYS_DEG = 60  # eye line or head roll past this: the face lies on its side (or the video is turned)
MIN_MESH_FRACTION = 0.5  # a track whose face mesh fits less often than this gives no clips


def eye_line_angle(track: Track) -> float:
    """Median angle of the line from the image-left eye to the other, in degrees (0 upright); 0 without keypoints."""
    kps = [d.kps for d in track.dets.values() if d.kps is not None]
    if not kps:
        return 0.0
    v = np.stack([k[1] - k[0] for k in kps])  # both backends list the image-left eye first, then the other
    return float(np.degrees(np.median(np.arctan2(v[:, 1], v[:, 0]))))


class FaceStage(Stage):
    """Face tracks of one source, with per-frame measures, crop windows and masks, as `tracks` rows."""

    name = "faces"
    reads = ("sources",)
    uses = ("shots",)  # without shots, the whole source is one shot
    writes = ("tracks",)
    folders = ("masks",)  # each track's face and lip masks
    unhashed = ("insightface_root",)  # where the weights are, not which (backend is hashed)
    uses_model = True
    resources = Resources(num_cpus=1.0, memory_mb=3072)

    def __init__(
        self,
        backend: str = "mediapipe",
        insightface_root: str | None = None,
        stride: int = 5,
        scan_every: int = 5,
        min_confidence: float = 0.5,
        min_track_confidence: float = 0.7,
        min_face_px: int = 64,
        min_track_frames: int = 25,
        max_gap_samples: int = 2,
        margin: float = DEFAULT_MARGIN,
        crop_size: int = 512,
        smooth_frames: int = 5,
        mesh_every: int = 1,
    ):
        """Settings of the face stage.

        backend: "mediapipe" (bundled, offline; identity by dlib's descriptor) or "insightface" (SCRFD + ArcFace).
        insightface_root: folder holding models/buffalo_l for insightface (default $INSIGHTFACE_HOME or ~/.insightface).
        stride: run the detector every `stride` frames; boxes between samples are interpolated.
        scan_every: search the whole frame every `scan_every` samples (and at each shot's first); at the
            other samples, only near tracked faces. 1 searches every sample.
        min_confidence: detector score threshold.
        min_track_confidence: tracks whose mean detection score is lower are dropped (cartoon faces, patterns).
        min_face_px: cheap check: median face box side in pixels below which a track gives no clips.
        min_track_frames: cheap check: tracks shorter than this give no clips.
        max_gap_samples: samples a track may miss in a row (occlusion, blink of the detector) and go on.
        margin: crop window = union of the track's boxes grown by this fraction of its side on each side.
        crop_size: side of the square crop video and masks, in pixels.
        smooth_frames: moving-average window for the per-frame boxes.
        mesh_every: run the face mesh on every `mesh_every`-th frame of a track and interpolate the
            pose and mouth opening between (1: every frame). 2 saves about a quarter of this stage's
            time on a CPU; README "Throughput" gives what it costs in accuracy.
        """
        self.backend = backend
        self.insightface_root = insightface_root
        self.stride = max(1, int(stride))
        self.scan_every = max(1, int(scan_every))
        self.min_confidence = min_confidence
        self.min_track_confidence = min_track_confidence
        self.min_face_px = min_face_px
        self.min_track_frames = min_track_frames
        self.max_gap_samples = max_gap_samples
        self.margin = margin
        self.crop_size = crop_size
        self.smooth_frames = smooth_frames
        self.mesh_every = max(1, int(mesh_every))
        self._detector = None

    def setup(self) -> None:
        if self._detector is None:
            self._detector = make_detector(self.backend, self.insightface_root, self.min_confidence)

    # --- one source -------------------------------------------------------------------------

    def process(self, source: dict[str, Any], ctx: StageContext) -> list[dict[str, Any]]:
        self.setup()
        path = ctx.out / source["media_path"]
        if not path.is_file():
            raise StageError("media_missing", f"{source['media_path']} is not under {ctx.out}")
        width, height, rotation = int(source["width"]), int(source["height"]), int(source.get("rotation") or 0)
        if min(width, height) < self.min_face_px:
            raise StageError("frame_too_small", f"{width}x{height} frames cannot hold a {self.min_face_px} px face")
        shots = self._shots(source, ctx)
        found, n_frames, dark, probes = self._detect_and_track(path, rotation, shots)
        if n_frames == 0:
            raise StageError("undecodable", "no frame could be decoded")
        shots = [(sid, s, min(e, n_frames)) for sid, s, e in shots if s < n_frames]
        ctx.count("frames", n_frames)
        ctx.count("dark_shots", sum(dark.get(sid, False) for sid, _, _ in shots))
        plans = []
        for sid, s, e in shots:
            kept = [t for t in found.get(sid, []) if self._keep(t, ctx)]
            if not kept:
                ctx.count("no_face_shots")
            for k, track in enumerate(kept):
                samples = {f for f in range(track.first, track.last + 1) if self._is_sample(f, s, e)}
                plans.append(self._plan(source, ctx, f"{sid}-t{k:02d}", sid, track, samples, width, height))
        ctx.count("tracks", len(plans))
        if not plans:
            self._check_sideways(probes)
            return []
        self._measure(path, rotation, plans, width, height)
        for p in plans:  # the mesh's roll says it when the detector's keypoints could not
            roll = p["measurer"].median_roll(width, height)
            if roll is not None and abs(roll) > SIDEWAYS_DEG and "sideways" not in p["reasons"]:
                p["reasons"].append("sideways")
        if not rotation and all("sideways" in p["reasons"] for p in plans):
            raise StageError("sideways_video", f"all {len(plans)} face tracks lie on their side (eye line or head "
                             "roll near 90 degrees): the video is rotated without rotation metadata")
        return [self._row(p, width, height, source, ctx) for p in plans]

    def _keep(self, track: Track, ctx: StageContext) -> bool:
        if len(track.dets) < 2:
            ctx.count("dropped_single_detection")
            return False
        if np.mean([d.score for d in track.dets.values()]) < self.min_track_confidence:
            ctx.count("dropped_low_confidence")
            return False
        return True

    def _shots(self, source: dict[str, Any], ctx: StageContext) -> list[tuple[str, int, int]]:
        sid = source["source_id"]
        rows = ctx.upstream("shots", sid).to_pylist()
        if not rows:  # no shot stage ran: the whole source is one shot, named as the shot stage would
            return [(f"{sid}-s0000", 0, int(source.get("n_frames") or 0) or 1 << 62)]
        return sorted((r["shot_id"], int(r["start_frame"]), int(r["end_frame"])) for r in rows if r["end_frame"] > r["start_frame"])

    def _is_sample(self, i: int, start: int, end: int) -> bool:
        return (i - start) % self.stride == 0 or i == end - 1

    def _detect_and_track(self, path: Path, rotation: int, shots: list[tuple[str, int, int]]):
        """Pass 1: tracks per shot id, frames decoded, dark shots, and a few frames of each shot for later checks."""
        found: dict[str, list[Track]] = {}
        dark: dict[str, bool] = {}
        probes: list[np.ndarray] = []
        ring: deque[tuple[int, av.VideoFrame]] = deque(maxlen=self.stride * self.scan_every)
        order = iter(sorted(shots, key=lambda s: s[1]))
        shot, tracker, tracker_shot, lumas, n = next(order, None), None, None, [], 0

        def close_shot():
            # Tracks still alive at the shot's (or file's) end: pin their last frame, then freeze them.
            for t in tracker.active:
                self._refine(t, [f for f in ring if f[0] > t.last], rotation)
            found[tracker_shot] = tracker.finish()

        for i, frame in iter_frames(path, rotation, look_only=True):
            n = i + 1
            while shot and i >= shot[2]:
                shot = next(order, None)
            if shot is None or i < shot[1]:
                continue
            if tracker_shot != shot[0]:  # a new shot: nothing carries over
                if tracker is not None:
                    close_shot()
                tracker, tracker_shot, lumas, ring = FaceTracker(self.max_gap_samples), shot[0], [], deque(maxlen=ring.maxlen)
            ring.append((i, frame))
            if not self._is_sample(i, shot[1], shot[2]):
                continue
            rgb = to_rgb(frame, rotation)
            lumas.append(rgb.mean() / 255.0)
            dark[shot[0]] = float(np.mean(lumas)) < DARK_LUMA
            if len(probes) < 6 and i - shot[1] == self.stride:
                step = max(1, min(rgb.shape[:2]) // 360)
                probes.append(rgb[::step, ::step])
            born, missed = tracker.update(i, self._detect_sample(rgb, i, shot[1], tracker))
            for t in missed:
                self._refine(t, [f for f in ring if t.last < f[0] < i], rotation)
            for t in tracker.relink(i, missed, born):
                self._refine(t, [f for f in reversed(ring) if shot[1] <= f[0] < i], rotation)
        if tracker is not None:
            close_shot()
        return found, n, dark, probes

    def _detect_sample(self, rgb: np.ndarray, i: int, start: int, tracker: FaceTracker) -> list[Detection]:
        """The whole frame on a scan sample, or when a tracked face is not near where it was expected (a
        fast pan or zoom): waiting for the next scan would lose it, and find it again as a new track
        too far away to merge. Otherwise one detection near each tracked face at most."""
        if ((i - start) // self.stride) % self.scan_every == 0:
            return self._detector.detect(rgb)
        found = [self._detect_near(rgb, t.predict(i)) for t in tracker.active]
        if any(d is None for d in found):
            return self._detector.detect(rgb)
        return nms(found)

    def _refine(self, track: Track, frames: list[tuple[int, av.VideoFrame]], rotation: int) -> None:
        """Extend a track frame by frame from its nearest detection until the face is not found."""
        for i, frame in frames:
            ref = track.dets[min(track.dets, key=lambda f: abs(f - i))].box
            det = self._detect_near(to_rgb(frame, rotation), ref)
            if det is None:
                return
            track.add(i, det)

    def _detect_near(self, rgb: np.ndarray, box: np.ndarray) -> Detection | None:
        """The detection overlapping `box` in a square window twice its size, or None."""
        h, w = rgb.shape[:2]
        c, side = (box[:2] + box[2:]) / 2, max(box[2] - box[0], box[3] - box[1]) * 2
        x0, y0 = np.clip(c - side / 2, 0, None).astype(int)
        x1, y1 = int(min(w, c[0] + side / 2)), int(min(h, c[1] + side / 2))
        if x1 - x0 < 16 or y1 - y0 < 16:
            return None
        dets = self._detector.detect_close(rgb[y0:y1, x0:x1])
        for d in dets:
            d.box = d.box + np.array([x0, y0, x0, y0])
            d.kps = None if d.kps is None else d.kps + np.array([x0, y0])
        best = max(dets, key=lambda d: box_iou(d.box, box)[0, 0], default=None)
        return best if best is not None and box_iou(best.box, box)[0, 0] >= 0.3 else None

    def _check_sideways(self, probes: list[np.ndarray]) -> None:
        """No upright face anywhere: if faces show up with the frame turned, say so instead of 'no faces'."""
        hits = sum(any(d.score > 0.7 for k in (1, 3) for d in self._detector.detect(np.ascontiguousarray(np.rot90(p, k))))
                   for p in probes)  # frames with a face when turned either way
        if probes and hits >= max(1, len(probes) // 2):
            raise StageError("sideways_video", f"no upright faces, but faces in {hits} of {len(probes)} sampled frames "
                             "turned 90 degrees: the video is rotated without rotation metadata")

    # --- per track ----------------------------------------------------------------------------

    def _plan(self, source, ctx, track_id, shot_id, track, samples, width, height) -> dict[str, Any]:
        frames, boxes = track_boxes(track, width, height, self.smooth_frames)
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        raw = np.stack([d.box for d in track.dets.values()])
        outside = np.maximum.reduce([-raw[:, 0], -raw[:, 1], raw[:, 2] - width, raw[:, 3] - height, 0 * raw[:, 0]])
        reasons = (["short"] if len(frames) < self.min_track_frames else []) + \
                  (["small_face"] if np.median(sides) < self.min_face_px else []) + \
                  (["off_frame"] if np.mean(outside > 0.2 * (raw[:, 2] - raw[:, 0])) > 0.5 else []) + \
                  (["sideways"] if abs(eye_line_angle(track)) > SIDEWAYS_DEG else [])
        window, clipped = crop_window(boxes, self.margin, width, height)
        return {"track_id": track_id, "shot_id": shot_id, "track": track, "frames": frames, "boxes": boxes,
                "sides": sides, "reasons": reasons, "window": window, "clipped": clipped,
                "measurer": TrackMeasurer(frames, boxes, samples, track.dets, self._detector.embed, self.mesh_every)}

    def _measure(self, path: Path, rotation: int, plans: list[dict[str, Any]], width: int, height: int) -> None:
        """Pass 2: feed every track its frames, in one decode."""
        feed_ranges(path, rotation, [p["measurer"] for p in plans])

    def _row(self, plan: dict[str, Any], width: int, height: int, source: dict, ctx: StageContext) -> dict[str, Any]:
        track, m, frames, boxes = plan["track"], plan["measurer"], plan["frames"], plan["boxes"]
        row = {
            "source_id": source["source_id"], "shot_id": plan["shot_id"], "track_id": plan["track_id"],
            "start_frame": int(frames[0]), "end_frame": int(frames[-1]) + 1, "frames": frames.tolist(),
            "boxes": boxes.astype(np.float32).tolist(), "face_size_px": float(np.median(plan["sides"])),
            "det_confidence": float(np.mean([d.score for d in track.dets.values()])), "n_detections": len(track.dets),
            "crop_box": plan["window"].astype(np.float32).tolist(), "crop_size": self.crop_size,
            "reasons": plan["reasons"], "face_mask_path": None, "lip_mask_path": None,
            "identity_id": None, "backend": self.backend,
            "notes": "crop window shrunk to the frame's short side" if plan["clipped"] else None,
            **m.measures(width, height),
        }
        if not row["reasons"] and row["mesh_fraction"] < MIN_MESH_FRACTION:
            row["reasons"] = ["no_mesh"]  # no landmarks, no lip mask: useless for training
        if not row["reasons"]:  # the quality stage may cut clips from this track
            face_mask = ctx.path("masks", source["source_id"], f"{plan['track_id']}.face.png")
            lip_mask = face_mask.with_name(f"{plan['track_id']}.lips.png")
            write_png(face_mask, box_mask(boxes, plan["window"], self.crop_size))
            write_png(lip_mask, box_mask(m.lip_boxes(), plan["window"], self.crop_size, grow=0.1))
            row.update(face_mask_path=ctx.rel(face_mask), lip_mask_path=ctx.rel(lip_mask))
            ctx.count("croppable")
        for reason in row["reasons"]:
            ctx.count(f"no_crop_{reason}")
        return row
