"""One HTTP(S) download into a partial file under OUT: redirects by hand, retries, and a checked Range resume.

Limits (DownloadStage's arguments): `read_timeout_s` ends a stall (no byte for that long);
`max_bytes` caps the decoded body (a gzip bomb counts what it expands to); a body that trickles
just fast enough to dodge the read timeout is ended by the pipeline's `download_timeout_s`.
The first MiB is checked as it lands, so a body that is plainly not media stops there.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from manifests.redact import redact_uri
from stages.base import StageContext, StageError
from stages.media.sniff import AUDIO, DEMUX_PROBE_BYTES, VIDEO, sniff, sniff_container

OPT_OUT_TOKENS = ("noai", "noimageai")
NET_CHUNK = 1 << 16  # most bytes one read returns; a read returns what has arrived, so a drop loses nothing
REDIRECTS = (301, 302, 303, 307, 308)
# What a body read raises when the connection drops or stalls: requests' wrappers or urllib3's own.
BODY_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
               urllib3.exceptions.HTTPError)
BAD_ENCODING = (requests.exceptions.ContentDecodingError, urllib3.exceptions.DecodeError)


class Retryable(StageError):
    """A failure worth another attempt (5xx, timeouts, dropped connections)."""


class OptOut(Exception):
    def __init__(self, message: str, meta: dict[str, Any]):
        super().__init__(message)
        self.meta = meta


class HttpFetch:
    """Fetch `uri` into `part`; `meta` holds final_url and redirects (unredacted: the caller redacts)."""

    def __init__(self, stage: Any, uri: str, part: Path, ctx: StageContext):
        self.s, self.uri, self.part, self.ctx = stage, uri, part, ctx
        self.meta: dict[str, Any] = {"final_url": uri, "redirects": []}
        self.total: int | None = None  # the whole file's length, once a server has announced it
        self.resumable = True  # False once the body came content-encoded: byte offsets are not ours then
        self.session = requests.Session()

    def run(self) -> dict[str, Any]:
        last: StageError | None = None
        for attempt in range(self.s.retries + 1):
            if attempt:
                time.sleep(self.s.backoff_s * 2 ** (attempt - 1))
            try:
                self._attempt()
                return self.meta
            except Retryable as e:
                last = e
                self.ctx.count("http_retries")
        assert last is not None
        raise last

    def _request(self, url: str, headers: dict[str, str]) -> requests.Response:
        try:
            return self.session.get(url, allow_redirects=False, stream=True, headers=headers,
                                    timeout=(self.s.connect_timeout_s, self.s.read_timeout_s))
        except requests.Timeout as e:
            raise Retryable("timeout", f"{redact_uri(url)}: {e}") from e
        except requests.ConnectionError as e:
            raise Retryable("connection_error", f"{redact_uri(url)}: {e}") from e
        except requests.exceptions.InvalidURL as e:
            raise StageError("bad_url", f"{redact_uri(url)}: {e}") from e

    def _follow(self, headers: dict[str, str]) -> requests.Response:
        """The response at the end of the redirects, each hop recorded; only http(s) hops are followed."""
        url, hops = self.uri, []
        for _ in range(self.s.max_redirects + 1):
            resp = self._request(url, headers)
            if resp.status_code not in REDIRECTS:
                self.meta.update(final_url=url, redirects=hops)
                return resp
            loc = resp.headers.get("Location")
            resp.close()
            if not loc:
                raise StageError("bad_redirect", f"{resp.status_code} without Location at {redact_uri(url)}")
            url = urljoin(url, loc.strip())
            scheme = urlsplit(url).scheme.lower()
            if scheme not in ("http", "https"):
                raise StageError("bad_redirect", f"{resp.status_code} to a {scheme or 'relative'}: URL "
                                 f"({redact_uri(url)}); only http(s) redirects are followed")
            hops.append(url)
        raise StageError("redirect_loop", f"more than {self.s.max_redirects} redirects from {redact_uri(self.uri)}")

    def _attempt(self, restarted: bool = False) -> None:
        """One try: resume from what `part` holds when the server answers the Range as asked, else restart."""
        have = self.part.stat().st_size if self.part.exists() and self.resumable else 0
        resp = self._follow({"Range": f"bytes={have}-", "Accept-Encoding": "identity"} if have else {})
        with resp:
            code, url = resp.status_code, redact_uri(self.meta["final_url"])
            robots = resp.headers.get("X-Robots-Tag", "").lower()
            if any(t in re.split(r"[\s,:;]+", robots) for t in OPT_OUT_TOKENS):
                raise OptOut(f"opt_out: X-Robots-Tag: {robots}", self.meta)  # the body is never read
            whole = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", resp.headers.get("Content-Range", ""))
            if code == 416 and have and have == (int(whole[1]) if whole else self.total):  # already whole
                return
            if code >= 500 or code == 429:
                raise Retryable(f"http_{code}", f"{url} answered {code}")
            if code >= 400 and not (code == 416 and have):
                raise StageError(f"http_{code}", f"{url} answered {code} {resp.reason}")
            if code == 206 and not have:
                raise StageError("unasked_partial", f"{url} answered 206 Partial Content to a request for the whole file")
            if (code == 206 and not self._range_ok(resp, have)) or code == 416:
                if restarted:
                    raise Retryable("bad_range", f"{url} answered a Range request with other bytes than asked, twice")
                resp.close()
                self.part.unlink(missing_ok=True)  # never splice: start again from byte 0
                self.ctx.count("range_restarts")
                return self._attempt(restarted=True)
            if code not in (200, 206):
                raise StageError(f"http_{code}", f"{url} answered {code} {resp.reason}, not a file")
            self._body(resp, have if code == 206 else 0, url)

    def _range_ok(self, resp: requests.Response, have: int) -> bool:
        """True when a 206's Content-Range starts where we asked and agrees with the length seen before."""
        m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", resp.headers.get("Content-Range", ""))
        if not m or int(m[1]) != have:
            return False
        total = int(m[3]) if m[3] != "*" else None
        if total is not None and self.total is not None and total != self.total:
            return False
        self.total = total or self.total
        return True

    def _body(self, resp: requests.Response, have: int, url: str) -> None:
        encoded = resp.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
        self.resumable = not encoded
        length = resp.headers.get("Content-Length", "")
        if resp.status_code == 200 and length.isdigit() and not encoded:
            self.total = int(length)
        if self.total is not None and self.total > self.s.max_bytes:
            raise StageError("too_large", f"{self.total} bytes > cap {self.s.max_bytes}")
        checked = have >= DEMUX_PROBE_BYTES
        with open(self.part, "ab" if have else "wb") as fh:
            try:
                for chunk in _as_it_arrives(resp):
                    fh.write(chunk)
                    if fh.tell() > self.s.max_bytes:
                        raise StageError("too_large", f"the body passed the cap of {self.s.max_bytes} bytes "
                                         "(decoded; DownloadStage max_bytes)")
                    if not checked and fh.tell() >= DEMUX_PROBE_BYTES:
                        fh.flush()
                        check_media_head(self.part)
                        checked = True
            except BAD_ENCODING as e:
                raise StageError("bad_encoding", f"{url} says Content-Encoding: "
                                 f"{resp.headers.get('Content-Encoding')} but the body does not decode as that") from e
            except BODY_ERRORS as e:
                if _timed_out(e):
                    raise Retryable("timeout", f"no byte for {self.s.read_timeout_s:g} s after {fh.tell()} bytes "
                                    f"of {url}") from e
                raise Retryable("truncated", f"the body ended early after {fh.tell()} bytes: {type(e).__name__}") from e
            got = fh.tell()
        if self.total is not None and got != self.total:
            if got > self.total:  # more than announced: the pieces do not belong together
                self.part.unlink(missing_ok=True)
                raise Retryable("length_mismatch", f"got {got} bytes where {self.total} were announced")
            raise Retryable("truncated", f"got {got} of {self.total} bytes")


def check_media_head(path: Path) -> None:
    """Raise not_media when the first MiB of a download is plainly not a media file."""
    with open(path, "rb") as fh:
        head = fh.read(DEMUX_PROBE_BYTES)
    mime, _, kind = sniff(head[:4096])
    if kind in (VIDEO, AUDIO):
        return
    if kind == "unknown" and sniff_container(head) is not None:
        return
    raise StageError("not_media", f"the first {len(head)} bytes are {mime}, not a media container")


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
