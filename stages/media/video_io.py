"""Video in and out with PyAV (there is no ffmpeg binary): frame readers, and H.264 mp4 writing with optional audio."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from stages.base import temp_sibling
from stages.media.clock import first_frame

log = logging.getLogger(__name__)

# Decoder shortcuts for passes that only look for things (cuts, faces) and keep no pixels: no
# deblocking filter and FFmpeg's fast, not bit-exact paths. About 30% less H.264 decode time on
# 720p; edges stay, so detectors see the same picture. Never for pixels that are measured (blur) or kept.
LOOK_ONLY = {"skip_loop_filter": "all", "flags2": "+fast"}


class SkipCorrupt:
    """The decoded frames of one stream, packet by packet: a packet the decoder rejects is skipped and
    counted in `corrupt`, and the stream goes on past it. The demuxer's own errors still raise."""

    def __init__(self, container: av.container.InputContainer, stream: av.stream.Stream):
        self.container, self.stream, self.corrupt = container, stream, 0

    def __iter__(self):
        for packet in self.container.demux(self.stream):
            try:
                frames = packet.decode()
            except (av.error.FFmpegError, ValueError):
                self.corrupt += 1
                continue
            yield from frames


def write_mp4(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 25.0,
    audio: np.ndarray | None = None,
    audio_rate: int = 16000,
    crf: int = 20,
    metadata: dict[str, str] | None = None,
) -> int:
    """Encode RGB uint8 frames (H, W, 3) to H.264 (yuv420p) with optional mono float audio as AAC.

    Writes to a temporary name and renames, so a reader never sees half a file. Returns frames written.
    """
    path = Path(path)
    tmp = temp_sibling(path, ".tmp.mp4")
    n = 0
    with av.open(str(tmp), "w", format="mp4") as c:
        for k, v in (metadata or {}).items():
            c.metadata[k] = v
        vs = None
        rate = Fraction(fps).limit_denominator(1001)
        astream = None
        if audio is not None:
            astream = c.add_stream("aac", rate=audio_rate)
            astream.layout = "mono"
        for frame in frames:
            if vs is None:
                h, w = frame.shape[:2]
                vs = c.add_stream("libx264", rate=rate)
                vs.width, vs.height = w - w % 2, h - h % 2
                vs.pix_fmt = "yuv420p"
                vs.options = {"crf": str(crf), "preset": "veryfast"}
            frame = np.ascontiguousarray(frame[: vs.height, : vs.width, :3])
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = n
            vf.time_base = 1 / rate
            for packet in vs.encode(vf):
                c.mux(packet)
            n += 1
        if vs is not None:
            for packet in vs.encode():
                c.mux(packet)
        if astream is not None:
            _encode_audio(c, astream, np.asarray(audio, np.float32), audio_rate)
    tmp.replace(path)
    return n


def _encode_audio(c: av.container.OutputContainer, stream: av.AudioStream, audio: np.ndarray, rate: int) -> None:
    step = 1024
    for i in range(0, len(audio), step):
        chunk = audio[i : i + step]
        if len(chunk) < step:
            chunk = np.pad(chunk, (0, step - len(chunk)))
        af = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
        af.sample_rate = rate
        af.pts = i
        af.time_base = Fraction(1, rate)
        for packet in stream.encode(af):
            c.mux(packet)
    for packet in stream.encode(None):
        c.mux(packet)


def read_frames(path: str | Path, size: tuple[int, int] | None = None) -> Iterable[tuple[float, np.ndarray]]:
    """(pts seconds, RGB frame) for every decodable frame, optionally resized to (w, h) by the decoder's scaler."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        for frame in c.decode(vs):
            t = float(frame.pts * vs.time_base) if frame.pts is not None else float(frame.time or 0)
            if size:
                frame = frame.reformat(width=size[0], height=size[1])
            yield t, frame.to_ndarray(format="rgb24")


class AnchorNotFound(LookupError):
    """After a seek, no decoded frame had the anchor's timestamp."""


def iter_frames(path: Path, rotation: int, look_only: bool = False,
                anchor: tuple[int, float] | None = None) -> Iterator[tuple[int, av.VideoFrame]]:
    """(decoder index, frame) for every decodable frame; `to_rgb` turns one upright when it is needed.

    Packets the decoder rejects are skipped (SkipCorrupt), as the shot stage's decode does, so every
    stage numbers the frames of a damaged file the same way. `look_only` decodes with LOOK_ONLY's
    shortcuts (same frames, slightly different pixels). `anchor` (index, clock seconds), a frame whose
    number and clock time an earlier full decode recorded (a shot's start), starts there: seek to the
    keyframe before it, drop the frames before its PTS, number it `index`. Raises AnchorNotFound
    when no frame has that PTS; nothing was yielded then.

    Frames whose coded size differs from the first frame's (a resolution change mid-stream) are
    scaled to the first frame's size, so every pixel coordinate of a source is in one system.
    """
    size, origin = None, None
    if anchor is not None:  # the first frame, not the one seeked to, sets the clock and the size
        with av.open(str(path)) as c:
            f = first_frame(c)
            if f is not None:
                size, tb = (f.width, f.height), c.streams.video[0].time_base
                origin = float(f.pts * tb) if f.pts is not None and tb else None
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        if look_only:
            vs.codec_context.options = dict(LOOK_ONLY)
        skip = SkipCorrupt(c, vs)
        frames, i = (skip, 0) if anchor is None else (_from_anchor(vs, skip, origin, *anchor), anchor[0])
        try:
            for frame in frames:
                size = size or (frame.width, frame.height)
                if (frame.width, frame.height) != size:
                    frame = frame.reformat(width=size[0], height=size[1])
                yield i, frame
                i += 1
        except av.error.FFmpegError as e:  # the demuxer itself gave up: keep what decoded
            log.warning("%s: demuxing stopped at frame %d: %s", path.name, i, e)
        if skip.corrupt:
            log.warning("%s: %d corrupt packets skipped", path.name, skip.corrupt)


