"""Reading and writing manifest tables as atomic, sharded Parquet files, on a local folder or object storage.

Layout under OUT (a folder or a URI, see manifests/fs.py):
  manifests/<table>/<shard_key>.parquet           one shard per source, written whole (rename or one PUT)
  manifests/_compacted/<table>/CURRENT.json       after `emo manifest compact`: the parts and their keys
  manifests/_compacted/<table>/part-*.parquet     many shards' rows, with their key in `__shard_key`

A shard key lives in exactly one place: a live shard file wins over its rows in a compacted part
(manifests/compact.py deletes the live files only after CURRENT.json names the part that holds
them). Every read goes through pyarrow.dataset and Acero, never a Python loop per file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.acero as acero
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from manifests import TABLES
from manifests._schema import schema_version
from manifests.fs import Location

# Columns that legitimately differ between two runs over the same input.
VOLATILE_COLUMNS = frozenset({"fetched_at", "finished_at", "seconds"})
KEY_COL = "__shard_key"
COMPACTED = "manifests/_compacted"


def _schema(table: str) -> pa.Schema:
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown manifest table {table!r}; known: {', '.join(sorted(TABLES))}") from None


def rows_to_table(table: str, rows: Iterable[dict], strict: bool = False) -> pa.Table:
    """Rows (dicts) to an Arrow table of the table's schema; unknown keys are a bug and raise, and so
    (strict) do missing ones: a row must name every column, null or not."""
    schema = _schema(table)
    rows = list(rows)
    names = set(schema.names)
    for i, row in enumerate(rows):
        extra = set(row) - names
        if extra:
            raise ValueError(f"{table}: columns not in the schema: {sorted(extra)}")
        if strict and (missing := [n for n in schema.names if n not in row]):
            raise ValueError(f"{table}: row {i} has no column {', '.join(map(repr, missing))}")
    return pa.Table.from_pylist(rows, schema=schema)


def conform(table: str, data: pa.Table | Iterable[dict], strict: bool = False) -> pa.Table:
    """Data as the table's exact schema, with its version metadata (strict: see rows_to_table)."""
    schema = _schema(table)
    tbl = data if isinstance(data, pa.Table) else rows_to_table(table, data, strict)
    if not tbl.schema.equals(schema, check_metadata=False):
        tbl = tbl.select(schema.names).cast(schema)
    return tbl.replace_schema_metadata(schema.metadata)


