"""What a file really is, from its first bytes: servers and file names lie."""

from __future__ import annotations

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
        head.decode("utf-8")
        return "text/plain", ".txt", "text"
    except UnicodeDecodeError:
        return "application/octet-stream", "", "unknown"
