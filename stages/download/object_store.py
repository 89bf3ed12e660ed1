"""One object-store download (s3://, gs://, any fsspec URI) into a partial file under OUT.

The store is reached with the same settings as an OUT on it (manifests/fs.py: AWS_* from the
environment, AWS_ENDPOINT_URL for S3-compatible stores). The same rules as HTTP: the object's
listed size is checked against the cap before a byte is read, the body is capped again as it
arrives (a listing can be wrong), and the first MiB must look like media or the read stops there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from manifests.fs import filesystem
from manifests.redact import redact_uri
from stages.base import StageError
from stages.media.sniff import DEMUX_PROBE_BYTES

CHUNK = 1 << 20
# Not object stores: plain-text credentials and no listing we trust for the size cap; refused by name.
REFUSED_SCHEMES = ("ftp", "ftps")


def fetch_object(uri: str, part: Path, max_bytes: int) -> dict[str, Any]:
    """Copy the object at `uri` into `part`; the meta a download row keeps (final_url, redirects)."""
    from stages.download.http import check_media_head  # the same first-MiB rule as an HTTP body

    shown = redact_uri(uri)
    scheme = uri.split("://", 1)[0].lower()
    if scheme in REFUSED_SCHEMES:
        raise StageError("unsupported_scheme", f"cannot fetch {scheme!r} URIs")
    try:
        fs, path = filesystem(uri)
    except ValueError as e:
        raise StageError("unsupported_scheme", str(e)) from None
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise StageError("not_found", f"no such object: {shown}")
        if info.type != pafs.FileType.File:
            raise StageError("not_a_file", f"{shown} is a prefix (a folder), not an object")
        if info.size is not None and info.size > max_bytes:
            raise StageError("too_large", f"{info.size} bytes > cap {max_bytes}")
        _copy(fs, path, part, max_bytes, check_media_head)
    except StageError:
        raise
    except FileNotFoundError:
        raise StageError("not_found", f"no such object: {shown}") from None
    except PermissionError as e:
        raise StageError("permission_denied", f"{shown}: {e}") from None
    except OSError as e:  # pyarrow's S3 errors (access denied, no such bucket, unreachable) are OSErrors
        reason = "permission_denied" if "ACCESS_DENIED" in str(e).upper() else "object_store_error"
        raise StageError(reason, f"{shown}: {e}") from None
    return {"final_url": uri, "redirects": []}


def _copy(fs: pafs.FileSystem, path: str, part: Path, max_bytes: int, check_head) -> None:
    n, checked = 0, False
    with fs.open_input_stream(path) as src, open(part, "wb") as dst:
        while chunk := src.read(CHUNK):
            n += len(chunk)
            if n > max_bytes:
                raise StageError("too_large", f"the object passed the cap of {max_bytes} bytes")
            dst.write(chunk)
            if not checked and n >= DEMUX_PROBE_BYTES:
                dst.flush()
                check_head(part)
                checked = True
