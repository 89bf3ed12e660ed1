"""EMO-ready face crops: one square window per track, its face-region and lip masks, and crop videos.

The window is square around the union of the track's boxes plus a margin (EMO crops generously so
the head can move inside a still window); the face-region mask is that union, as EMO's face
locator uses it; the lip mask is the union of the lips' boxes. `write_crops` writes the crop videos
of any number of frame ranges in one decode of the source.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from stages.base import temp_sibling
from stages.media.video_io import AnchorNotFound, feed_ranges, write_mp4

# The crop window's margin, as a fraction of the face's side on each side: the face stage's default,
# and the sampler's for a reference portrait, so the model sees faces framed as it was trained.
DEFAULT_MARGIN = 0.25


def crop_window(boxes: np.ndarray, margin: float, width: int, height: int) -> tuple[np.ndarray, bool]:
    """Square [x0, y0, x1, y1] around the union of `boxes`, `margin` x its side added on each side.

    Shifted to stay inside the frame and shrunk to the frame's short side if it must be;
    the flag says it had to shrink (the union no longer fits in it).
    """
    u = np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()])
    side = max(u[2] - u[0], u[3] - u[1]) * (1 + 2 * margin)
    clipped = side > min(width, height)
    side = min(side, width, height)
    cx = np.clip((u[0] + u[2]) / 2, side / 2, width - side / 2)
    cy = np.clip((u[1] + u[3]) / 2, side / 2, height - side / 2)
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]), bool(clipped)


def crop_frame(rgb: np.ndarray, window: np.ndarray, size: int) -> np.ndarray:
    x0, y0, x1, y1 = window
    scale = size / (x1 - x0)
    m = np.array([[scale, 0, -scale * x0], [0, scale, -scale * y0]])
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.warpAffine(rgb, m, (size, size), flags=interp, borderMode=cv2.BORDER_REPLICATE)


def box_mask(boxes: np.ndarray, window: np.ndarray, size: int, grow: float = 0.0) -> np.ndarray:
    """uint8 mask (size, size): 255 inside the union of `boxes` (frame pixels) mapped into the window."""
    mask = np.zeros((size, size), np.uint8)
    scale = size / (window[2] - window[0])
    for b in boxes:
        pad = grow * np.array([-(b[2] - b[0]), -(b[3] - b[1]), b[2] - b[0], b[3] - b[1]])
        x0, y0, x1, y1 = ((b + pad) - np.tile(window[:2], 2)) * scale
        mask[max(0, int(y0)) : max(0, int(np.ceil(y1))), max(0, int(x0)) : max(0, int(np.ceil(x1)))] = 255
    return mask


def write_png(path: Path, mask: np.ndarray) -> None:
    tmp = temp_sibling(path, ".tmp.png")
    Image.fromarray(mask).save(tmp)
    tmp.replace(path)


class CropWriter:
    """Feeds one track's crops to `write_mp4` on a thread, so several tracks can be written in one decode pass."""

    def __init__(self, path: Path, fps: float, window: np.ndarray, size: int):
        self.window, self.size = window, size
        self._q: queue.Queue = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._stopped = False  # the stop marker was taken off the queue
        self._written = 0
        self._thread = threading.Thread(target=self._run, args=(path, fps), daemon=True)
        self._thread.start()

    def _run(self, path: Path, fps: float) -> None:
        try:
            write_mp4(path, self._frames(), fps)
        except BaseException as e:  # reported by close(); keep draining so add() never blocks forever
            self._error = e
            while not self._stopped and self._q.get() is not None:
                pass

    def _frames(self):
        while (frame := self._q.get()) is not None:
            self._written += 1
            yield frame
        self._stopped = True

    def add(self, rgb: np.ndarray) -> None:
        self._q.put(crop_frame(rgb, self.window, self.size))

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            if not self._written:
                raise RuntimeError("no frames reached the crop writer (the decode ended before the track)") from self._error
            raise self._error


@dataclass
class CropJob:
    """One crop video: the source frame (decoder index, as the face stage counts them) each of its
    frames shows, in order; a source frame may repeat or be skipped (a clip resampled by timestamp)."""

    path: Path
    picks: list[int]
    window: np.ndarray  # [x0, y0, x1, y1] in displayed-frame pixels
    size: int
    fps: float

    @property
    def first(self) -> int:
        return min(self.picks)

    @property
    def end(self) -> int:
        return max(self.picks) + 1


def write_crops(video: Path, rotation: int, jobs: list[CropJob], anchors: list[tuple[int, float]] = (),
                seek_gap: int = 250) -> None:
    """Write every job's crop video, decoding `video` once; frames outside every job are never converted.

    `anchors` are (frame index, clock seconds) of frames an earlier full decode numbered (the shot
    table's starts). A job more than `seek_gap` frames past what is being decoded starts a new
    segment at the nearest anchor before it, reached by a seek instead of decoding the gap; when an
    anchor's frame cannot be found, that segment decodes from the start. Raises when the decode
    ends before a job's last frame (the source changed since the face stage).
    """
    segments: list[tuple[tuple[int, float] | None, list[CropJob]]] = []
    end = 0
    for job in sorted(jobs, key=lambda j: j.first):
        near = [a for a in anchors if end < a[0] <= job.first]
        seek = job.first - end > seek_gap and bool(near)
        if segments and not seek:
            segments[-1][1].append(job)
        else:
            segments.append((max(near) if seek else None, [job]))
        end = max(end, job.end)
    for anchor, group in segments:
        try:
            _write_segment(video, rotation, group, anchor)
        except AnchorNotFound:
            _write_segment(video, rotation, group, None)


class _CropFeed:
    """A feed_ranges consumer that writes one job's crop video; its writer starts at its first frame."""

    def __init__(self, job: CropJob):
        self.job, self.first, self.last = job, job.first, job.end - 1
        self._times = Counter(job.picks)  # picks are in order: frames arrive in order
        self._writer: CropWriter | None = None

    def wants(self, index: int) -> bool:
        return index in self._times

    def observe(self, index: int, rgb: np.ndarray) -> None:
        if self._writer is None:
            self._writer = CropWriter(self.job.path, self.job.fps, self.job.window, self.job.size)
        for _ in range(self._times[index]):
            self._writer.add(rgb)

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()


def _write_segment(video: Path, rotation: int, jobs: list[CropJob], anchor: tuple[int, float] | None) -> None:
    short = [f.job for f in feed_ranges(video, rotation, [_CropFeed(j) for j in jobs], anchor)]
    for job in short:
        job.path.unlink(missing_ok=True)
    if short:
        raise RuntimeError(f"{video.name}: decoding ended before frame {short[0].end - 1}, which the face stage "
                           f"decoded: {len(short)} crop(s) not written (was the file changed?)")
