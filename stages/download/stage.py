"""download: fetch every source into content-addressed storage, probe it, extract its audio.

One input row in, exactly one `sources` row out, ok or not. File names on disk come from
content hashes and input ids, never from the URL or the server. Every input is first copied
under OUT/downloads (a reflink where the filesystem has them), then checked, hashed and probed,
and only then moved into media/: OUT never changes when the user's files do, and a failed input
leaves nothing behind but its rows. The stored `uri`, `final_url`, `redirects` and `error` never
hold a credential (manifests/redact.py). Inputs on object storage (s3://, gs://, any fsspec URI)
are fetched by stages/download/object_store.py with the settings an OUT on that store uses.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from manifests.hashing import sha256_file
from manifests.redact import redact_uri, scrub
from manifests.sources import INPUT_COLUMNS, source_row
from stages.base import Resources, Stage, StageContext, StageError
from stages.download.http import HttpFetch, OptOut, Retryable  # noqa: F401  (Retryable: part of this stage's API)
from stages.download.object_store import fetch_object
from stages.media.probe import extract_audio, frames_past_end, probe_media
from stages.media.sniff import AUDIO, VIDEO, sniff, sniff_container

PLATFORM_HOSTS = re.compile(r"(^|\.)(youtube\.com|youtu\.be|vimeo\.com|tiktok\.com|dailymotion\.com|twitch\.tv)$")
CHUNK = 1 << 20
CLIPPED_FRACTION = 0.01  # audio with more clipped samples than this is counted as clipped
FICLONE = 0x40049409  # Linux ioctl: share the source's blocks copy-on-write (btrfs, XFS, bcachefs)
TEMP_SUFFIXES = (".part", ".local", ".platform")
URL_SCHEMES = ("http", "https", "file")


class DownloadStage(Stage):
    name = "download"
    writes = ("sources",)
    resources = Resources(num_cpus=0.5)
    # New limits (size cap, timeouts, retries) may rescue an input that failed, so its failure is
    # retried; an ok input is known by its bytes' sha256 and is not fetched again because a limit
    # changed. (A new audio_rate therefore reaches only new inputs.)
    stale_with_other_settings = frozenset({"failed"})

    def __init__(
        self,
        max_bytes: int = 4 << 30,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_redirects: int = 10,
        audio_rate: int = 16000,
    ):
        """
        max_bytes: refuse sources larger than this (decoded bytes: a compressed body counts what it expands to).
        connect_timeout_s / read_timeout_s: per HTTP request; a body that stalls this long times out too.
        retries: extra attempts for 5xx, timeouts and dropped connections (never for 4xx).
        backoff_s: first wait between attempts, doubled each time.
        max_redirects: more hops than this is a redirect loop.
        audio_rate: sample rate of the extracted mono wav.
        """
        self.max_bytes = max_bytes
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_redirects = max_redirects
        self.audio_rate = audio_rate

    # -- one source ---------------------------------------------------------------------------------

    def process(self, source: dict[str, Any], ctx: StageContext) -> list[dict[str, Any]]:
        given, fetched_at = _input_fields(source), datetime.now(UTC)
        uri, iid = source["uri"], source["input_id"]
        if source.get("input_error"):
            ctx.count("failed_bad_row")
            return [source_row(given, "failed", source["input_error"], fetched_at)]
        if str(source.get("consent") or "").strip().lower() in ("no", "false", "0", "denied", "withdrawn"):
            ctx.count("skipped_consent")
            return [source_row(given, "skipped", "consent_no: the sources file says consent=no", fetched_at)]
        meta: dict[str, Any] = {}
        fetch = content = None
        try:
            path, meta = self._fetch(uri, iid, ctx)
            fetch = meta
            content = self._store_and_probe(path, ctx)
            status, error = "ok", None
            ctx.count("ok")
        except OptOut as e:
            fetch, status, error = {**meta, **e.meta}, "skipped", str(e)
            ctx.count("skipped_opt_out")
        except StageError as e:
            fetch, status, error = {**meta, **getattr(e, "meta", {})}, "failed", str(e)
            ctx.count(f"failed_{e.reason}")
        except Exception as e:  # a bug or an unforeseen input: still one row, still going
            status, error = "failed", f"internal_error: {type(e).__name__}: {e}"
            ctx.count("failed_internal_error")
        finally:
            self.discard(iid, ctx)
        # Error texts quote URLs (requests puts them in its exceptions): no secret of any hop survives.
        error = scrub(error, uri, meta.get("final_url"), *(meta.get("redirects") or []))
        return [source_row(given, status, error, fetched_at, fetch=None if fetch is None else _redacted(fetch), content=content)]

    def failed_row(self, source: dict[str, Any], error: str) -> dict[str, Any]:
        """The `sources` row of an input that failed outside `process` (the runner gave up on it)."""
        return source_row(_input_fields(source), "failed", scrub(error, source.get("uri")), datetime.now(UTC))

    def discard(self, input_id: str, ctx: StageContext) -> None:
        """Remove this input's temporary files under OUT/downloads (whatever the outcome)."""
        for suffix in TEMP_SUFFIXES:
            (ctx.out / "downloads" / f"{input_id}{suffix}").unlink(missing_ok=True)

    # -- fetching into OUT/downloads -----------------------------------------------------------------

    def _fetch(self, uri: str, input_id: str, ctx: StageContext) -> tuple[Path, dict[str, Any]]:
        parsed = urlparse(uri) if "\x00" not in uri else urlparse("")
        scheme = parsed.scheme.lower()
        if scheme not in URL_SCHEMES and _exists(Path(uri)):  # an existing file wins over a guessed scheme
            return self._fetch_local(Path(uri), input_id, ctx)
        if scheme in ("http", "https"):
            if PLATFORM_HOSTS.search((parsed.hostname or "").lower()):
                return self._fetch_platform(uri, input_id, ctx)
            part = ctx.path("downloads", f"{input_id}.part")
            fetch = HttpFetch(self, uri, part, ctx)
            try:
                return part, fetch.run()
            except StageError as e:
                e.meta = fetch.meta
                raise
        if scheme == "file":
            return self._fetch_local(Path(unquote(parsed.path)), input_id, ctx)
        if scheme == "" or (len(scheme) == 1 and os.name == "nt"):
            return self._fetch_local(Path(uri).expanduser(), input_id, ctx)
        if "://" in uri:  # s3://, gs://, any fsspec URI: the store OUT would use, with the same caps
            part = ctx.path("downloads", f"{input_id}.part")
            return part, fetch_object(uri, part, self.max_bytes)
        raise StageError("unsupported_scheme", f"cannot fetch {scheme!r} URIs")

    def _fetch_local(self, path: Path, input_id: str, ctx: StageContext) -> tuple[Path, dict[str, Any]]:
        """A copy of the file under OUT (a reflink where possible), so OUT never changes with the original."""
        try:
            st = path.stat()
        except OSError as e:
            raise _local_error(path, e) from None
        if not stat.S_ISREG(st.st_mode):
            raise StageError("not_a_file", f"{path} is not a regular file")
        if st.st_size > self.max_bytes:
            raise StageError("too_large", f"{st.st_size} bytes > cap {self.max_bytes}")
        tmp = ctx.path("downloads", f"{input_id}.local")
        try:
            _clone_or_copy(path, tmp, self.max_bytes)
        except OSError as e:
            raise _local_error(path, e) from None
        try:
            final = path.resolve()
        except (OSError, RuntimeError):
            final = path.absolute()
        return tmp, {"final_url": final.as_uri(), "redirects": []}

    def _fetch_platform(self, uri: str, input_id: str, ctx: StageContext) -> tuple[Path, dict[str, Any]]:
        try:
            import yt_dlp  # optional extra: pip install 'emo-forge[platforms]'
        except ImportError:
            raise StageError("yt_dlp_missing", f"{redact_uri(uri)} is a platform URL; install yt-dlp "
                             "(pip install 'emo-forge[platforms]') to fetch it") from None
        target = ctx.path("downloads", f"{input_id}.platform")
        opts = {"outtmpl": str(target), "format": "best[ext=mp4]/best", "quiet": True, "noplaylist": True}
        try:
            with yt_dlp.YoutubeDL(opts) as ydl:
                info = ydl.extract_info(uri, download=True)
        except Exception as e:
            raise StageError("platform_error", f"yt-dlp: {e}") from e
        return target, {"final_url": info.get("webpage_url", uri), "redirects": []}

    # -- checking, storing and probing ---------------------------------------------------------------

    def _store_and_probe(self, path: Path, ctx: StageContext) -> dict[str, Any]:
        """Check, hash and probe the temporary copy; only a usable file is moved into media/."""
        with open(path, "rb") as fh:
            head = fh.read(4096)
        mime, ext, kind = sniff(head)
        if kind == "empty":
            raise StageError("empty_file", "zero bytes")
        if kind == "unknown" and (found := sniff_container(path)):  # magic numbers are only the fast path
            mime, ext, kind = found
        if kind not in (VIDEO, AUDIO):
            raise StageError("not_media", f"content is {mime}, not a media container")
        sha, size = sha256_file(path), path.stat().st_size
        if sha in ctx.blocked_sha256:
            raise OptOut("opted_out: this content was removed at its owner's request", {})
        meta: dict[str, Any] = {"sha256": sha, "bytes": size, "mime": mime, "source_id": sha[:16]}
        meta.update(probe_media(path))
        if missing := frames_past_end(path):
            ctx.count("frames_past_end", missing)
        rel = f"media/{sha[:2]}/{sha}{ext}"
        dest = ctx.path(rel)
        created = not dest.exists()
        if created:
            os.replace(path, dest)
        meta["media_path"] = rel
        if meta["has_audio"]:
            wav = ctx.path("audio", f"{sha[:16]}.wav")
            try:
                if not wav.exists():
                    audio = extract_audio(dest, wav, self.audio_rate)
                    if audio["corrupt_packets"]:
                        ctx.count("audio_corrupt_packets", audio["corrupt_packets"])
                    if audio["clipped_fraction"] > CLIPPED_FRACTION:
                        ctx.count("audio_clipped")
            except BaseException:
                if created:  # a failed input leaves nothing
                    dest.unlink(missing_ok=True)
                raise
            meta["audio_path"] = ctx.rel(wav)
        else:
            meta["audio_path"] = None
        return meta


