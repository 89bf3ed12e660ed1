"""Reading what the user points emo-forge at: a CSV, JSONL or Parquet sources file, or a folder.

A bad row (an empty or unusable `uri` cell, a line that is not JSON) becomes an input with an
`input_error` ("bad_row: <where>: <why>"): the download stage turns it into a failed `sources`
row and the run goes on. A bad file (no `uri` column, a duplicated header, not UTF-8) is one
SourcesFileError naming the file and what to fix. Excel's habits are tolerated: a UTF-8 BOM,
trailing empty columns and lines of nothing but commas.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.parquet as pq

from manifests.redact import input_key, redact_uri
from manifests.sources import SOURCE_FILE_COLUMNS

MAX_URI_CHARS = 8192  # longer than any real URL or path (PATH_MAX is 4096)
MAX_FIELD_CHARS = 16 << 20  # csv's default limit (128 KiB) would end a long cell in a traceback
URL_SCHEMES = ("http", "https", "file", "ftp", "ftps", "s3", "gs", "sftp")


class SourcesFileError(ValueError):
    """The sources file itself is unusable (not a per-source problem)."""


def input_id(uri: str, key: bytes | None = None) -> str:
    """The resume key of one input (see manifests.redact.input_key)."""
    return input_key(uri, key)


def _exists(p: Path) -> bool:
    try:
        return p.exists() or p.is_symlink()
    except (OSError, ValueError):  # a name too long, a NUL byte: not a file here
        return False


def _normalise_uri(uri: str, base: Path) -> str:
    """A URL as written (outer spaces dropped); a local path made absolute, never resolved or stripped.

    An existing file wins over a guessed scheme (`take:2.mp4`), and spaces that are part of a file's
    name are kept; symlinks are recorded as the user wrote them (the content is the identity).
    """
    as_path = Path(uri).expanduser()
    as_path = as_path if as_path.is_absolute() else base / as_path
    if _exists(as_path):
        return os.path.abspath(as_path)
    stripped = uri.strip()
    scheme = urlparse(stripped).scheme.lower() if "\x00" not in stripped else ""
    if scheme in URL_SCHEMES or (len(scheme) > 1 and "://" in stripped):
        return stripped
    p = Path(stripped).expanduser()
    return os.path.abspath(p if p.is_absolute() else base / p)


def _text(v: Any) -> str | None:
    """A sources-file value as text: never a Python repr."""
    if v is None or v == "":
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8")  # UnicodeDecodeError: the caller makes it a bad row
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return v.isoformat()
    if isinstance(v, (int, float)):
        return json.dumps(v)
    return json.dumps(v, sort_keys=True, default=str, ensure_ascii=False)


def _bad_uri(uri: Any) -> str | None:
    """Why a uri cell cannot name an input, or None."""
    if uri is None or (isinstance(uri, (str, bytes)) and not uri.strip()):
        return "the 'uri' cell is empty"
    if not isinstance(uri, (str, bytes)):
        return f"the 'uri' cell is a {type(uri).__name__}, not text"
    if isinstance(uri, bytes):
        try:
            uri = uri.decode("utf-8")
        except UnicodeDecodeError:
            return "the 'uri' cell holds bytes that are not UTF-8 text"
    if "\x00" in uri:
        return "the 'uri' cell holds a NUL byte"
    if len(uri) > MAX_URI_CHARS:
        return f"the 'uri' cell is {len(uri)} characters long (at most {MAX_URI_CHARS})"
    return None


def _row(raw: dict[str, Any], base: Path, where: str, key: bytes | None) -> dict[str, Any]:
    raw = {("" if k is None else str(k)): v for k, v in raw.items()}
    row: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    why = _bad_uri(raw.get("uri"))
    for k, v in raw.items():
        try:
            text = _text(v)
        except UnicodeDecodeError:
            why = why or f"the '{k}' cell holds bytes that are not UTF-8 text"
            text = None
        if k in SOURCE_FILE_COLUMNS:
            row[k] = text
        elif text is not None:  # kept in `meta`: a URL there is stored redacted like the uri
            value = v if isinstance(v, (int, float, bool, list, dict)) else text
            extra[k or "_unnamed"] = redact_uri(value) if isinstance(value, str) and "://" in value else value
    row.update({k: row.get(k) for k in SOURCE_FILE_COLUMNS})
    row["meta"] = json.dumps(extra, sort_keys=True, default=str, ensure_ascii=False) if extra else None
    if why:
        # The cell as far as it can be shown, for the failed row; its id is its place in the file.
        cell = raw.get("uri")
        shown = (cell if isinstance(cell, str) else "" if cell is None else repr(cell))[:200].replace("\x00", "\\x00")
        row["uri"] = redact_uri(shown) or ""
        row["input_error"] = f"bad_row: {where}: {why}"
        row["input_id"] = input_key(f"bad row at {where}", None)
        return row
    row["uri"] = _normalise_uri(row["uri"], base)
    row["input_error"] = None
    row["input_id"] = input_id(row["uri"], key)
    return row


def _decode(path: Path) -> str:
    """The file's text (a UTF-8 BOM dropped), or one error saying how to fix the encoding."""
    data = path.read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise SourcesFileError(f"{path}: the file is UTF-16 text; save it as UTF-8 (Excel: 'CSV UTF-8')")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SourcesFileError(f"{path}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
                               "save the file as UTF-8 (Excel: 'CSV UTF-8')") from None


