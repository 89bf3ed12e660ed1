"""`emo curate` through real Ray: one row per input, resume without repeated work, SIGKILL survival."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from manifests import ManifestStore
from pipeline.runner import CurateOptions, curate


def write_sources(path: Path, uris: list[str]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uri", "license", "consent"])
        for u in uris:
            w.writerow([u, "CC-BY-4.0", "yes"])
    return path


def served_demo_sources(demo_corpus: Path, server, tmp_path: Path) -> Path:
    """The demo sources file, pointed at this test's server port."""
    text = (demo_corpus / "sources.csv").read_text().replace("http://127.0.0.1:8642", server.url("").rstrip("/"))
    lines = text.splitlines()
    rel = [line if line.startswith(("http", "uri")) else f"{demo_corpus}/{line}" for line in lines]
    f = tmp_path / "sources.csv"
    f.write_text("\n".join(rel) + "\n")
    return f


def test_demo_sources_each_get_exactly_one_row(ray_local, demo_corpus, server, tmp_path):
    sources = served_demo_sources(demo_corpus, server, tmp_path)
    summary = curate(CurateOptions(sources=str(sources), out=str(tmp_path / "out"), stages=("download",)))
    store = ManifestStore(tmp_path / "out")
    rows = store.read("sources").to_pylist()
    assert len(rows) == summary.inputs == 12
    by_title = {r["title"]: r for r in rows}
    assert by_title["the same reel over HTTP (same bytes)"]["source_id"] == by_title[
        "edited reel with cuts, a fade and a dissolve"]["source_id"]
    assert summary.ok == 5 and summary.unique_sources == 3
    assert dict(summary.failed) == {"not_media": 2, "empty_file": 1, "http_404": 1, "unreadable_container": 1}
    assert dict(summary.skipped) == {"consent_no": 1, "opt_out": 1}
    assert by_title["the first 40% of an mp4"]["error"].startswith("unreadable_container")
    assert store.read("stage_runs").num_rows == 12
    assert "sources: 12 seen, 5 ok" in summary.render()


def test_rerun_does_no_repeated_work_and_gives_identical_manifests(ray_local, demo_corpus, tmp_path):
    sources = write_sources(tmp_path / "s.csv", [str(demo_corpus / "cuts.mp4"), str(demo_corpus / "talking.mp4"),
                                                 str(demo_corpus / "bad" / "empty.mp4")])
    opts = CurateOptions(sources=str(sources), out=str(tmp_path / "out"), stages=("download",))
    curate(opts)
    store = ManifestStore(tmp_path / "out")
    first_hash = store.content_hash()
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file() and "summary" not in p.name}
    curate(opts)
    assert store.content_hash() == first_hash
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file() and "summary" not in p.name}
    assert after == mtimes  # nothing was rewritten: no repeated work


def _cluster_address(ray) -> str:
    return ray.get_runtime_context().gcs_address


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_finishes_without_duplicates(ray_local, demo_corpus, server, tmp_path):
    uris = [server.url(f"fault/slow/cuts.mp4?n={i}") for i in range(12)] + [server.url("missing.mp4")]
    sources = write_sources(tmp_path / "s.csv", uris)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipeline.cli", "curate", str(sources), "--out", str(out), "--stages", "download",
           "--address", _cluster_address(ray_local)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    store = ManifestStore(out)
    deadline = time.time() + 120
    while time.time() < deadline and len(store.shard_keys("sources")) < 2:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(store.shard_keys("sources"))
    assert 2 <= partial < len(uris), "the kill should land mid-run"

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = store.read("sources").to_pylist()
    assert len(rows) == len({r["input_id"] for r in rows}) == len(uris)

    clean = tmp_path / "clean"
    curate(CurateOptions(sources=str(sources), out=str(clean), stages=("download",)))
    assert ManifestStore(clean).content_hash() == store.content_hash()
