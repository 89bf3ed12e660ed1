"""One decode pass per source: every frame, downscaled by the decoder's scaler, with its PTS.

Decoding is the floor of the whole pipeline, so detectors never decode themselves: they take
the small frames this returns. Packets that fail to decode are skipped and counted; the stream
goes on past them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from stages.base import StageError
from stages.media.clock import Timeline
from stages.media.video_io import LOOK_ONLY, SkipCorrupt

log = logging.getLogger(__name__)


@dataclass
class SmallFrames:
    """The decoded frames of one video, small enough to hold in memory (48x27 RGB: 3.9 KB a frame)."""

    frames: np.ndarray  # (N, H, W, 3) uint8 RGB, in decoder output order
    pts: np.ndarray  # (N,) float64 seconds on the source's clock (stages/media/clock.py): PTS minus the first frame's
    end_s: float  # clock time of the end of the last frame (its time plus its duration)
    corrupt_packets: int  # packets the decoder rejected; their frames are missing
    sizes: list[tuple[int, int, int]] = field(default_factory=list)  # (first frame, width, height) per coded size

    def timeline(self) -> Timeline:
        return Timeline(self.pts, self.end_s, self.sizes)

    def __len__(self) -> int:
        return len(self.frames)

    def time_at(self, index: int) -> float:
        """Start time of frame `index`; `len(self)` gives the end of the video."""
        return float(self.pts[index]) if index < len(self.pts) else self.end_s


def decode_small(path: str | Path, size: tuple[int, int] = (48, 27), threads: int = 0,
                 interpolation: str = "AREA") -> SmallFrames:
    """Decode every frame of the first video stream, resized to `size` (w, h) RGB.

    `threads` 0 lets FFmpeg choose. Raises StageError("undecodable") when no frame decodes.
    """
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise StageError("undecodable", f"cannot open: {e}") from e
    out: list[np.ndarray] = []
    pts: list[float] = []
    corrupt, last_duration = 0, 0.0
    sizes: list[tuple[int, int, int]] = []
    with container:
        if not container.streams.video:
            raise StageError("undecodable", "no video stream")
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        vs.codec_context.thread_count = threads
        vs.codec_context.options = dict(LOOK_ONLY)  # cuts and fades only: no deblocking needed
        tb = float(vs.time_base or 0) or None
        rate = float(vs.average_rate or vs.guessed_rate or 25.0)
        scaler = av.video.reformatter.VideoReformatter()
        w, h = size
        frames = SkipCorrupt(container, vs)
        try:
            for frame in frames:
                t = _seconds(frame, tb, pts, rate)
                if not sizes or sizes[-1][1:] != (frame.width, frame.height):
                    sizes.append((len(out), frame.width, frame.height))
                small = scaler.reformat(frame, width=w, height=h, format="rgb24", interpolation=interpolation)
                out.append(small.to_ndarray())
                pts.append(t)
                last_duration = float(frame.duration * tb) if frame.duration and tb else 1.0 / rate
        except av.error.FFmpegError as e:  # the demuxer itself gave up: keep what decoded
            corrupt += 1
            log.debug("demux stopped early in %s: %s", path, e)
        corrupt += frames.corrupt
    if not out:
        raise StageError("undecodable", "no frame could be decoded")
    origin = pts[0]  # t = 0 is the first displayed frame
    return SmallFrames(np.stack(out), np.asarray(pts, np.float64) - origin, pts[-1] + last_duration - origin, corrupt, sizes)


def _seconds(frame: av.VideoFrame, tb: float | None, prev: list[float], rate: float) -> float:
    if frame.pts is not None and tb:
        return float(frame.pts * tb)
    if frame.time is not None:
        return float(frame.time)
    return prev[-1] + 1.0 / rate if prev else 0.0


def decode_only(path: str | Path, threads: int = 0, look_only: bool = False) -> int:
    """Decode every frame and drop it: the speed floor every detector is measured against.

    `look_only` decodes with video_io.LOOK_ONLY's shortcuts, as the detection passes do.
    """
    n = 0
    with av.open(str(path)) as container:
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        vs.codec_context.thread_count = threads
        if look_only:
            vs.codec_context.options = dict(LOOK_ONLY)
        for _ in container.decode(vs):
            n += 1
    return n
