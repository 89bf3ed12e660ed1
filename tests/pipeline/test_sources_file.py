"""Reading sources files: CSV, JSONL, Parquet and folders."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.sources_file import SourcesFileError, input_id, read_sources


def test_csv_keeps_known_columns_and_unknown_ones_as_meta(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"x")
    f = tmp_path / "s.csv"
    f.write_text("uri,license,consent,category,shelf\nv.mp4,CC0,yes,speech,A3\nhttp://h/x.mp4,,,,\nv.mp4,CC0,yes,speech,dup\n")
    rows = read_sources(f)
    assert len(rows) == 2  # the same URI twice is one input
    assert rows[0]["uri"] == str((tmp_path / "v.mp4").resolve())  # relative to the sources file
    assert rows[0]["license"] == "CC0" and json.loads(rows[0]["meta"]) == {"shelf": "A3"}
    assert rows[1]["uri"] == "http://h/x.mp4" and rows[1]["license"] is None and rows[1]["meta"] is None
    assert rows[1]["input_id"] == input_id("http://h/x.mp4")


def test_jsonl_and_parquet(tmp_path):
    j = tmp_path / "s.jsonl"
    j.write_text('{"uri": "http://a/1.mp4", "title": "one"}\n\n{"uri": "http://a/2.mp4", "extra": [1, 2]}\n')
    rows = read_sources(j)
    assert [r["title"] for r in rows] == ["one", None] and json.loads(rows[1]["meta"]) == {"extra": [1, 2]}
    p = tmp_path / "s.parquet"
    pq.write_table(pa.table({"uri": ["http://a/1.mp4"], "consent": ["no"]}), p)
    assert read_sources(p)[0]["consent"] == "no"


def test_folder_of_footage(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "clip 1.mov").write_bytes(b"x")
    (tmp_path / "b.mp4").write_bytes(b"x")
    (tmp_path / ".hidden.mp4").write_bytes(b"x")
    rows = read_sources(tmp_path)
    assert sorted(r["title"] for r in rows) == ["b.mp4", "clip 1.mov"]


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("s.csv", "url\nhttp://x\n", "line 1: a 'uri' column is required"),
        ("s.csv", "uri,title\n,empty\n", "line 2: the required column 'uri' is empty"),
        ("s.jsonl", '{"uri": "a"}\nnot json\n', "line 2: not JSON"),
        ("s.txt", "uri\n", "expected .csv, .jsonl or .parquet"),
    ],
)
def test_bad_sources_files_name_the_line(tmp_path, name, text, match):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(SourcesFileError, match=match):
        read_sources(f)


def test_a_symlink_loop_is_an_input_not_a_crash(tmp_path):
    """resolve() raises on a loop; the input is kept as written, for the download to fail on with its row."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "s.csv").write_text("uri\na\n")
    (row,) = read_sources(tmp_path / "s.csv")
    assert row["uri"] == str(tmp_path / "a")
    assert read_sources(tmp_path) == [] or all(r["uri"].startswith(str(tmp_path)) for r in read_sources(tmp_path))
