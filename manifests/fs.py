"""Where OUT lives: a local folder or a URI on any pyarrow / fsspec filesystem (s3://, gs://, ...).

`Location` is the one place that knows the difference. Paths inside it are always relative,
'/'-separated names ("manifests/sources/abc.parquet"). A write is whole or absent: a local file
is written to a hidden temporary name and renamed; an object is first written whole to a local
temporary file and then uploaded in one native call, which S3-compatible stores make visible
all at once. (Writing straight into the store's output stream committed a partial or empty
object when an exception, such as a worker's SIGTERM, left the `with` block half way.)

S3 settings come from the standard environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN, AWS_PROFILE, AWS_DEFAULT_REGION (or AWS_REGION), instance roles, and
AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for S3-compatible stores (MinIO, R2, Ceph, moto).
`emo curate --endpoint-url` sets AWS_ENDPOINT_URL for the run and its workers.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

import pyarrow.fs as pafs

# What a Ray worker needs to reach the same store as the driver. Keys set in the driver's
# environment travel in the job's runtime env (visible to whoever can read the cluster's jobs);
# on a cloud cluster leave them unset and give the nodes an instance role instead.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_uri(target: str | os.PathLike) -> bool:
    """True for 'scheme://...' other than file://; a plain path is local."""
    m = _SCHEME.match(str(target))
    return bool(m) and m.group(1).lower() != "file"


def _s3_filesystem() -> pafs.S3FileSystem:
    """The S3 client for the current settings, one per process and settings: building one costs
    ~17 ms and its connections are reused, which a Ray task that opens OUT per source would lose."""
    return _s3_client(*(os.environ.get(k) for k in FORWARDED_ENV))


@functools.lru_cache(maxsize=8)
def _s3_client(*settings: str | None) -> pafs.S3FileSystem:
    env = dict(zip(FORWARDED_ENV, settings, strict=True))
    kwargs: dict = {"allow_delayed_open": True}  # small objects go up as one PutObject, not a multipart upload
    endpoint = env["AWS_ENDPOINT_URL_S3"] or env["AWS_ENDPOINT_URL"]
    if endpoint:
        u = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=u.netloc, scheme=u.scheme or "https")
    region = env["AWS_DEFAULT_REGION"] or env["AWS_REGION"]
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)  # keys, token and profile: read from the environment named above


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, root path inside it) for a URI; an unknown scheme is a ValueError naming it."""
    scheme = _SCHEME.match(uri).group(1).lower()
    rest = uri.split("://", 1)[1].strip("/")
    if not rest:
        raise ValueError(f"{uri!r}: no bucket or path after the scheme")
    if scheme in ("s3", "s3a"):
        return _s3_filesystem(), rest
    if scheme in ("gs", "gcs"):
        return pafs.GcsFileSystem(), rest
    try:  # anything fsspec knows (az://, abfs://, hdfs://, memory://, ...), when its package is installed
        import fsspec

        fs = fsspec.filesystem(scheme)
    except (ImportError, ValueError) as e:
        raise ValueError(f"{uri!r}: this installation cannot serve {scheme}:// ({e}); "
                         "use a local path, s3://, gs://, or install the fsspec package for it") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), rest


class Location:
    """A folder (local) or prefix (object store) and the filesystem it is on."""

    def __init__(self, target: str | os.PathLike):
        target = str(target)
        self.local = not is_uri(target)
        if self.local:
            path = Path(target.removeprefix("file://")).resolve()
            self.fs, self.root, self.uri = pafs.LocalFileSystem(), path.as_posix(), str(path)
        else:
            self.fs, self.root = filesystem(target)
            self.uri = target.rstrip("/")

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    @property
    def path(self) -> Path:
        """The local folder; a location on object storage has none."""
        if not self.local:
            raise ValueError(f"{self.uri} is on object storage: this needs a local folder (or a local mirror)")
        return Path(self.root)

    def full(self, rel: str) -> str:
        rel = rel.strip("/")
        return f"{self.root}/{rel}" if rel else self.root

    def child_uri(self, rel: str) -> str:
        return f"{self.uri}/{rel.strip('/')}"

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.full(rel)).type == pafs.FileType.File

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.full(rel)) as fh:
            return fh.read()

    def read_text(self, rel: str, default: str | None = None) -> str:
        try:
            return self.read_bytes(rel).decode()
        except FileNotFoundError:
            if default is None:
                raise
            return default

    def write(self, rel: str, fill: Callable[[IO[bytes]], None]) -> None:
        """Write one file whole: fill(fh) writes its bytes; a crash leaves no partial file under `rel`."""
        if self.local:
            final = Path(self.full(rel))
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            try:
                with open(tmp, "wb") as fh:
                    fill(fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
            return
        with tempfile.TemporaryDirectory(prefix="emo-put-") as tmp:
            staged = Path(tmp) / "object"
            with open(staged, "wb") as fh:
                fill(fh)
            self._upload(staged, rel)

    def _upload(self, local: Path, rel: str) -> None:
        """One native call opens, writes and closes the object: a Python signal handler cannot raise
        between its open and its last byte, and a killed process completes no PUT."""
        pafs.copy_files(Path(local).as_posix(), self.full(rel), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs, use_threads=False)

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.write(rel, lambda fh: fh.write(data))

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def put_file(self, local: Path, rel: str) -> None:
        if not self.local:
            self._upload(local, rel)
            return
        with open(local, "rb") as src:
            self.write(rel, lambda fh: shutil.copyfileobj(src, fh, 1 << 20))

    def get_file(self, rel: str, local: Path) -> None:
        """Copy one file to a local path (whole: via a temporary name)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.get-{uuid.uuid4().hex[:8]}")
        try:
            with self.fs.open_input_stream(self.full(rel)) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, rel: str) -> bool:
        """Delete one file; False when there was none."""
        try:
            self.fs.delete_file(self.full(rel))
            return True
        except FileNotFoundError:
            return False

    def files(self, rel: str = "", recursive: bool = True) -> list[pafs.FileInfo]:
        """Files (not folders, not hidden temporaries) under `rel`; [] when it does not exist."""
        sel = pafs.FileSelector(self.full(rel), recursive=recursive, allow_not_found=True)
        return [f for f in self.fs.get_file_info(sel) if f.type == pafs.FileType.File and not f.base_name.startswith(".")]

    def rel(self, info: pafs.FileInfo) -> str:
        return info.path[len(self.root) + 1:]

    def delete_tree(self, rel: str) -> int:
        """Delete every file under `rel`; the number deleted."""
        found = self.files(rel)
        for f in found:
            self.fs.delete_file(f.path)
        if self.local and Path(self.full(rel)).is_dir():
            shutil.rmtree(self.full(rel))
        return len(found)
