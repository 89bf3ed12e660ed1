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


def video_origin(container: av.container.InputContainer) -> float | None:
    """Container seconds of the first decoded video frame (t = 0), or None without video or timestamps."""
    if not container.streams.video:
        return None
    vs = container.streams.video[0]
    for packet in container.demux(vs):
        try:
            frames = packet.decode()
        except (av.error.FFmpegError, ValueError):
            continue
        if frames:
            f = frames[0]
            return float(f.pts * vs.time_base) if f.pts is not None and vs.time_base else None
    return None


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