def feed_ranges(path: Path, rotation: int, consumers: list, anchor: tuple[int, float] | None = None) -> list:
    """One decode of `path` giving each consumer its frames, `first` to `last` (decoder indices, inclusive).

    A consumer has `first`, `last`, `observe(index, rgb)` and `close()`, and may have `wants(index)`
    (without it, every frame of its range); it is closed after its last frame. Frames no consumer
    wants are never converted to RGB. On an error every consumer still open is closed and the
    error raised. Returns the consumers the decode ended before finishing
    (closed too). `anchor`: as for `iter_frames`.
    """
    pending = sorted(consumers, key=lambda c: c.first)
    active: list = []
    try:
        for i, frame in iter_frames(path, rotation, anchor=anchor):
            while pending and pending[0].first <= i:
                active.append(pending.pop(0))
            if not active:
                if not pending:
                    break
                continue
            takers = [c for c in active if not hasattr(c, "wants") or c.wants(i)]
            rgb = to_rgb(frame, rotation) if takers else None
            for c in takers:
                c.observe(i, rgb)
            for c in [c for c in active if c.last <= i]:
                active.remove(c)
                c.close()
    except BaseException:
        for c in active + pending:  # the decode's own error is the one to report
            with contextlib.suppress(Exception):
                c.close()
        raise
    for c in active + pending:  # consumers that outlast the decoded frames (the decode ended early)
        with contextlib.suppress(Exception):
            c.close()
    return active + pending


# How far before an anchor to seek again when a seek lands after it (MPEG-TS and other formats
# without an index seek by byte position and may land past the keyframe asked for), in seconds.
SEEK_BACKOFF_S = (0.0, 1.0, 4.0, 16.0, 64.0)


def _from_anchor(vs, frames: SkipCorrupt, origin: float | None, index: int, clock_s: float) -> Iterator[av.VideoFrame]:
    """Frames from the anchor on; `origin`: container seconds of the first frame (the clock's t = 0).

    A seek that lands after the anchor (no frame at or before it, or none at all) is retried from
    further back (SEEK_BACKOFF_S), then from the file's start, so a file whose seeks are imprecise
    still starts near the anchor."""
    c = frames.container
    tb = float(vs.time_base or 0)
    rate = float(vs.average_rate or vs.guessed_rate or 25.0)
    if not tb:
        raise AnchorNotFound("the stream has no time base")
    if origin is None:
        raise AnchorNotFound("the first frame has no timestamp")
    pts_s = clock_s + origin
    tol = 0.25 / rate
    targets = [pts_s - back for back in SEEK_BACKOFF_S if pts_s - back > origin] + [None]  # None: the file's start
    for target in targets:
        if target is None:
            c.seek(0)
        else:
            c.seek(int(round(target / tb)), stream=vs, backward=True, any_frame=False)
        it = iter(frames)
        landed = False  # a frame at or before the anchor came first
        for frame in it:
            if frame.pts is None:
                raise AnchorNotFound("frames without timestamps")
            t = float(frame.pts * tb)  # as stages/media/decode.py computes a shot's start_s
            if t < pts_s - tol:
                landed = True
                continue
            if t > pts_s + tol:
                if not landed:
                    break  # landed past the anchor: seek again from further back
                raise AnchorNotFound(f"frame {index} at {pts_s:.3f} s not found after seeking (next: {t:.3f} s)")
            yield frame
            yield from it
            return
        else:
            if landed:
                raise AnchorNotFound(f"the stream ended before frame {index} at {pts_s:.3f} s")
        it.close()
    raise AnchorNotFound(f"no seek reached frame {index} at {pts_s:.3f} s")


def to_rgb(frame: av.VideoFrame, rotation: int) -> np.ndarray:
    """RGB in display orientation: PyAV gives stored pixels; the display matrix turns them `rotation` deg CCW."""
    if frame.format.name == "yuv420p" and frame.width % 2 == 0 and frame.height % 2 == 0:
        # OpenCV's SIMD BT.601 conversion costs about half of swscale's rgb24 path at 720p.
        rgb = cv2.cvtColor(frame.to_ndarray(format="yuv420p"), cv2.COLOR_YUV2RGB_I420)
    else:
        rgb = frame.to_ndarray(format="rgb24")
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb
