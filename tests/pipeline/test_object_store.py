"""OUT on object storage: a real S3-protocol server on 127.0.0.1 (moto's server mode), real Ray, real Parquet.

The demo corpus curated into s3:// must give the same manifests as into a folder; export, audit
and opt-out work on the bucket; a SIGKILLed driver resumes against it; compaction changes no
reader's answer. Nothing here mocks a boto or pyarrow call: the code speaks HTTP to the server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from manifests import ManifestStore
from manifests.compact import compact
from manifests.fs import Location
from pipeline.cli import main as emo
from pipeline.runner import CurateOptions, curate
from tests.pipeline.test_curate import write_sources
from tests.s3_server import list_keys, moto_s3, new_bucket


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as endpoint:
        yield endpoint


def row(i: int) -> dict:
    return {"input_id": f"in{i:04d}", "uri": f"/data/{i}.mp4", "status": "ok", "source_id": f"s{i:04d}"}


def test_a_scheme_nobody_serves_is_an_error_not_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.csv").write_text("uri\n/x.mp4\n")
    assert emo(["curate", "s.csv", "--out", "nope://bucket/run", "--stages", "download"]) == 2
    assert "nope://" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["s.csv"]  # no folder named 'nope:'


def test_store_on_s3_reads_like_local_and_compaction_keeps_every_answer(s3, tmp_path):
    uri = f"s3://{new_bucket(s3)}/run"
    stores = [ManifestStore(uri), ManifestStore(tmp_path)]
    for st in stores:
        for i in (5, 2, 9, 1):
            st.write_shard("sources", f"in{i:04d}", [row(i), row(i + 100)])
        st.write_shard("shots", "s0002", [])  # a shard with no rows still says "this source was done"
    remote, local = stores
    assert remote.content_hash() == local.content_hash()
    before = (remote.read("sources"), remote.shard_keys("sources"), remote.content_hash())
    assert compact(uri)["sources"] == {"live_shards": 4, "parts": 1, "rows": 8}
    fresh = ManifestStore(uri)
    assert fresh.read("sources").equals(before[0]) and fresh.shard_keys("sources") == before[1]
    assert fresh.content_hash() == before[2] and fresh.has_shard("shots", "s0002")
    assert fresh.read_shard("sources", "in0009").column("input_id").to_pylist() == ["in0009", "in0109"]
    # A shard written after compaction replaces its compacted copy; deleting one removes it everywhere.
    fresh.write_shard("sources", "in0009", [row(7)])
    fresh.delete_shards("sources", ["in0002"])
    assert fresh.read("sources").column("input_id").to_pylist() == ["in0001", "in0101", "in0005", "in0105", "in0007"]
    assert not [k for k in list_keys(s3, uri.split("/")[2]) if k.endswith(".tmp") or "/." in k]


def test_a_write_interrupted_half_way_leaves_no_object_on_the_bucket(s3):
    """A Ray worker's SIGTERM arrives as an exception inside a write. Writing straight into the
    store's output stream committed what was written so far when the `with` block closed it: a
    0-byte or truncated Parquet shard under its final name, which the rerun could not read."""
    bucket = new_bucket(s3)
    loc = Location(f"s3://{bucket}/run")
    loc.write_bytes("manifests/stage_runs/done.parquet", b"whole")

    def killed_half_way(fh):
        fh.write(b"PAR1 half a footer")
        raise SystemExit("SIGTERM")

    with pytest.raises(SystemExit):
        loc.write("manifests/stage_runs/download-s0001.parquet", killed_half_way)
    assert list_keys(s3, bucket) == ["run/manifests/stage_runs/done.parquet"]
    assert loc.read_bytes("manifests/stage_runs/done.parquet") == b"whole"
    big = bytes(range(256)) * 40_000  # 10 MB: more than one multipart part
    loc.write_bytes("clips/big.bin", big)
    assert loc.read_bytes("clips/big.bin") == big


@pytest.fixture(scope="module")
def demo_on_s3(s3, demo_curated, tmp_path_factory):
    """The demo corpus curated with every stage into a bucket, from the sources file the session's
    folder run (conftest.demo_curated) read, its server still up: (a copy of that folder, which
    these tests export, the bucket, sources)."""
    curated, sources, opts, _ = demo_curated
    local = tmp_path_factory.mktemp("s3demo") / "local"
    shutil.copytree(curated, local)
    uri = f"s3://{new_bucket(s3)}/demo"
    curate(CurateOptions(sources=str(sources), out=uri, config=opts.config))
    return local, uri, sources


def test_demo_into_s3_gives_the_same_manifests_as_into_a_folder(demo_on_s3):
    local, uri, _ = demo_on_s3
    a, b = ManifestStore(local), ManifestStore(uri)
    assert a.tables() == b.tables()
    # clips' sha256 are left out: libx264 was seen to encode the same frames to different bytes.
    assert a.content_hash([t for t in a.tables() if t != "clips"]) == b.content_hash([t for t in b.tables() if t != "clips"])
    assert a.read("clips").drop_columns(["sha256"]).equals(b.read("clips").drop_columns(["sha256"]))
    assert b.read("clips").num_rows > 0
    loc = Location(uri)
    for c in b.read("clips").to_pylist():  # every file a row names was uploaded
        assert loc.exists(c["crop_path"]) and loc.exists(c["audio_path"])
    assert not loc.files(".attempts")


def test_export_audit_and_optout_work_on_the_bucket(demo_on_s3, capsys):
    local, uri, sources = demo_on_s3
    assert emo(["export", uri]) == 0 and emo(["export", str(local)]) == 0
    loc = Location(uri)
    assert loc.exists("export/dataset_card.json")
    assert emo(["audit", uri]) == 0
    html = loc.read_text("audit/report.html")
    assert "<html" in html and "emo-forge audit" in html and "data:image/png;base64," in html
    assert emo(["audit", uri, "--verify"]) == 0
    assert "0 problem(s)" in capsys.readouterr().out

    store = ManifestStore(uri)
    victim = next(r for r in store.read("sources").to_pylist() if r["status"] == "ok" and r["source_id"] in
                  {c["source_id"] for c in store.read("clips").to_pylist()})
    sid = victim["source_id"]
    assert emo(["optout", uri, "--source", victim["sha256"]]) == 0
    store = ManifestStore(uri)
    assert sid not in {r["source_id"] for r in store.read("sources").to_pylist()}
    assert sid not in {c["source_id"] for c in store.read("clips").to_pylist()}
    assert not loc.files(f"clips/{sid}") and not loc.files(f"masks/{sid}") and not loc.exists(victim["media_path"])
    assert victim["sha256"] in loc.read_text("manifests/tombstones.jsonl")
    curate(CurateOptions(sources=str(sources), out=uri, stages=("download",)))  # a rerun does not bring it back
    assert sid not in {r["source_id"] for r in ManifestStore(uri).read("sources").to_pylist()}


@pytest.mark.slow
def test_sigkilled_driver_resumes_against_the_bucket(s3, ray_local, demo_corpus, server, tmp_path):
    uris = [server.url(f"fault/slow/cuts.mp4?n={i}") for i in range(10)] + [server.url("missing.mp4")]
    sources = write_sources(tmp_path / "s.csv", uris)
    uri = f"s3://{new_bucket(s3)}/killed"
    cmd = [sys.executable, "-m", "pipeline.cli", "curate", str(sources), "--out", uri, "--stages", "download",
           "--address", ray_local.get_runtime_context().gcs_address, "--endpoint-url", s3]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    store = ManifestStore(uri)
    deadline = time.time() + 120
    while time.time() < deadline and len(store.shard_keys("sources")) < 2:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(store.shard_keys("sources")) < len(uris), "the kill should land mid-run"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = store.read("sources").to_pylist()
    assert len(rows) == len({r["input_id"] for r in rows}) == len(uris)
    clean = tmp_path / "clean"
    curate(CurateOptions(sources=str(sources), out=str(clean), stages=("download",)))
    assert ManifestStore(clean).content_hash() == store.content_hash()