def _exists(p: Path) -> bool:
    try:
        return p.exists() or p.is_symlink()
    except (OSError, ValueError):
        return False


def _local_error(path: Path, e: OSError) -> StageError:
    """A reason code for what the filesystem said about a local path."""
    reasons = {errno.ENOENT: "not_found", errno.ENOTDIR: "not_found", errno.ELOOP: "not_found",
               errno.ENAMETOOLONG: "name_too_long", errno.EACCES: "permission_denied", errno.EPERM: "permission_denied"}
    reason = reasons.get(e.errno, "unreadable")
    if reason == "name_too_long":
        return StageError(reason, f"a file name in the path is longer than this filesystem allows "
                          f"({max(len(part.encode()) for part in path.parts)} bytes)")
    text = "no such file" if reason == "not_found" else (e.strerror or type(e).__name__)
    return StageError(reason, f"{text}: {path}")


def _clone_or_copy(src: Path, dst: Path, max_bytes: int) -> None:
    """A reflink of `src` where the filesystem can (instant, no shared writes), else a byte copy.

    Never a hard link: editing the original in place would change OUT's copy too. The copy reads to
    the end whatever the size said (a /proc file says 0) and stops at the cap.
    """
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        try:
            fcntl.ioctl(fo.fileno(), FICLONE, fi.fileno())
            return
        except OSError:
            pass
        n = 0
        while chunk := fi.read(CHUNK):
            n += len(chunk)
            if n > max_bytes:
                raise StageError("too_large", f"more than the cap of {max_bytes} bytes")
            fo.write(chunk)


def _redacted(meta: dict[str, Any]) -> dict[str, Any]:
    """The fetch's columns of a `sources` row, with no credential in a URL."""
    redirects = meta.get("redirects")
    return {"final_url": redact_uri(meta.get("final_url")),
            "redirects": [redact_uri(u) for u in redirects] if redirects else redirects}


def _input_fields(source: dict[str, Any]) -> dict[str, Any]:
    """The input's columns of a `sources` row (its URI redacted)."""
    given = {k: source.get(k) for k in INPUT_COLUMNS}
    given["uri"] = redact_uri(given["uri"]) or ""
    return given


