"""What a file really is, from its bytes: servers and file names lie.

Magic numbers are the fast path (`sniff`); a file they do not place is media when FFmpeg's
demuxer opens it and finds a video or audio stream with a decoder (`sniff_container`), so any
container PyAV reads (FLV, MPEG-PS, M2TS, ...) is accepted without a list to keep up to date.
"""

from __future__ import annotations

import io
from pathlib import Path

import av

# (mime, extension) for media containers emo-forge can decode.
VIDEO = "video"
AUDIO = "audio"


def sniff(head: bytes) -> tuple[str, str, str]:
    """Return (mime, extension, kind) where kind is video / audio / image / text / unknown."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand.startswith(b"qt"):
            return "video/quicktime", ".mov", VIDEO
        if brand in (b"M4A ", b"M4B "):
            return "audio/mp4", ".m4a", AUDIO
        return "video/mp4", ".mp4", VIDEO
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return ("video/webm", ".webm", VIDEO) if b"webm" in head[:64] else ("video/x-matroska", ".mkv", VIDEO)
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video/x-msvideo", ".avi", VIDEO
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav", ".wav", AUDIO
    if head[:4] == b"fLaC":
        return "audio/flac", ".flac", AUDIO
    if head[:4] == b"OggS":
        return "audio/ogg", ".ogg", AUDIO
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio/mpeg", ".mp3", AUDIO
    if len(head) >= 377 and head[0] == 0x47 and head[188] == 0x47 and head[376] == 0x47:
        return "video/mp2t", ".ts", VIDEO
    if len(head) >= 389 and head[4] == 0x47 and head[196] == 0x47 and head[388] == 0x47:
        return "video/mp2t", ".m2ts", VIDEO  # BDAV / AVCHD: a 4-byte time stamp before each TS packet
    if head[:3] == b"FLV" and len(head) > 4 and head[3] == 1:
        return "video/x-flv", ".flv", VIDEO
    if head[:4] == b"\x00\x00\x01\xba":
        return "video/mpeg", ".mpg", VIDEO  # MPEG program stream (DVD, .mpg, .vob)
    if head[:3] == b"\xff\xd8\xff":
        return "image/jpeg", ".jpg", "image"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png", ".png", "image"
    if not head:
        return "application/x-empty", "", "empty"
    text = head.lstrip()[:64].lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")):
        return "text/html", ".html", "text"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream", "", "unknown"
    if text.isprintable() or all(c.isprintable() or c in "\t\r\n" for c in text):
        return "text/plain", ".txt", "text"
    return "application/octet-stream", "", "unknown"  # control bytes (zeros, say): let the demuxer decide


# Demuxers that open bare codec streams or single images: no time stamps, no container to trust.
RAW_FORMATS = {"h264", "hevc", "vvc", "av1", "obu", "m4v", "mpegvideo", "cavsvideo", "vc1", "dirac", "rawvideo",
               "mjpeg", "mjpeg_2000", "image2", "image2pipe", "gif", "apng", "webp_pipe", "tty", "data", "bin"}
MIME = {"flv": ("video/x-flv", ".flv"), "mpeg": ("video/mpeg", ".mpg"), "mpegts": ("video/mp2t", ".ts"),
        "asf": ("video/x-ms-asf", ".wmv"), "rm": ("application/vnd.rn-realmedia", ".rm"),
        "mxf": ("application/mxf", ".mxf"), "nut": ("video/x-nut", ".nut"), "dv": ("video/x-dv", ".dv"),
        "3gp": ("video/3gpp", ".3gp")}
DEMUX_PROBE_BYTES = 1 << 20  # enough for any streaming container's headers and first packets


def sniff_container(data: bytes | Path) -> tuple[str, str, str] | None:
    """(mime, extension, kind) when FFmpeg's demuxer opens these bytes (or this file) and finds a
    decodable video or audio stream; None when it is not media."""
    src = str(data) if isinstance(data, Path) else io.BytesIO(data)
    try:
        with av.open(src, options={"probesize": str(DEMUX_PROBE_BYTES)}) as c:
            name = c.format.name.split(",")[0]
            if name in RAW_FORMATS or name.endswith("_pipe"):
                return None
            video = [s for s in c.streams.video if s.codec_context is not None and s.codec_context.name]
            audio = [s for s in c.streams.audio if s.codec_context is not None and s.codec_context.name]
    except (av.error.FFmpegError, OSError, ValueError):
        return None
    if not video and not audio:
        return None
    mime, ext = MIME.get(name, (f"{'video' if video else 'audio'}/x-{name}", f".{name}"))
    return mime, ext, VIDEO if video else AUDIO
