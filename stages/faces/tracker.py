"""FaceTracker: detections at sampled frames of one shot -> face tracks (IoU and motion, short misses bridged).

A tracker lives inside one shot; the stage makes a new one at every cut, so no track crosses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from stages.faces.detectors import Detection, box_iou


@dataclass
class Track:
    dets: dict[int, Detection] = field(default_factory=dict)  # frame -> detection (sampled or refined)
    misses: int = 0  # consecutive sampled frames without a match

    def add(self, frame: int, det: Detection) -> None:
        self.dets[frame] = det

    @property
    def first(self) -> int:
        return min(self.dets)

    @property
    def last(self) -> int:
        return max(self.dets)

    def predict(self, frame: int) -> np.ndarray:
        """Box at `frame` by constant velocity from the last two detections."""
        frames = sorted(self.dets)[-2:]
        box = self.dets[frames[-1]].box
        if len(frames) < 2:
            return box
        v = (box - self.dets[frames[0]].box) / (frames[1] - frames[0])
        return box + v * (frame - frames[-1])


def _center_close(a: np.ndarray, b: np.ndarray, frac: float = 0.5) -> bool:
    ca, cb = (a[:2] + a[2:]) / 2, (b[:2] + b[2:]) / 2
    size = max(a[2] - a[0], a[3] - a[1], 1.0)
    return float(np.linalg.norm(ca - cb)) < frac * size


class FaceTracker:
    """Greedy-optimal (Hungarian) association of each sample's detections with predicted track boxes."""

    def __init__(self, max_gap_samples: int = 2, min_iou: float = 0.2):
        self.max_gap_samples = max_gap_samples
        self.min_iou = min_iou
        self.active: list[Track] = []
        self.done: list[Track] = []

    def update(self, frame: int, dets: list[Detection]) -> tuple[list[Track], list[Track]]:
        """Match one sample's detections; returns (tracks born here, tracks that just missed for the first time)."""
        matched_t, matched_d = set(), set()
        if self.active and dets:
            pred = np.stack([t.predict(frame) for t in self.active])
            iou = box_iou(pred, np.stack([d.box for d in dets]))
            rows, cols = linear_sum_assignment(-iou)
            for r, c in zip(rows, cols, strict=True):
                if iou[r, c] >= self.min_iou or _center_close(pred[r], dets[c].box):
                    self.active[r].add(frame, dets[c])
                    self.active[r].misses = 0
                    matched_t.add(r)
                    matched_d.add(c)
        missed = []
        for i, t in enumerate(self.active):
            if i not in matched_t:
                t.misses += 1
                if t.misses == 1:
                    missed.append(t)
        born = [Track({frame: d}) for j, d in enumerate(dets) if j not in matched_d]
        self.done += [t for t in self.active if t.misses > self.max_gap_samples]
        self.active = [t for t in self.active if t.misses <= self.max_gap_samples] + born
        return born, missed

    def relink(self, frame: int, missed: list[Track], born: list[Track]) -> list[Track]:
        """Give born tracks back to missed ones that now reach them (after refining frame by frame).

        A face that moves more than its size between samples is missed and re-born; once the missed
        track has been followed through the frames in between, its prediction finds the newborn.
        Returns the born tracks that are really new.
        """
        new = []
        for b in born:
            det = b.dets[frame]
            owner = next((t for t in missed if t.misses and t.last < frame and (
                box_iou(t.predict(frame), det.box)[0, 0] >= self.min_iou or _center_close(t.predict(frame), det.box))), None)
            if owner is None:
                new.append(b)
                continue
            owner.add(frame, det)
            owner.misses = 0
            self.active.remove(b)
        return new

    def finish(self) -> list[Track]:
        tracks, self.done, self.active = self.done + self.active, [], []
        return sorted(merge_tracks(tracks), key=lambda t: (t.first, float(t.dets[t.first].box[0])))


def same_face(a: Track, b: Track, max_gap: int) -> bool:
    """Two tracks of one shot are one face when, where both have a box, the boxes mostly overlap; or,
    when one ends just before the other starts, the later starts where the earlier ended."""
    shared = sorted(set(a.dets) & set(b.dets))
    if not shared:  # overlapping spans without a common frame: compare each box to the other's nearest
        shared = [f for f in sorted(a.dets) if b.first <= f <= b.last]
    if shared:
        near = [(a.dets[f].box, b.dets[min(b.dets, key=lambda g: abs(g - f))].box) for f in shared]
        hits = [box_iou(x, y)[0, 0] >= 0.3 or _center_close(x, y) for x, y in near]
        return float(np.mean(hits)) > 0.5
    early, late = (a, b) if a.last < b.first else (b, a)
    if late.first - early.last > max_gap:
        return False
    x, y = early.dets[early.last].box, late.dets[late.first].box
    return box_iou(x, y)[0, 0] >= 0.2 or _center_close(x, y, 0.75)


def merge_tracks(tracks: list[Track], max_gap: int = 25) -> list[Track]:
    """One track per face: tracks that are the same face (see same_face) become one, keeping at each
    frame the more confident box. A head that turns away, a hand over the mouth or a wide-open mouth
    can make the detector lose a face for a while, or give it twice; the pieces overlap in time and
    place, or follow each other in place, and are joined rather than dropped (no frames are lost)."""
    out: list[Track] = []
    for t in sorted(tracks, key=lambda t: (-len(t.dets), t.first)):  # the longest absorbs its fragments
        host = next((o for o in out if same_face(o, t, max_gap)), None)
        if host is None:
            out.append(Track(dict(t.dets), t.misses))
            continue
        for f, d in t.dets.items():
            if f not in host.dets or d.score > host.dets[f].score:
                host.dets[f] = d
    return out


def _moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Centered moving average along axis 0 with edge padding (window odd)."""
    if window <= 1 or len(x) < 2:
        return x
    k = window // 2
    padded = np.concatenate([np.repeat(x[:1], k, 0), x, np.repeat(x[-1:], k, 0)])
    csum = np.cumsum(np.concatenate([np.zeros_like(x[:1]), padded]), axis=0)
    return (csum[window:] - csum[:-window]) / window


def track_boxes(track: Track, width: int, height: int, smooth: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(frames, boxes (N, 4)) for every frame first..last: interpolated between detections, smoothed, clipped."""
    keys = np.array(sorted(track.dets))
    b = np.stack([track.dets[k].box for k in keys])
    # (cx, cy, side-w, side-h): interpolate centre and size, not corners, so the box does not shear.
    cwh = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
    frames = np.arange(keys[0], keys[-1] + 1)
    per_frame = np.stack([np.interp(frames, keys, cwh[:, i]) for i in range(4)], 1)
    per_frame = _moving_average(per_frame, smooth | 1)
    cx, cy, w, h = per_frame.T
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return frames, boxes
