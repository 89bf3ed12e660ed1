"""Probing media with PyAV: what is in a file, and its audio as 16 kHz mono wav; read_audio, the one
reader of those wavs (diarize, quality and the model's load_wav all go through it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile as sf

from stages.base import StageError, temp_sibling
from stages.media.clock import audio_runs, place, video_end, video_origin


def probe_media(path: Path) -> dict[str, Any]:
    """Duration, fps, size, codecs, audio presence and rotation; raises StageError when undecodable."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise StageError("unreadable_container", str(e)) from e
    with container:
        vstreams = list(container.streams.video)
        astreams = list(container.streams.audio)
        if not vstreams:
            raise StageError("no_video_stream", "the file has no video stream" + (" (audio only)" if astreams else ""))
        vs = vstreams[0]
        vs.thread_type = "AUTO"
        first = _first_frame(container, vs)
        fps = float(vs.average_rate or vs.guessed_rate or 0) or None
        duration = None
        if vs.duration is not None and vs.time_base is not None:
            duration = float(vs.duration * vs.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        elif first.pts is not None and vs.time_base:  # no duration in the header (live WebM): a demux pass
            duration = video_end(path, float(first.pts * vs.time_base))
        n_frames = vs.frames or (int(round(duration * fps)) if duration and fps else None)
        rotation = int(round(getattr(first, "rotation", 0) or 0)) % 360
        w, h = first.width, first.height
        if rotation in (90, 270):
            w, h = h, w
        return {
            "duration_s": duration,
            "fps": fps,
            "n_frames": n_frames,
            "width": w,
            "height": h,
            "rotation": rotation,
            "video_codec": vs.codec_context.name,
            "audio_codec": astreams[0].codec_context.name if astreams else None,
            "has_audio": bool(astreams),
        }


# |sample| at or above this counts as clipped. Not 1.0: a lossy codec rings around a flat top, so
# audio clipped at full scale decodes to peaks spread between about 0.9 and 1.3.
CLIP_LEVEL = 0.9


def frames_past_end(path: Path) -> int:
    """Video frames the container's index places beyond the end of the file: a cut-off download or copy.

    Decoders stop quietly where the bytes end, so this is the one place the loss is visible.
    """
    size = path.stat().st_size
    try:
        with av.open(str(path)) as c:
            entries = c.streams.video[0].index_entries if c.streams.video else []
            return sum(1 for i in range(len(entries)) if entries[i].pos + entries[i].size > size)
    except (av.error.FFmpegError, OSError):
        return 0


def _first_frame(container: av.container.InputContainer, vs: av.VideoStream, max_packets: int = 250) -> av.VideoFrame:
    """The first frame that decodes. Packets the decoder rejects are skipped, as the stages skip them."""
    rejected, last_error = 0, None
    try:
        for i, packet in enumerate(container.demux(vs)):
            if i >= max_packets:
                break
            try:
                frames = packet.decode()
            except (av.error.FFmpegError, ValueError) as e:
                rejected, last_error = rejected + 1, e
                continue
            if frames:
                return frames[0]
    except av.error.FFmpegError as e:  # the demuxer gave up
        last_error = e
    declared = f"{vs.codec_context.width}x{vs.codec_context.height} {vs.codec_context.name}"
    raise StageError("undecodable", f"no frame of the {declared} stream decodes ({rejected} packets rejected"
                     + (f"; last error: {last_error})" if last_error else ")"))


def decode_audio(path: Path, rate: int = 16000, on_clock: bool = False) -> tuple[np.ndarray, int]:
    """(mono float32 samples at `rate`, corrupt packets skipped) of the first audio stream of any
    file FFmpeg reads, each decoded frame placed by its timestamp (stages/media/clock.py).
    `on_clock`: sample 0 is the first displayed video frame and the audio covers exactly the video's
    span (silence where the file has no sound). Packets the decoder rejects are skipped and counted;
    their time stays silent. A file with no audio, or none that decodes, is a StageError."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                raise StageError("no_audio_stream", "no audio stream")
            runs, corrupt = audio_runs(c, rate)
        origin = None
        if on_clock:
            with av.open(str(path)) as c:
                origin = video_origin(c)
    except av.error.FFmpegError as e:
        raise StageError("audio_undecodable", str(e)) from e
    if not any(len(r.chunks) for r in runs):
        raise StageError("audio_undecodable", f"all {corrupt} audio packets were rejected by the decoder"
                         if corrupt else "no audio frame decodes")
    span = video_end(path, origin) if origin is not None else None
    return place(runs, rate, origin, span), corrupt


def extract_audio(path: Path, wav: Path, rate: int = 16000) -> dict[str, float]:
    """Decode the first audio stream to a mono float wav at `rate` on the source's clock (see decode_audio).
    Returns seconds written, corrupt packets, and the fraction of clipped samples."""
    audio, corrupt = decode_audio(path, rate, on_clock=True)
    tmp = temp_sibling(wav)
    sf.write(str(tmp), audio, rate, subtype="FLOAT", format="WAV")
    tmp.replace(wav)
    clipped = float(np.mean(np.abs(audio) >= CLIP_LEVEL)) if len(audio) else 0.0
    return {"seconds": len(audio) / rate, "corrupt_packets": corrupt, "clipped_fraction": clipped}


def read_audio(path: Path, start_s: float | None = None, end_s: float | None = None,
               rate: int | None = None) -> tuple[np.ndarray, int]:
    """(mono float32 samples, their rate) of an audio file, whole or between two times (silence where
    the span falls outside the file); resampled to `rate` when one is given and the file's differs."""
    info_rate = sf.info(str(path)).samplerate
    if start_s is None:
        audio, _ = sf.read(str(path), dtype="float32")
    else:
        a, b = int(round(start_s * info_rate)), int(round(end_s * info_rate))
        audio, _ = sf.read(str(path), start=max(a, 0), stop=max(b, 0), dtype="float32")
        head = np.zeros((max(0, -a),) + audio.shape[1:], np.float32)
        tail = np.zeros((max(0, (b - a) - len(head) - len(audio)),) + audio.shape[1:], np.float32)
        audio = np.concatenate([head, audio, tail])
    if audio.ndim == 2:
        audio = audio.mean(1)
    if rate is not None and rate != info_rate:
        from scipy.signal import resample_poly

        return resample_poly(audio, rate, info_rate).astype(np.float32), rate
    return audio, info_rate
