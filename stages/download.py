"""download: fetch every source into content-addressed storage, probe it, extract its audio.

One input row in, exactly one `sources` row out, ok or not. File names on disk come from
content hashes and input ids, never from the URL or the server.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlparse

import requests
import urllib3

from stages.base import Resources, Stage, StageContext, StageError, temp_sibling
from stages.probe import extract_audio, frames_past_end, probe_media
from stages.sniff import AUDIO, VIDEO, sniff

PLATFORM_HOSTS = re.compile(r"(^|\.)(youtube\.com|youtu\.be|vimeo\.com|tiktok\.com|dailymotion\.com|twitch\.tv)$")
OPT_OUT_TOKENS = ("noai", "noimageai")
CHUNK = 1 << 20
NET_CHUNK = 1 << 16  # most bytes one read returns; a read returns what has arrived, so a drop loses nothing
CLIPPED_FRACTION = 0.01  # audio with more clipped samples than this is counted as clipped


class DownloadStage(Stage):
    name = "download"
    table = "sources"
    resources = Resources(num_cpus=0.5)

    def __init__(
        self,
        max_bytes: int = 8 << 30,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_redirects: int = 10,
        audio_rate: int = 16000,
        link_local: bool = True,
    ):
        """
        max_bytes: refuse sources larger than this.
        connect_timeout_s / read_timeout_s: per HTTP request; a stalled body times out too.
        retries: extra attempts for 5xx, timeouts and dropped connections (never for 4xx).
        backoff_s: first wait between attempts, doubled each time.
        max_redirects: more hops than this is a redirect loop.
        audio_rate: sample rate of the extracted mono wav.
        link_local: hard-link local files into storage when on the same filesystem, else copy.
        """
        self.max_bytes = max_bytes
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_redirects = max_redirects
        self.audio_rate = audio_rate
        self.link_local = link_local
        self.blocked_sha256: list[str] = []  # set by the runner from OUT's opt-out tombstones

    # -- one source ---------------------------------------------------------------------------------

    def process(self, source: dict[str, Any], ctx: StageContext) -> list[dict[str, Any]]:
        row = _input_fields(source)
        if str(source.get("consent") or "").strip().lower() in ("no", "false", "0", "denied", "withdrawn"):
            ctx.count("skipped_consent")
            return [{**row, "status": "skipped", "error": "consent_no: the sources file says consent=no"}]
        try:
            fetched = self._fetch(source["uri"], source["input_id"], ctx)
            row.update(fetched.meta)
            row.update(self._store_and_probe(fetched.path, fetched.is_temp, ctx))
            row["status"] = "ok"
            ctx.count("ok")
        except OptOut as e:
            row.update(e.meta, status="skipped", error=str(e))
            ctx.count("skipped_opt_out")
        except StageError as e:
            row.update(getattr(e, "meta", {}), status="failed", error=str(e))
            ctx.count(f"failed_{e.reason}")
        except Exception as e:  # a bug or an unforeseen input: still one row, still going
            row.update(status="failed", error=f"internal_error: {type(e).__name__}: {e}")
            ctx.count("failed_internal_error")
        return [row]

    def failed_row(self, source: dict[str, Any], error: str) -> dict[str, Any]:
        """The `sources` row of an input that failed outside `process` (the runner gave up on it)."""
        return {**_input_fields(source), "status": "failed", "error": error}

    # -- fetching ------------------------------------------------------------------------------------

    def _fetch(self, uri: str, input_id: str, ctx: StageContext) -> Fetched:
        parsed = urlparse(uri)
        if parsed.scheme in ("http", "https"):
            host = (parsed.hostname or "").lower()
            if PLATFORM_HOSTS.search(host):
                return self._fetch_platform(uri, input_id, ctx)
            return self._fetch_http(uri, input_id, ctx)
        if parsed.scheme == "file":
            return self._fetch_local(Path(unquote(parsed.path)))
        if parsed.scheme in ("", ) or (len(parsed.scheme) == 1 and os.name == "nt"):
            return self._fetch_local(Path(uri).expanduser())
        raise StageError("unsupported_scheme", f"cannot fetch {parsed.scheme!r} URIs")

    def _fetch_local(self, path: Path) -> Fetched:
        if not path.exists():
            raise StageError("not_found", f"no such file: {path}")
        if not path.is_file():
            raise StageError("not_a_file", f"{path} is not a regular file")
        size = path.stat().st_size
        if size > self.max_bytes:
            raise StageError("too_large", f"{size} bytes > cap {self.max_bytes}")
        return Fetched(path=path.resolve(), is_temp=False, meta={"final_url": path.resolve().as_uri(), "redirects": []})

    def _fetch_http(self, uri: str, input_id: str, ctx: StageContext) -> Fetched:
        """GET with redirects followed by hand, retries with backoff, and Range resume of the partial file."""
        part = ctx.path("downloads", f"{input_id}.part")
        session = requests.Session()
        meta: dict[str, Any] = {"final_url": uri, "redirects": []}
        last_error: StageError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                self._download(session, uri, part, meta)
                return Fetched(part, True, meta)
            except Retryable as e:
                last_error = e
                ctx.count("http_retries")
            except StageError as e:
                e.meta = meta
                raise
        assert last_error is not None
        last_error.meta = meta
        raise last_error

    def _request(self, session: requests.Session, url: str, headers: dict[str, str]) -> requests.Response:
        try:
            return session.get(url, allow_redirects=False, stream=True, headers=headers,
                               timeout=(self.connect_timeout_s, self.read_timeout_s))
        except requests.Timeout as e:
            raise Retryable("timeout", f"{url}: {e}") from e
        except requests.ConnectionError as e:
            raise Retryable("connection_error", f"{url}: {e}") from e

    def _download(self, session: requests.Session, uri: str, part: Path, meta: dict[str, Any]) -> None:
        """One attempt: follow redirects (recording every hop), check headers, stream the body into `part`."""
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        url, hops = uri, []
        for _ in range(self.max_redirects + 1):
            resp = self._request(session, url, headers)
            if resp.status_code in (301, 302, 303, 307, 308):
                loc = resp.headers.get("Location")
                resp.close()
                if not loc:
                    raise StageError("bad_redirect", f"{resp.status_code} without Location at {url}")
                url = urljoin(url, loc)
                hops.append(url)
                continue
            break
        else:
            raise StageError("redirect_loop", f"more than {self.max_redirects} redirects from {uri}")
        meta.update(final_url=url, redirects=hops)
        with resp:
            robots = resp.headers.get("X-Robots-Tag", "").lower()
            if any(t in re.split(r"[\s,:;]+", robots) for t in OPT_OUT_TOKENS):
                raise OptOut(f"opt_out: X-Robots-Tag: {robots}", meta)  # the body is never read
            if resp.status_code == 416 and have:  # the partial file is already whole
                return
            if resp.status_code >= 500 or resp.status_code == 429:
                raise Retryable(f"http_{resp.status_code}", f"{url} answered {resp.status_code}")
            if resp.status_code >= 400:
                raise StageError(f"http_{resp.status_code}", f"{url} answered {resp.status_code} {resp.reason}")
            if resp.status_code != 206:
                have = 0
            length = resp.headers.get("Content-Length", "")
            expected = have + int(length) if length.isdigit() else None
            if expected is not None and expected > self.max_bytes:
                raise StageError("too_large", f"{expected} bytes > cap {self.max_bytes}")
            with open(part, "ab" if have else "wb") as fh:
                try:
                    for chunk in _as_it_arrives(resp):
                        fh.write(chunk)
                        if fh.tell() > self.max_bytes:
                            raise StageError("too_large", f"body passed the cap of {self.max_bytes} bytes")
                except BODY_ERRORS as e:
                    if _timed_out(e):
                        raise Retryable("timeout", f"no byte for {self.read_timeout_s:g} s after {fh.tell()} bytes "
                                        f"of {url}") from e
                    raise Retryable("truncated", f"body ended early after {fh.tell()} bytes: {e}") from e
                got = fh.tell()
        if expected is not None and got < expected:
            raise Retryable("truncated", f"got {got} of {expected} bytes")

    def _fetch_platform(self, uri: str, input_id: str, ctx: StageContext) -> Fetched:
        try:
            import yt_dlp  # optional extra: pip install 'emo-forge[platforms]'
        except ImportError:
            raise StageError("yt_dlp_missing", f"{uri} is a platform URL; install yt-dlp "
                             "(pip install 'emo-forge[platforms]') to fetch it") from None
        target = ctx.path("downloads", f"{input_id}.platform")
        opts = {"outtmpl": str(target), "format": "best[ext=mp4]/best", "quiet": True, "noplaylist": True}
        try:
            with yt_dlp.YoutubeDL(opts) as ydl:
                info = ydl.extract_info(uri, download=True)
        except Exception as e:
            raise StageError("platform_error", f"yt-dlp: {e}") from e
        return Fetched(target, True, {"final_url": info.get("webpage_url", uri), "redirects": []})

    # -- storing and probing -------------------------------------------------------------------------

    def _store_and_probe(self, path: Path, is_temp: bool, ctx: StageContext) -> dict[str, Any]:
        with open(path, "rb") as fh:
            head = fh.read(4096)
        mime, ext, kind = sniff(head)
        if kind == "empty":
            raise StageError("empty_file", "zero bytes")
        if kind not in (VIDEO, AUDIO):
            raise StageError("not_media", f"content is {mime}, not a video")
        sha, size = _sha256(path)
        if sha in self.blocked_sha256:
            if is_temp:
                path.unlink()
            raise OptOut("opted_out: this content was removed at its owner's request", {})
        rel = f"media/{sha[:2]}/{sha}{ext}"
        dest = ctx.path(rel)
        if not dest.exists():
            tmp = temp_sibling(dest)
            if is_temp:
                os.replace(path, tmp)
            elif self.link_local:
                try:
                    os.link(path, tmp)
                except OSError:
                    shutil.copyfile(path, tmp)
            else:
                shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        elif is_temp:
            path.unlink()
        meta: dict[str, Any] = {"sha256": sha, "bytes": size, "mime": mime, "source_id": sha[:16], "media_path": rel}
        meta.update(probe_media(dest))
        if missing := frames_past_end(dest):
            ctx.count("frames_past_end", missing)
        if meta["has_audio"]:
            wav = ctx.path("audio", f"{sha[:16]}.wav")
            if not wav.exists():
                audio = extract_audio(dest, wav, self.audio_rate)
                if audio["corrupt_packets"]:
                    ctx.count("audio_corrupt_packets", audio["corrupt_packets"])
                if audio["clipped_fraction"] > CLIPPED_FRACTION:
                    ctx.count("audio_clipped")
            meta["audio_path"] = ctx.rel(wav)
        return meta


# What a body read raises when the connection drops or stalls: requests' wrappers or urllib3's own.
BODY_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
               urllib3.exceptions.HTTPError)


def _as_it_arrives(resp: requests.Response) -> Iterator[bytes]:
    """The body in pieces as they arrive. `read1` hands over whatever the socket has, so the bytes that
    came before a dropped connection are kept for the Range resume (a fixed-size read loses them)."""
    read1 = getattr(resp.raw, "read1", None)
    if read1 is None:
        yield from resp.iter_content(NET_CHUNK)
        return
    while chunk := read1(NET_CHUNK, decode_content=True):
        yield chunk


def _timed_out(e: BaseException) -> bool:
    """True when a body read failed because no byte came within the read timeout."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (requests.Timeout, urllib3.exceptions.ReadTimeoutError, TimeoutError)):
            return True
        inner = [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
        e = inner[0] if inner else e.__cause__ or e.__context__
    return False


class Fetched:
    def __init__(self, path: Path, is_temp: bool, meta: dict[str, Any]):
        self.path, self.is_temp, self.meta = path, is_temp, meta


class Retryable(StageError):
    """A failure worth another attempt (5xx, timeouts, dropped connections)."""


class OptOut(Exception):
    def __init__(self, message: str, meta: dict[str, Any]):
        super().__init__(message)
        self.meta = meta


def _input_fields(source: dict[str, Any]) -> dict[str, Any]:
    row = {k: source.get(k) for k in ("input_id", "uri", "license", "consent", "category", "title",
                                      "language", "notes", "meta")}
    row["fetched_at"] = datetime.now(UTC)
    return row


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n
