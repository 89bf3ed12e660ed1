"""`emo train` with --data and --out on object storage: a real S3-protocol server on 127.0.0.1
(moto's server mode). Clips come through a bounded local cache, checkpoints go to the bucket as whole
objects, --resume and --init-from find them there, and lineage reads their meta.json in the bucket."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from manifests.fs import Location
from manifests.lineage import find_checkpoints, learned_from
from model.remote import ClipFiles
from model.train import main
from tests.model.clip_cache_worker import BLOB, blob, fetch_in_lockstep
from tests.model.test_train import losses, write_config
from tests.s3_server import list_keys, moto_s3, new_bucket


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture
def data_uri(s3, clips_out, tmp_path, monkeypatch):
    """The tiny clips OUT uploaded to a bucket; caches under this test's tmp folder."""
    monkeypatch.setenv("EMO_CACHE", str(tmp_path / "cache"))
    uri = f"s3://{new_bucket(s3)}/out"
    loc = Location(uri)
    for p in sorted(clips_out.rglob("*")):
        if p.is_file() and "cache" not in p.relative_to(clips_out).parts:
            loc.put_file(p, p.relative_to(clips_out).as_posix())
    return uri


def test_the_clip_cache_stays_within_its_budget(data_uri, clips_out):
    rels = sorted(p.relative_to(clips_out).as_posix() for p in (clips_out / "clips").rglob("*.mp4"))
    assert len(rels) >= 3
    budget = max((clips_out / r).stat().st_size for r in rels) + 1  # room for one clip at a time
    files = ClipFiles(data_uri, max_bytes=budget)
    for r in rels:
        path = files.local(r)
        assert path.read_bytes() == (clips_out / r).read_bytes()
        held = [p for p in files.dir.rglob("*") if p.is_file() and not p.name.startswith(".")]  # not the lock, the count
        assert sum(p.stat().st_size for p in held) <= budget and held == [path]
    assert files.local(rels[0]).read_bytes() == (clips_out / rels[0]).read_bytes()  # evicted, fetched again


def test_the_clip_cache_budget_holds_across_processes_sharing_it(s3, tmp_path, monkeypatch):
    """Three processes on one cache folder (as three DataLoader workers are), each fetching two files
    after all have fetched one: together they stay within the one budget, not three."""
    monkeypatch.setenv("EMO_CACHE", str(tmp_path / "cache"))  # spawned children inherit it
    uri = f"s3://{new_bucket(s3)}/out"
    loc = Location(uri)
    names = [f"clips/s{i}/c.mp4" for i in range(6)]
    for name in names:
        loc.write_bytes(name, blob(name))
    budget = 3 * BLOB + BLOB // 2  # room for three files of the six
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding S3 client threads
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=fetch_in_lockstep, args=(uri, names[k::3], budget, barrier)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    cache = ClipFiles(uri, max_bytes=budget).dir
    held = [p for p in cache.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert sum(p.stat().st_size for p in held) <= budget and len(held) == 3
    assert int((cache / ".bytes").read_text()) == 3 * BLOB  # the shared count agrees with the disk


def test_train_from_and_into_the_bucket_resumes_there_like_a_local_run(s3, data_uri, clips_out, tmp_path):
    cfg = write_config(tmp_path / "c.json", num_frames=6, batch_size=1, keep_checkpoints=1)
    common = ["--stage", "2", "--config", str(cfg), "--seed", "3", "--quiet"]
    main([*common, "--data", str(clips_out), "--out", str(tmp_path / "local"), "--steps", "3"])
    run = data_uri.rsplit("/", 1)[0] + "/train/stage2"
    main([*common, "--data", data_uri, "--out", run, "--steps", "2"])
    main([*common, "--data", data_uri, "--out", run, "--steps", "3", "--resume"])
    bucket = run.split("/")[2]
    keys = list_keys(s3, bucket, "train/stage2/")
    assert "train/stage2/step-0000003/meta.json" in keys and "train/stage2/step-0000003/model.safetensors" in keys
    assert not [k for k in keys if "step-0000002" in k]  # keep_checkpoints=1: the older step was deleted
    remote_loss = Location(run)
    (tmp_path / "r").mkdir()
    remote_loss.get_file("loss.csv", tmp_path / "r" / "loss.csv")
    assert losses(tmp_path / "r") == losses(tmp_path / "local")  # same batches, same weights, resumed from the bucket
    local_meta = json.loads((tmp_path / "local" / "step-0000003" / "meta.json").read_text())
    meta = json.loads(remote_loss.read_text("step-0000003/meta.json"))
    assert meta["model_sha256"] == local_meta["model_sha256"]

    # A later stage starts from the checkpoint in the bucket; lineage follows it there.
    main(["--stage", "3", "--config", str(cfg), "--quiet", "--data", data_uri, "--init-from", run,
          "--out", data_uri.rsplit("/", 1)[0] + "/train/stage3", "--steps", "1"])
    found = {str(c.path): c for c in find_checkpoints(data_uri.rsplit("/", 1)[0])}
    stage3 = found[data_uri.rsplit("/", 1)[0] + "/train/stage3/step-0000001"]
    assert stage3.meta["parent"]["path"] == run + "/step-0000003"
    sid = meta["sources"][0]["source_id"]
    affected = learned_from([data_uri.rsplit("/", 1)[0]], {sid})["affected"]
    assert {a["checkpoint"] for a in affected} == set(found) and len(found) == 2
