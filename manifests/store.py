"""Reading and writing manifest tables as atomic, sharded Parquet files.

Layout: OUT/manifests/<table>/<shard_key>.parquet. A shard is written to a hidden temporary
name in the same folder and renamed into place, so a reader never sees half a file and a
crash leaves only a temporary that the next writer of that shard replaces.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from manifests import TABLES
from manifests._schema import schema_version

# Columns that legitimately differ between two runs over the same input.
VOLATILE_COLUMNS = frozenset({"fetched_at", "finished_at", "seconds"})


def _schema(table: str) -> pa.Schema:
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown manifest table {table!r}; known: {', '.join(sorted(TABLES))}") from None


def rows_to_table(table: str, rows: Iterable[dict]) -> pa.Table:
    """Rows (dicts) to an Arrow table of the table's schema; unknown keys are a bug and raise."""
    schema = _schema(table)
    rows = list(rows)
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise ValueError(f"{table}: columns not in the schema: {sorted(extra)}")
    return pa.Table.from_pylist(rows, schema=schema)


class ManifestStore:
    """The manifests of one output folder."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.root = self.out / "manifests"

    def table_dir(self, table: str) -> Path:
        return self.root / table

    def shard_path(self, table: str, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"bad shard key {key!r}")
        return self.table_dir(table) / f"{key}.parquet"

    def write_shard(self, table: str, key: str, data: pa.Table | Iterable[dict]) -> Path:
        """Atomically write (or replace) one shard."""
        schema = _schema(table)
        tbl = data if isinstance(data, pa.Table) else rows_to_table(table, data)
        if not tbl.schema.equals(schema, check_metadata=False):
            tbl = tbl.select(schema.names).cast(schema)
        tbl = tbl.replace_schema_metadata(schema.metadata)
        final = self.shard_path(table, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{key}.parquet.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as fh:
                pq.write_table(tbl, fh, compression="zstd")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
        return final

    def shard_keys(self, table: str) -> set[str]:
        d = self.table_dir(table)
        if not d.is_dir():
            return set()
        return {p.name[: -len(".parquet")] for p in d.iterdir() if p.name.endswith(".parquet") and not p.name.startswith(".")}

    def has_shard(self, table: str, key: str) -> bool:
        return self.shard_path(table, key).is_file()

    def read_shard(self, table: str, key: str) -> pa.Table:
        path = self.shard_path(table, key)
        if not path.is_file():
            return _schema(table).empty_table()
        return pq.read_table(path, schema=_schema(table))

    def read(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """The whole table, rows in shard-key order (deterministic across runs)."""
        schema = _schema(table)
        files = [self.shard_path(table, k) for k in sorted(self.shard_keys(table))]
        if not files:
            tbl = schema.empty_table()
            return tbl.select(columns) if columns else tbl
        parts = [pq.read_table(f, schema=schema, columns=columns) for f in files]
        return pa.concat_tables(parts).replace_schema_metadata(schema.metadata)

    def tables(self) -> list[str]:
        """Tables that have at least one shard, in registry order."""
        return [t for t in TABLES if self.shard_keys(t)]

    def version_of(self, table: str) -> int | None:
        keys = sorted(self.shard_keys(table))
        if not keys:
            return None
        return schema_version(pq.read_schema(self.shard_path(table, keys[0])))

    def content_hash(self, tables: Iterable[str] | None = None) -> str:
        """A hash of the manifests' content, ignoring volatile columns (times).

        Identifies "this exact dataset": the same rows give the same hash, whenever they were
        written. (Two runs over the same input can differ in the `sha256` of the clips they
        encode: libx264 was seen to give different bytes for the same frames.)
        """
        h = hashlib.sha256()
        for table in tables or self.tables():
            tbl = self.read(table)
            keep = [c for c in tbl.column_names if c not in VOLATILE_COLUMNS]
            tbl = tbl.select(keep)
            h.update(table.encode())
            for batch in tbl.to_batches():
                for col in batch.columns:
                    h.update(_column_bytes(col))
        return h.hexdigest()


def _column_bytes(col: pa.Array) -> bytes:
    # Arrow IPC bytes of a value are stable for the same values and type.
    sink = pa.BufferOutputStream()
    batch = pa.record_batch([col], names=["c"])
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    return sink.getvalue().to_pybytes()
