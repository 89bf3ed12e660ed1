"""Reading what the user points emo-forge at: a CSV, JSONL or Parquet sources file, or a folder."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.parquet as pq

from manifests.sources import SOURCE_FILE_COLUMNS


class SourcesFileError(ValueError):
    """The sources file itself is unusable (not a per-source problem)."""


def input_id(uri: str) -> str:
    """The resume key of one input: a hash of its normalised URI."""
    return hashlib.sha1(uri.strip().encode()).hexdigest()[:16]


def _normalise_uri(uri: str, base: Path) -> str:
    uri = uri.strip()
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https", "file") or (scheme and len(scheme) > 1):
        return uri
    p = Path(uri).expanduser()
    return _absolute(p if p.is_absolute() else base / p)


def _absolute(p: Path) -> str:
    """The resolved path; a symlink loop stays as written (absolute) for the download to fail on, with its row."""
    try:
        return str(p.resolve())
    except (RuntimeError, OSError):
        return os.path.normpath(os.path.abspath(p))


def _row(raw: dict[str, Any], base: Path, where: str) -> dict[str, Any]:
    uri = raw.get("uri")
    if uri is None or not str(uri).strip():
        raise SourcesFileError(f"{where}: the required column 'uri' is empty")
    row: dict[str, Any] = {k: (None if raw.get(k) in (None, "") else str(raw.get(k))) for k in SOURCE_FILE_COLUMNS}
    row["uri"] = _normalise_uri(str(uri), base)
    extra = {k: v for k, v in raw.items() if k not in SOURCE_FILE_COLUMNS and v not in (None, "")}
    row["meta"] = json.dumps(extra, sort_keys=True, default=str) if extra else None
    row["input_id"] = input_id(row["uri"])
    return row


def read_sources(path: str | Path) -> list[dict[str, Any]]:
    """Input rows (uri, license, consent, category, title, language, notes, meta, input_id), deduplicated by URI."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SourcesFileError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts))
        raws = [{"uri": _absolute(p), "title": p.name} for p in files]
        where = [f"{path}" for _ in raws]
        base = path
    else:
        base = path.parent
        suffix = path.suffix.lower()
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames or "uri" not in reader.fieldnames:
                    raise SourcesFileError(f"{path}: line 1: a 'uri' column is required (found {reader.fieldnames})")
                raws = list(reader)
            where = [f"{path}: line {i + 2}" for i in range(len(raws))]
        elif suffix in (".jsonl", ".ndjson"):
            raws, where = [], []
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SourcesFileError(f"{path}: line {i + 1}: not JSON: {e}") from e
                if not isinstance(obj, dict):
                    raise SourcesFileError(f"{path}: line {i + 1}: expected a JSON object")
                raws.append(obj)
                where.append(f"{path}: line {i + 1}")
        elif suffix == ".parquet":
            tbl = pq.read_table(path)
            if "uri" not in tbl.column_names:
                raise SourcesFileError(f"{path}: a 'uri' column is required")
            raws = tbl.to_pylist()
            where = [f"{path}: row {i}" for i in range(len(raws))]
        else:
            raise SourcesFileError(f"{path}: expected .csv, .jsonl or .parquet, or a folder of media files")
    rows: dict[str, dict[str, Any]] = {}
    for raw, w in zip(raws, where, strict=True):
        row = _row(raw, base, w)
        rows.setdefault(row["input_id"], row)
    return list(rows.values())