def _header(path: Path, names: list[str]) -> None:
    seen = [n.strip() for n in names if n.strip()]
    dup = sorted({n for n in seen if seen.count(n) > 1})
    if dup:
        raise SourcesFileError(f"{path}: line 1: the column {', '.join(map(repr, dup))} appears more than once; "
                               "keep one so it is clear which to use")
    if "uri" not in seen:
        raise SourcesFileError(f"{path}: line 1: a 'uri' column is required (found {seen})")


def _read_csv(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    text = _decode(path)
    csv.field_size_limit(MAX_FIELD_CHARS)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise SourcesFileError(f"{path}: the file is empty; line 1 must name the columns, one of them 'uri'")
        _header(path, header)
        names = [n.strip() for n in header]
        raws, where = [], []
        for cells in reader:
            if not any(c.strip() for c in cells):  # blank lines and Excel's ",,,"
                continue
            raw = {n: c for n, c in zip(names, cells, strict=False) if n}
            raw.update({f"_column_{i + 1}": c for i, c in enumerate(cells) if c and (i >= len(names) or not names[i])})
            raws.append(raw)
            where.append(f"line {reader.line_num}")
    except csv.Error as e:
        raise SourcesFileError(f"{path}: line {reader.line_num}: not CSV: {e}") from None
    return raws, where


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    raws, where = [], []
    for i, line in enumerate(_decode(path).split("\n")):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            obj = {"uri": None, "_error": f"not JSON ({e.msg})"}
        if not isinstance(obj, dict):
            obj = {"uri": None, "_error": f"a JSON {type(obj).__name__}, not an object"}
        raws.append(obj)
        where.append(f"line {i + 1}")
    if raws and all("_error" in r for r in raws):
        raise SourcesFileError(f"{path}: no line is a JSON object; a .jsonl file holds one object per line, "
                               'e.g. {"uri": "talk.mp4"}')
    return raws, where


def _read_parquet(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    try:
        tbl = pq.read_table(path)
    except Exception as e:  # pyarrow raises several kinds for a damaged file
        raise SourcesFileError(f"{path}: not a readable Parquet file ({type(e).__name__})") from None
    _header(path, tbl.column_names)
    raws = tbl.to_pylist()
    return raws, [f"row {i}" for i in range(len(raws))]


def read_sources(path: str | Path, key: bytes | None = None) -> list[dict[str, Any]]:
    """Input rows (uri, license, consent, category, title, language, notes, meta, input_id, input_error),
    deduplicated by input id. `key`: OUT's URI key (manifests.redact.uri_key) for inputs with secrets."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SourcesFileError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts))
        raws: list[dict[str, Any]] = [{"uri": os.path.abspath(p), "title": p.name} for p in files]
        where, base = [str(path)] * len(raws), path
    else:
        base = path.parent
        readers = {".csv": _read_csv, ".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".parquet": _read_parquet}
        reader = readers.get(path.suffix.lower())
        if reader is None:
            raise SourcesFileError(f"{path}: expected .csv, .jsonl or .parquet, or a folder of media files")
        raws, where = reader(path)
        where = [f"{path}: {w}" for w in where]
    rows: dict[str, dict[str, Any]] = {}
    for raw, w in zip(raws, where, strict=True):
        bad = raw.pop("_error", None) if isinstance(raw.get("_error"), str) and raw.get("uri") is None else None
        row = _row(raw, base, w, key)
        if bad:
            row["input_error"] = f"bad_row: {w}: {bad}"
        rows.setdefault(row["input_id"], row)
    return list(rows.values())
