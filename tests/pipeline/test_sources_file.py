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
        ("s.csv", "uri,title,uri\na,b,c\n", "line 1: the column 'uri' appears more than once"),
        ("s.csv", "", "the file is empty"),
        ("s.jsonl", "not json\n[1]\n", "no line is a JSON object"),
        ("s.txt", "uri\n", "expected .csv, .jsonl or .parquet"),
    ],
)
def test_bad_sources_files_name_the_line(tmp_path, name, text, match):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(SourcesFileError, match=match):
        read_sources(f)


def test_bad_file_encodings_are_one_clear_error(tmp_path):
    f = tmp_path / "s.csv"
    f.write_bytes("uri,title\nv.mp4,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(SourcesFileError, match=r"s.csv: line 2: not UTF-8 text .*save the file as UTF-8"):
        read_sources(f)
    f.write_bytes("uri\nv.mp4\n".encode("utf-16"))
    with pytest.raises(SourcesFileError, match="UTF-16"):
        read_sources(f)


def test_excel_csv_and_bad_rows(tmp_path):
    """BOM, trailing empty columns and ',,,' lines are Excel's habits; a bad row is a failed input with its line."""
    (tmp_path / "v.mp4").write_bytes(b"x")
    f = tmp_path / "s.csv"
    big = "x" * 200_000
    f.write_bytes(("\ufeffuri,title,,\n"  # BOM and empty header cells
                   "v.mp4,good,,\n"
                   ",empty uri,,\n"
                   ",,,\n"
                   "a\x00b.mp4,nul,,\n"
                   f"{big},long,,\n"
                   f"v2.mp4,{big},,\n"
                   ",,,\n").encode())
    rows = read_sources(f)
    by_title = {r["title"][:10]: r for r in rows}
    assert len(rows) == 5
    assert by_title["good"]["uri"] == str(tmp_path / "v.mp4") and by_title["good"]["input_error"] is None
    assert by_title["empty uri"]["input_error"] == f"bad_row: {f}: line 3: the 'uri' cell is empty"
    assert by_title["nul"]["input_error"] == f"bad_row: {f}: line 5: the 'uri' cell holds a NUL byte"
    assert by_title["long"]["input_error"].startswith(f"bad_row: {f}: line 6: the 'uri' cell is 200000 characters")
    assert by_title["x" * 10]["input_error"] is None  # a long title is only a long title
    assert read_sources(f) == rows  # the same ids every run


def test_parquet_values_are_text_never_reprs(tmp_path):
    p = tmp_path / "s.parquet"
    pq.write_table(pa.table({"uri": pa.array([b"/data/a.mp4", b"\xff\xfe", None], pa.binary()),
                             "license": [1, 2, 3], "consent": [True, False, True], "score": [0.5, None, 2.0],
                             "tags": [["a"], [], None]}), p)
    a, bad, empty = read_sources(p)
    assert a["uri"] == "/data/a.mp4" and a["license"] == "1" and a["consent"] == "yes"
    assert json.loads(a["meta"]) == {"score": 0.5, "tags": ["a"]}
    assert bad["input_error"] == f"bad_row: {p}: row 1: the 'uri' cell holds bytes that are not UTF-8 text"
    assert empty["input_error"] == f"bad_row: {p}: row 2: the 'uri' cell is empty"
    p2 = tmp_path / "n.parquet"
    pq.write_table(pa.table({"uri": [1, 2]}), p2)
    assert all("is a int, not text" in r["input_error"] for r in read_sources(p2))


def test_jsonl_bad_lines_are_failed_rows(tmp_path):
    j = tmp_path / "s.jsonl"
    j.write_bytes(b'\xef\xbb\xbf{"uri": "http://a/1.mp4"}\nnot json\n[1]\n')
    ok, nojson, notobj = read_sources(j)
    assert ok["uri"] == "http://a/1.mp4" and ok["input_error"] is None
    assert nojson["input_error"].startswith(f"bad_row: {j}: line 2: not JSON")
    assert notobj["input_error"] == f"bad_row: {j}: line 3: a JSON list, not an object"


def test_urls_in_extra_columns_are_stored_redacted(tmp_path):
    f = tmp_path / "s.csv"
    f.write_text("uri,page\nhttp://h/v.mp4?sig=abc123,https://u:pw123@h/p?token=xyz789&a=1\n")
    (row,) = read_sources(f)
    assert json.loads(row["meta"]) == {"page": "https://REDACTED@h/p?token=REDACTED&a=1"}
    assert row["uri"] == "http://h/v.mp4?sig=abc123"  # the download needs it; the stage stores it redacted


def test_paths_are_recorded_as_written(tmp_path):
    """No strip, no scheme guess over an existing file, no symlink resolution: /proc/self keeps its id."""
    for name in (" lead.mp4", "trail.mp4 ", "take:2.mp4"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "link.mp4").symlink_to(tmp_path / "take:2.mp4")
    f = tmp_path / "s.csv"
    f.write_text('uri\n" lead.mp4"\n"trail.mp4 "\ntake:2.mp4\nlink.mp4\n/proc/self/environ\n  http://h/x.mp4 \n')
    uris = [r["uri"] for r in read_sources(f)]
    assert uris == [str(tmp_path / " lead.mp4"), str(tmp_path / "trail.mp4 "), str(tmp_path / "take:2.mp4"),
                    str(tmp_path / "link.mp4"), "/proc/self/environ", "http://h/x.mp4"]
    assert [r["input_id"] for r in read_sources(f)] == [input_id(u) for u in uris]


def test_a_symlink_loop_is_an_input_not_a_crash(tmp_path):
    """resolve() raises on a loop; the input is kept as written, for the download to fail on with its row."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "s.csv").write_text("uri\na\n")
    (row,) = read_sources(tmp_path / "s.csv")
    assert row["uri"] == str(tmp_path / "a")
    assert read_sources(tmp_path) == [] or all(r["uri"].startswith(str(tmp_path)) for r in read_sources(tmp_path))
