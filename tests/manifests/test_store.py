"""Manifest schemas and the atomic sharded store, on real Parquet files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests import TABLES, ManifestStore
from manifests._schema import schema_version
from manifests.sources import CONTENT_COLUMNS, INPUT_COLUMNS
from manifests.sources import source_row as build_source_row


def source_row(i: int, **kw) -> dict:
    return {"input_id": f"in{i:04d}", "uri": f"/data/{i}.mp4", "status": "ok", "source_id": f"s{i:04d}", **kw}


def test_every_table_has_an_explicit_versioned_schema():
    for name, schema in TABLES.items():
        assert isinstance(schema, pa.Schema)
        assert schema_version(schema) >= 1, name
        assert schema.metadata[b"emo_forge.table"] == name.encode()
        assert len(set(schema.names)) == len(schema.names)


def test_write_read_roundtrip_keeps_schema_and_fills_nulls(tmp_path):
    store = ManifestStore(tmp_path)
    store.write_shard("sources", "in0001", [source_row(1, fps=25.0)])
    store.write_shard("sources", "in0000", [source_row(0)])
    tbl = store.read("sources")
    assert tbl.schema.equals(TABLES["sources"], check_metadata=False)
    assert tbl.column("input_id").to_pylist() == ["in0000", "in0001"]  # shard-key order
    assert tbl.column("fps").to_pylist() == [None, 25.0]
    assert store.version_of("sources") == 1
    on_disk = pq.read_schema(store.shard_path("sources", "in0000"))
    assert on_disk.metadata[b"emo_forge.schema_version"] == b"1"


def test_unknown_columns_and_bad_keys_are_refused(tmp_path):
    store = ManifestStore(tmp_path)
    with pytest.raises(ValueError, match="not in the schema"):
        store.write_shard("sources", "k", [source_row(1, colour="red")])
    for key in ("", "../x", ".hidden"):
        with pytest.raises(ValueError):
            store.write_shard("sources", key, [source_row(1)])
    with pytest.raises(KeyError):
        store.read("nope")


def test_a_strict_write_names_the_missing_column(tmp_path):
    store = ManifestStore(tmp_path)
    row = build_source_row({**dict.fromkeys(INPUT_COLUMNS), "input_id": "in1", "uri": "/a.mp4"}, "failed",
                           "not_found: no such file", datetime.now(UTC))
    store.write_shard("sources", "in1", [row], strict=True)
    del row["height"]
    with pytest.raises(ValueError, match="sources: row 0 has no column 'height'"):
        store.write_shard("sources", "in1", [row], strict=True)
    store.write_shard("sources", "in1", [row])  # not strict: a null


def test_sources_rows_are_made_whole_by_one_builder():
    given = {**dict.fromkeys(INPUT_COLUMNS), "input_id": "in1", "uri": "/a.mp4"}
    fetch = {"final_url": "file:///a.mp4", "redirects": []}
    content = {**dict.fromkeys(CONTENT_COLUMNS), "source_id": "s1", "has_audio": False}
    row = build_source_row(given, "ok", None, datetime.now(UTC), fetch=fetch, content=content)
    assert set(row) == set(TABLES["sources"].names) and row["source_id"] == "s1"
    failed = build_source_row(given, "failed", "http_404: gone", datetime.now(UTC), fetch=fetch)
    assert set(failed) == set(TABLES["sources"].names) and failed["sha256"] is None
    with pytest.raises(ValueError, match=r"content columns lack \['height'\]"):
        build_source_row(given, "ok", None, datetime.now(UTC), fetch=fetch,
                         content={k: v for k, v in content.items() if k != "height"})
    with pytest.raises(ValueError, match=r"not input columns: \['colour'\]"):
        build_source_row({**given, "colour": "red"}, "failed", "x", datetime.now(UTC))
    with pytest.raises(ValueError, match="an ok row needs its content"):
        build_source_row(given, "ok", None, datetime.now(UTC), fetch=fetch)


def test_rewriting_a_shard_replaces_it(tmp_path):
    store = ManifestStore(tmp_path)
    store.write_shard("sources", "k", [source_row(1), source_row(2)])
    store.write_shard("sources", "k", [source_row(3)])
    assert store.read("sources").column("input_id").to_pylist() == ["in0003"]


def test_interrupted_write_leaves_nothing_a_reader_picks_up(tmp_path):
    """Kill a writer in the middle of writing a large shard: no shard and no readable partial file."""
    script = textwrap.dedent(f"""
        import os, pyarrow.parquet as pq
        from manifests import ManifestStore
        import manifests.store as ms
        real = pq.write_table
        def slow(tbl, fh, **kw):
            fh.write(b"PAR1" + b"x" * 1000)  # bytes hit the temporary file, then the process dies
            fh.flush()
            os.kill(os.getpid(), 9)
        ms.pq.write_table = slow
        ManifestStore({str(tmp_path)!r}).write_shard("sources", "victim", [{{"input_id": "a", "uri": "u", "status": "ok"}}])
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd())
    assert proc.returncode == -9
    store = ManifestStore(tmp_path)
    leftovers = os.listdir(store.table_dir("sources"))
    assert leftovers and all(name.startswith(".") for name in leftovers)  # only the hidden temporary
    assert store.shard_keys("sources") == set()
    assert store.read("sources").num_rows == 0
    store.write_shard("sources", "victim", [source_row(1)])  # the next writer succeeds
    assert store.read("sources").num_rows == 1


def test_content_hash_ignores_times_but_not_values(tmp_path):
    import datetime as dt

    a, b = ManifestStore(tmp_path / "a"), ManifestStore(tmp_path / "b")
    now = dt.datetime.now(dt.UTC)
    a.write_shard("sources", "k", [source_row(1, fetched_at=now)])
    b.write_shard("sources", "k", [source_row(1, fetched_at=now + dt.timedelta(hours=1))])
    assert a.content_hash() == b.content_hash()
    b.write_shard("sources", "k", [source_row(1, fps=30.0)])
    assert a.content_hash() != b.content_hash()


def test_rows_written_straight_as_parts_read_as_compacted_files_do(tmp_path):
    """bench_scale's 100 k figure writes rows with compaction's own writer instead of files first: the
    store it leaves must answer as `emo manifest compact` over the same rows written as files does."""
    from benchmarks.bench_scale import synthesise, synthesise_compacted
    from manifests.compact import compact

    synthesise(str(tmp_path / "files"), 50, 4)
    compact(str(tmp_path / "files"))
    synthesise_compacted(str(tmp_path / "parts"), 50)
    a, b = ManifestStore(tmp_path / "files"), ManifestStore(tmp_path / "parts")
    assert a.content_hash() == b.content_hash() and b.read("shots").num_rows == 100
    assert b.shard_keys("stage_runs") == a.shard_keys("stage_runs")
