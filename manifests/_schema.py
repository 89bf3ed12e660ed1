"""How a table schema is declared: an explicit pyarrow schema stamped with its name and version."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION_KEY = b"emo_forge.schema_version"
TABLE_NAME_KEY = b"emo_forge.table"


def table_schema(name: str, version: int, fields: list[pa.Field]) -> pa.Schema:
    """Build a schema whose metadata names the table and its version."""
    return pa.schema(fields, metadata={TABLE_NAME_KEY: name.encode(), SCHEMA_VERSION_KEY: str(version).encode()})


def schema_version(schema: pa.Schema) -> int | None:
    meta = schema.metadata or {}
    raw = meta.get(SCHEMA_VERSION_KEY)
    return int(raw) if raw is not None else None
