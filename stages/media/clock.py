"""The media clock: one timeline per source that every time column in every manifest is on.

t = 0 is the presentation time of the first displayed (first decoded) video frame; a time is
seconds on that clock. Audio is placed on it by its own timestamps: each decoded audio frame goes
where its PTS says, relative to the video's first frame, so an audio stream that starts late is
preceded by silence, audio before the first frame is trimmed, edit lists and signalled encoder
priming (which FFmpeg applies) are honoured, a gap in the timestamps (a lost packet) stays a gap
instead of pulling the rest early, and a change of sample rate or channel layout mid-stream starts
a new resampler instead of failing.

Encoder priming is taken as the container signals it (an MP4 edit list, Matroska's CodecDelay,
Opus pre-skip, the earlier timestamp of TS's first audio frame); FFmpeg applies it. Priming that
nothing signals is not guessed at: no file seen here had any.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

JUMP_S = 0.005  # a timestamp this far from where the previous frame ended starts a new run


@dataclass
class AudioRun:
    """Contiguous decoded audio of one format: its clock start (None: no timestamps) and samples."""

    start_s: float | None
    chunks: list[np.ndarray] = field(default_factory=list)

    def samples(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


def first_frame(container: av.container.InputContainer) -> av.VideoFrame | None:
    """The first video frame that decodes (it defines t = 0 and the display size), or None."""
    if not container.streams.video:
        return None
    for packet in container.demux(container.streams.video[0]):
        try:
            frames = packet.decode()
        except (av.error.FFmpegError, ValueError):
            continue
        if frames:
            return frames[0]
    return None


def video_origin(container: av.container.InputContainer) -> float | None:
    """Container seconds of the first decoded video frame (t = 0), or None without video or timestamps."""
    f = first_frame(container)
    tb = container.streams.video[0].time_base if f is not None else None
    return float(f.pts * tb) if f is not None and f.pts is not None and tb else None


def video_end(path: Path, origin_s: float) -> float | None:
    """Clock time at which the last video packet ends, by a demux pass (no decoding): for files whose
    header gives no duration (live WebM, some TS)."""
    end = None
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        tb = vs.time_base
        step = 1.0 / float(vs.average_rate or vs.guessed_rate or 25)
        for p in c.demux(vs):
            if p.pts is None or not tb:
                continue
            t = float(p.pts * tb) + (float(p.duration * tb) if p.duration else step)
            end = t if end is None else max(end, t)
    return None if end is None else end - origin_s


def audio_runs(container: av.container.InputContainer, rate: int) -> tuple[list[AudioRun], int]:
    """(runs of mono float32 audio at `rate` with container start times, corrupt packets skipped)."""
    stream = container.streams.audio[0]
    tb = stream.time_base
    runs: list[AudioRun] = []
    resampler, fmt, expected, corrupt = None, None, None, 0

    def close():
        if resampler is not None and runs:
            runs[-1].chunks.extend(o.to_ndarray().reshape(-1) for o in resampler.resample(None))

    for frames in _decoded(container, stream):
        if frames is None:
            corrupt += 1
            continue
        for frame in frames:
            t = float(frame.pts * tb) if frame.pts is not None and tb else None
            key = (frame.format.name, frame.layout.name, frame.sample_rate)
            if key != fmt or (t is not None and expected is not None and abs(t - expected) > JUMP_S) or not runs:
                close()
                resampler, fmt = av.AudioResampler(format="flt", layout="mono", rate=rate), key
                runs.append(AudioRun(t if t is not None else expected))
            frame.pts = None  # the resampler only converts; placement is by the run's start
            runs[-1].chunks.extend(o.to_ndarray().reshape(-1) for o in resampler.resample(frame))
            start = t if t is not None else expected
            expected = None if start is None else start + frame.samples / frame.sample_rate
    close()
    return runs, corrupt


def _decoded(container, stream):
    """Each packet's frames, or None when the decoder rejects it; the demuxer giving up ends the stream
    (what decoded is kept)."""
    try:
        for packet in container.demux(stream):
            try:
                yield packet.decode()
            except (av.error.FFmpegError, ValueError):
                yield None
    except av.error.FFmpegError:
        return


def place(runs: list[AudioRun], rate: int, origin_s: float | None, span_s: float | None) -> np.ndarray:
    """The runs laid on the clock: sample 0 is t = 0, the result covers exactly [0, span_s).

    With no origin (a file without video) the first run starts the clock; with no span the audio's
    own end ends it.
    """
    starts = [r.start_s for r in runs if r.start_s is not None]
    t0 = origin_s if origin_s is not None else (min(starts) if starts else 0.0)
    placed, cursor = [], 0
    for r in runs:
        x = r.samples()
        pos = cursor if r.start_s is None else int(round((r.start_s - t0) * rate))
        placed.append((pos, x))
        cursor = pos + len(x)
    n = int(round(span_s * rate)) if span_s is not None else max([p + len(x) for p, x in placed] + [0])
    out = np.zeros(max(n, 0), np.float32)
    for pos, x in placed:  # later runs win where two overlap
        a, b = max(pos, 0), min(pos + len(x), n)
        if b > a:
            out[a:b] = x[a - pos : b - pos]
    return out


@dataclass
class Timeline:
    """Frame index <-> clock time for one source: the `timeline` table's row (manifests/timeline.py).

    Frame i is displayed from frame_s[i] until frame_s[i + 1] (the last until end_s). Every stage
    that turns frames into seconds or seconds into frames goes through this, never index / fps.
    """

    frame_s: np.ndarray  # (N,) float64, [0] == 0.0; non-decreasing but where a splice steps back
    end_s: float
    sizes: list[tuple[int, int, int]] = field(default_factory=list)  # (first frame, width, height) per size run

    @classmethod
    def from_row(cls, row: dict) -> Timeline:
        return cls(np.asarray(row["frame_s"], np.float64), float(row["end_s"]),
                   [tuple(int(x) for x in s) for s in row.get("sizes") or []])

    @classmethod
    def from_demux(cls, path: Path) -> Timeline:
        """Without a shot stage's table: the video packets' timestamps in display order, by a demux pass
        (no decoding; a packet that would not decode still counts here, which the table's decode does not)."""
        with av.open(str(path)) as c:
            origin = video_origin(c)
        with av.open(str(path)) as c:
            vs = c.streams.video[0]
            tb = float(vs.time_base or 0)
            step = 1.0 / float(vs.average_rate or vs.guessed_rate or 25)
            got = sorted((float(p.pts * tb), float(p.duration * tb) if p.duration else step)
                         for p in c.demux(vs) if p.pts is not None and tb and p.size)
        t0 = origin if origin is not None else (got[0][0] if got else 0.0)
        times = np.asarray([t for t, _ in got if t >= t0 - 1e-6], np.float64) - t0
        if not len(times):
            return cls(np.zeros(0), 0.0)
        return cls(times, float(times[-1] + got[-1][1]))

    def __len__(self) -> int:
        return len(self.frame_s)

    @property
    def steps(self) -> np.ndarray:
        return np.diff(np.append(self.frame_s, self.end_s))

    @property
    def fps(self) -> float:
        """The nominal rate: one over the mean of the frame steps within a tenth of the median step.
        Not the median itself: Matroska's millisecond timestamps write 1/30 s as 33 or 34 ms, and
        the median is one of the two (30.30 or 29.41 fps); their mean is 1/30. Steps far from the
        median (dropped frames, a splice) do not count; where none is near it (half the frames at one
        rate, half at another) the median is the step."""
        s = self.steps[self.steps > 0]
        if not len(s):
            return 25.0
        m = float(np.median(s))
        near = s[np.abs(s - m) <= 0.1 * m]
        mean = float(near.mean()) if len(near) else m
        # Equal steps: the step itself, not a mean that sums 750 of them into 25.000000000000004 fps.
        return 1.0 / (m if abs(mean - m) <= 1e-9 * m else mean)

    @property
    def constant_rate(self) -> bool:
        s = self.steps[:-1] if len(self.steps) > 1 else self.steps  # the last frame's duration is a guess
        return bool(len(s) == 0 or np.all(np.abs(s * self.fps - 1.0) <= 0.1))

    def time_of(self, index: int | np.ndarray) -> float | np.ndarray:
        """Start time of frame `index`; len(self) gives end_s, later indices go on at the nominal rate."""
        edges = np.append(self.frame_s, self.end_s)
        i = np.asarray(index)
        t = np.where(i < len(edges), edges[np.clip(i, 0, len(edges) - 1)], self.end_s + (i - len(self)) / self.fps)
        return float(t) if t.ndim == 0 else t

    def _sorted_edges(self) -> np.ndarray:
        """Frame starts and end_s, each at least the one before (a splice's step back flattened) for searching."""
        return np.maximum.accumulate(np.append(self.frame_s, self.end_s))

    def index_near(self, t: float | np.ndarray) -> int | np.ndarray:
        """The frame boundary (0 .. len) nearest clock time t: where a span starting or ending at t
        begins or ends in frames."""
        edges = self._sorted_edges()
        t = np.asarray(t, np.float64)
        j = np.clip(np.searchsorted(edges, t), 1, len(edges) - 1)
        i = np.where(np.abs(edges[j - 1] - t) <= np.abs(edges[j] - t), j - 1, j)
        return int(i) if i.ndim == 0 else i

    def frames_near(self, t: np.ndarray, first: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """(frame in [first, end) whose start is nearest each time in t, that frame's start): where a
        boundary past the span is nearest, its last frame."""
        i = np.clip(self.index_near(np.asarray(t, np.float64)), first, end - 1)
        return i, self._sorted_edges()[i]

    def index_at(self, t: float | np.ndarray) -> int | np.ndarray:
        """The frame on screen at clock time t (the last one starting at or before it)."""
        starts = self._sorted_edges()[:-1]
        i = np.clip(np.searchsorted(starts, np.asarray(t, np.float64) + 1e-9, side="right") - 1, 0, len(self) - 1)
        return int(i) if i.ndim == 0 else i

    def row(self, source_id: str) -> dict:
        return {"source_id": source_id, "n_frames": len(self), "frame_s": self.frame_s.tolist(), "end_s": self.end_s,
                "fps": self.fps, "constant_rate": self.constant_rate, "sizes": [list(s) for s in self.sizes]}


def source_timeline(source: dict, ctx) -> Timeline:
    """The source's timeline: the shot stage's row, or (that stage not run) one by a demux pass; for a
    row without a media file (audio-only test sources), frames evenly spaced at the row's fps."""
    rows = ctx.upstream("timeline", source["source_id"]).to_pylist()
    if rows:
        return Timeline.from_row(rows[0])
    if source.get("media_path") and (ctx.out / source["media_path"]).is_file():
        return Timeline.from_demux(ctx.out / source["media_path"])
    fps = float(source.get("fps") or 25.0)
    n = int(source.get("n_frames") or round(float(source.get("duration_s") or 0.0) * fps))
    return Timeline(np.arange(n) / fps, n / fps)