class ManifestStore:
    """The manifests of one output folder or object-store prefix."""

    def __init__(self, out: str | os.PathLike | Location):
        self.loc = out if isinstance(out, Location) else Location(out)
        self._compacted: dict[str, dict[str, list[str]]] = {}  # table -> {part: keys}, read once per store

    @property
    def out(self) -> Path:
        """OUT as a local folder (an error for OUT on object storage)."""
        return self.loc.path

    @property
    def root(self) -> str:
        return self.loc.child_uri("manifests")

    def table_dir(self, table: str) -> Path:
        return self.out / "manifests" / table

    @staticmethod
    def shard_rel(table: str, key: str) -> str:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"bad shard key {key!r}")
        return f"manifests/{table}/{key}.parquet"

    def shard_path(self, table: str, key: str) -> Path:
        return self.out / self.shard_rel(table, key)

    def write_shard(self, table: str, key: str, data: pa.Table | Iterable[dict], strict: bool = False) -> str:
        """Write (or replace) one shard, whole or not at all (strict: rows must name every column)."""
        tbl = conform(table, data, strict)
        rel = self.shard_rel(table, key)
        self.loc.write(rel, lambda fh: pq.write_table(tbl, fh, compression="zstd"))
        return rel

    # -- compacted parts -------------------------------------------------------------------------

    def compacted(self, table: str) -> dict[str, list[str]]:
        """{part file name: the shard keys it holds} from CURRENT.json ({} before any compaction)."""
        if table not in self._compacted:
            text = self.loc.read_text(f"{COMPACTED}/{table}/CURRENT.json", default="{}")
            self._compacted[table] = json.loads(text).get("parts", {})
        return self._compacted[table]

    def forget_cached(self) -> None:
        self._compacted.clear()

    def _compacted_keys(self, table: str) -> dict[str, str]:
        return {k: part for part, keys in self.compacted(table).items() for k in keys}

    def _live_dataset(self, table: str) -> ds.Dataset:
        """The live shards of a table as one dataset, found by one listing. Its entries carry each
        object's size, which spares a HEAD request per object when it is opened (a list of paths
        costs one per file: a third of the requests of reading many small shards from a store)."""
        sel = pafs.FileSelector(self.loc.full(f"manifests/{table}"), recursive=False, allow_not_found=True)
        factory = ds.FileSystemDatasetFactory(self.loc.fs, sel, ds.ParquetFileFormat(),
                                              ds.FileSystemFactoryOptions(selector_ignore_prefixes=[".", "_"]))
        dset = factory.finish(_schema(table))
        if all(f.endswith(".parquet") for f in dset.files):
            return dset
        shards = [f for f in dset.files if f.endswith(".parquet")]  # anything else in the folder is not a shard
        return ds.dataset(shards, filesystem=self.loc.fs, format="parquet", schema=_schema(table))

    def _live_keys(self, table: str) -> set[str]:
        return {f.base_name[: -len(".parquet")] for f in self.loc.files(f"manifests/{table}", recursive=False)
                if f.base_name.endswith(".parquet")}

    # -- reading ---------------------------------------------------------------------------------

    def shard_keys(self, table: str) -> set[str]:
        return self._live_keys(table) | set(self._compacted_keys(table))

    def has_shard(self, table: str, key: str) -> bool:
        return self.loc.exists(self.shard_rel(table, key)) or key in self._compacted_keys(table)

    def read_shard(self, table: str, key: str) -> pa.Table:
        schema = _schema(table)
        rel = self.shard_rel(table, key)
        try:  # one GET: a dataset over one object spends two more requests finding out what it is
            return pq.read_table(pa.BufferReader(self.loc.read_bytes(rel)), schema=schema)
        except FileNotFoundError:
            pass
        part = self._compacted_keys(table).get(key)
        if part is None:
            return schema.empty_table()
        dset = ds.dataset(self.loc.full(f"{COMPACTED}/{table}/{part}"), filesystem=self.loc.fs, format="parquet",
                          schema=schema.append(pa.field(KEY_COL, pa.string())))
        return dset.to_table(columns=schema.names, filter=ds.field(KEY_COL) == key).replace_schema_metadata(schema.metadata)

    def read(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """The whole table, rows in shard-key order (deterministic across runs and compactions)."""
        tbl = self.read_with_keys(table, columns)
        return tbl.drop_columns([KEY_COL])

    def read_with_keys(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """read() plus each row's shard key in column `__shard_key`."""
        schema = _schema(table)
        names = columns or schema.names
        dset = self._live_dataset(table)
        live = sorted(f.rsplit("/", 1)[1][: -len(".parquet")] for f in dset.files)
        parts = []
        if live:
            parts.append(_scan(dset, names, None))
        comp = self.compacted(table)
        if comp:
            files = [self.loc.full(f"{COMPACTED}/{table}/{p}") for p in sorted(comp)]
            dset = ds.dataset(files, filesystem=self.loc.fs, format="parquet",
                              schema=schema.append(pa.field(KEY_COL, pa.string())))
            keep = ~ds.field(KEY_COL).isin(pa.array(live, pa.string())) if live else None
            parts.append(_scan(dset, names, keep))
        if not parts:
            empty = schema.empty_table().select(names).append_column(KEY_COL, pa.array([], pa.string()))
            return empty.replace_schema_metadata(schema.metadata)
        tbl = pa.concat_tables(parts)
        # A stable sort: rows of one shard keep their order (batches by their index within the file).
        tbl = tbl.take(pc.sort_indices(tbl, sort_keys=[(KEY_COL, "ascending"), ("__batch_index", "ascending")]))
        out_schema = pa.schema([schema.field(n) for n in names] + [pa.field(KEY_COL, pa.string())], schema.metadata)
        return tbl.drop_columns(["__batch_index"]).cast(out_schema)  # Acero drops `not null`: put it back

    def tables(self) -> list[str]:
        """Tables that have at least one shard, in registry order."""
        return [t for t in TABLES if self.shard_keys(t)]

    def version_of(self, table: str) -> int | None:
        live = sorted(self._live_keys(table))
        if live:
            return schema_version(pq.read_schema(self.loc.full(self.shard_rel(table, live[0])), filesystem=self.loc.fs))
        comp = self.compacted(table)
        if comp:
            part = self.loc.full(f"{COMPACTED}/{table}/{sorted(comp)[0]}")
            return schema_version(pq.read_schema(part, filesystem=self.loc.fs))
        return None

    # -- deleting --------------------------------------------------------------------------------

    def delete_shards(self, table: str, keys: Iterable[str]) -> int:
        """Delete these shards wherever they are (live files, compacted parts); how many existed."""
        from manifests.compact import drop_from_parts

        keys = set(keys)
        n = sum(self.loc.delete(self.shard_rel(table, k)) for k in keys)
        in_parts = keys & set(self._compacted_keys(table))
        if in_parts:
            drop_from_parts(self, table, in_parts)
        return n + len(in_parts)

    def content_hash(self, tables: Iterable[str] | None = None) -> str:
        """A hash of the manifests' content, ignoring volatile columns (times).

        Identifies "this exact dataset": the same rows give the same hash, whenever they were
        written and however they are stored (one file per source or compacted). (Two runs over the
        same input can differ in the `sha256` of the clips they encode: libx264 was seen to give
        different bytes for the same frames.)
        """
        h = hashlib.sha256()
        for table in tables or self.tables():
            names = [c for c in _schema(table).names if c not in VOLATILE_COLUMNS]
            tbl = self.read(table, columns=names).combine_chunks()  # independent of how rows were split into files
            h.update(table.encode())
            for col in tbl.columns:
                h.update(_column_bytes(col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)))
        return h.hexdigest()


def _scan(dset: ds.Dataset, names: list[str], keep: ds.Expression | None) -> pa.Table:
    """All rows of a dataset with their shard key and batch index, scanned in parallel by Acero."""
    has_key = KEY_COL in dset.schema.names
    decls = [acero.Declaration("scan", acero.ScanNodeOptions(dset, columns=names + ([KEY_COL] if has_key else [])))]
    if keep is not None:
        decls.append(acero.Declaration("filter", acero.FilterNodeOptions(keep)))
    key = pc.field(KEY_COL) if has_key else pc.replace_substring_regex(
        pc.field("__filename"), pattern=r"^.*/|\.parquet$", replacement="")
    exprs = [pc.field(n) for n in names] + [key, pc.field("__batch_index")]
    decls.append(acero.Declaration("project", acero.ProjectNodeOptions(exprs, names + [KEY_COL, "__batch_index"])))
    return acero.Declaration.from_sequence(decls).to_table()


def _column_bytes(col: pa.Array) -> bytes:
    # Arrow IPC bytes of a value are stable for the same values and type.
    sink = pa.BufferOutputStream()
    batch = pa.record_batch([col], names=["c"])
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    return sink.getvalue().to_pybytes()
