"""`sources`: one row per input URI, written by stages/download/stage.py, made only by `source_row`."""

from datetime import datetime
from typing import Any

import pyarrow as pa

from manifests._schema import table_schema

# Columns a sources file may set; anything else is kept as JSON in `meta`.
SOURCE_FILE_COLUMNS = ("uri", "license", "consent", "category", "title", "language", "notes")
CATEGORIES = ("speech", "film", "tv", "singing", "other")

SOURCES = table_schema(
    "sources",
    1,
    [
        pa.field("input_id", pa.string(), nullable=False),  # sha1 of the normalised URI: the resume key
        pa.field("source_id", pa.string()),  # first 16 hex of sha256(content); null when nothing was fetched
        pa.field("uri", pa.string(), nullable=False),
        pa.field("final_url", pa.string()),  # after redirects
        pa.field("redirects", pa.list_(pa.string())),  # every hop, in order
        pa.field("sha256", pa.string()),
        pa.field("bytes", pa.int64()),
        pa.field("mime", pa.string()),  # sniffed from the bytes, not trusted from the server
        pa.field("status", pa.string(), nullable=False),  # ok / failed / skipped
        pa.field("error", pa.string()),  # reason code and text when not ok, e.g. "http_404: ..."
        pa.field("fetched_at", pa.timestamp("us", tz="UTC")),
        pa.field("license", pa.string()),
        pa.field("consent", pa.string()),
        pa.field("category", pa.string()),
        pa.field("title", pa.string()),
        pa.field("language", pa.string()),
        pa.field("notes", pa.string()),
        pa.field("meta", pa.string()),  # unknown sources-file columns, as JSON
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),
        pa.field("n_frames", pa.int64()),
        pa.field("width", pa.int32()),  # as displayed, after rotation
        pa.field("height", pa.int32()),
        pa.field("rotation", pa.int32()),  # degrees from the stream's display matrix
        pa.field("video_codec", pa.string()),
        pa.field("audio_codec", pa.string()),
        pa.field("has_audio", pa.bool_()),
        pa.field("audio_path", pa.string()),  # 16 kHz mono wav, relative to OUT
        pa.field("media_path", pa.string()),  # content-addressed copy, relative to OUT
    ],
)

# Who gives which columns: the input (a sources-file row), the fetch, the stored content with its
# probe (stages/media/probe.py), and the outcome.
INPUT_COLUMNS = ("input_id", "uri", "license", "consent", "category", "title", "language", "notes", "meta")
FETCH_COLUMNS = ("final_url", "redirects")
CONTENT_COLUMNS = ("source_id", "sha256", "bytes", "mime", "media_path", "audio_path", "duration_s", "fps", "n_frames",
                   "width", "height", "rotation", "video_codec", "audio_codec", "has_audio")
assert {"status", "error", "fetched_at", *INPUT_COLUMNS, *FETCH_COLUMNS, *CONTENT_COLUMNS} == set(SOURCES.names)


def source_row(given: dict[str, Any], status: str, error: str | None, fetched_at: datetime, *,
               fetch: dict[str, Any] | None = None, content: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one place a `sources` row is made: the input's columns (`given`), what the fetch learned,
    and, for a source that arrived, its stored content and probe. Each group is given whole or not
    at all (its columns null): a missing or unknown column raises, naming it."""
    if status == "ok" and content is None:
        raise ValueError("sources: an ok row needs its content columns")
    row: dict[str, Any] = {"status": status, "error": error, "fetched_at": fetched_at}
    for group, columns, values in (("input", INPUT_COLUMNS, given), ("fetch", FETCH_COLUMNS, fetch),
                                   ("content", CONTENT_COLUMNS, content)):
        if values is None:
            row.update(dict.fromkeys(columns))
            continue
        if missing := [c for c in columns if c not in values]:
            raise ValueError(f"sources: the {group} columns lack {missing}")
        if unknown := sorted(set(values) - set(columns)):
            raise ValueError(f"sources: not {group} columns: {unknown}")
        row.update(values)
    return row
