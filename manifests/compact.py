"""`emo manifest compact OUT`: merge each table's per-source shards into a few large Parquet parts.

One file per source per table costs a request (or an open) per file on every read: 100 k sources
are 700 k objects. Compaction reads each table once (manifests/store.py, Arrow scans), writes its
rows in shard-key order to `part-*.parquet` files with each row's key, then switches
CURRENT.json to the new parts, then deletes what the parts replaced. A crash at any point leaves a
readable store with the same answer: before the switch the new parts are unnamed and ignored,
after it a leftover live shard wins over its identical copy in a part.

Run it when no `emo curate` is writing to OUT: a shard written while compaction runs may be lost.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests import TABLES
from manifests.store import COMPACTED, KEY_COL, ManifestStore

PART_ROWS = 1_000_000  # rows per part; a part never splits one shard key
ROW_GROUP_ROWS = 64_000  # row groups with key statistics: reading one key skips the rest


def _write_parts(store: ManifestStore, table: str, tbl: pa.Table, keys: list[str]) -> dict[str, list[str]]:
    """Write rows (sorted by key) as parts; {part name: keys}. `keys` includes shards without rows."""
    parts: dict[str, list[str]] = {}
    key_col = tbl.column(KEY_COL).to_pylist() if tbl.num_rows else []
    start, n = 0, tbl.num_rows
    remaining = sorted(keys)
    while start < n or (not parts and remaining):
        end = min(start + PART_ROWS, n)
        while 0 < end < n and key_col[end] == key_col[end - 1]:  # never split one key over two parts
            end += 1
        chunk = tbl.slice(start, end - start)
        last = key_col[end - 1] if end > start else None
        # Keys without rows go with the part whose key range holds them (all into the last part).
        mine = [k for k in remaining if end >= n or (last is not None and k <= last)]
        remaining = remaining[len(mine):]
        name = f"part-{uuid.uuid4().hex[:12]}.parquet"
        schema = TABLES[table].append(pa.field(KEY_COL, pa.string()))
        chunk = chunk.select(schema.names).cast(schema).replace_schema_metadata(TABLES[table].metadata)
        store.loc.write(f"{COMPACTED}/{table}/{name}",
                        lambda fh, c=chunk: pq.write_table(c, fh, compression="zstd", row_group_size=ROW_GROUP_ROWS))
        parts[name] = mine
        start = end
    return parts


def _switch(store: ManifestStore, table: str, parts: dict[str, list[str]]) -> None:
    """Name the new parts in CURRENT.json (the commit point), then delete parts no longer named."""
    old = set(store.compacted(table))
    doc = {"updated": datetime.now(UTC).isoformat(), "parts": parts}
    store.loc.write_text(f"{COMPACTED}/{table}/CURRENT.json", json.dumps(doc))
    store.forget_cached()
    for name in old - set(parts):
        store.loc.delete(f"{COMPACTED}/{table}/{name}")


def compact_table(store: ManifestStore, table: str) -> dict[str, int]:
    """Merge one table's live shards and earlier parts into new parts; counts of what happened."""
    live = store._live_keys(table)
    if not live:
        return {"live_shards": 0, "parts": len(store.compacted(table))}
    keys = store.shard_keys(table)
    tbl = store.read_with_keys(table)
    parts = _write_parts(store, table, tbl, sorted(keys))
    _switch(store, table, parts)
    # The parts now hold every live shard's rows: the files go (one bulk delete on object stores).
    store.loc.fs.delete_dir_contents(store.loc.full(f"manifests/{table}"), missing_dir_ok=True)
    return {"live_shards": len(live), "parts": len(parts), "rows": tbl.num_rows}


def compact(out: str, tables: list[str] | None = None) -> dict[str, dict[str, int]]:
    """Compact every table of OUT (or the named ones); what each table had and has."""
    store = ManifestStore(out)
    return {t: compact_table(store, t) for t in (tables or store.tables())}


def drop_from_parts(store: ManifestStore, table: str, keys: set[str]) -> None:
    """Rewrite the parts that hold these keys without them (opt-out, a forgotten stale run)."""
    comp = store.compacted(table)
    touched = {part for part, ks in comp.items() if keys & set(ks)}
    new = {p: ks for p, ks in comp.items() if p not in touched}
    for part in sorted(touched):
        kept_keys = [k for k in comp[part] if k not in keys]
        tbl = pq.read_table(store.loc.full(f"{COMPACTED}/{table}/{part}"), filesystem=store.loc.fs)
        tbl = tbl.filter(pc.invert(pc.is_in(tbl.column(KEY_COL), pa.array(sorted(keys)))))
        if kept_keys:
            new.update(_write_parts(store, table, tbl, kept_keys))
    _switch(store, table, new)
