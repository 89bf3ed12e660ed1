"""`sources`: one row per input URI, written by stages/download/stage.py."""

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
