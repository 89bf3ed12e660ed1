"""`emo build --out s3://...`: a real S3-protocol server on 127.0.0.1 (moto's server mode). Curate,
export and train read and write the bucket; the lock, build/ and the sample are uploaded; a rebuild
with a fresh local cache finds everything up to date from the bucket alone."""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys

import pytest

from manifests import ManifestStore
from manifests.fs import Location
from pipeline.audit import build_lineage
from pipeline.build import build
from tests.pipeline.test_build import OVERFIT, actions, build_doc, footage, write  # noqa: F401  (footage: a fixture)
from tests.s3_server import moto_s3, new_bucket


@pytest.fixture(scope="module", autouse=True)
def _torch_on_one_thread(one_cpu_thread):
    yield


def test_build_into_a_bucket_and_rebuild_from_it(ray_local, footage, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("EMO_CACHE", str(tmp_path / "cache"))
    doc = build_doc(footage)
    doc["train"]["stages"] = [{"stage": 1, "steps": 2, "config": {**OVERFIT}},
                              {"stage": 2, "steps": 1, "config": {"batch_size": 1, "num_frames": 6}}]
    bf = write(tmp_path / "build.yaml", doc)
    with moto_s3() as endpoint:
        uri = f"s3://{new_bucket(endpoint)}/run"
        report = build(bf, uri)
        assert set(actions(report).values()) == {"ran"}, report.render()
        loc = Location(uri)
        lock = json.loads(loc.read_text("emo.lock"))
        ckpt = lock["steps"]["train/stage2"]["outputs"]["checkpoint"]
        assert ckpt.startswith("train/stage2/step-") and loc.exists(f"{ckpt}/model.safetensors")
        assert loc.exists("samples/hanks.mp4") and loc.exists("export/dataset_card.json")
        assert ManifestStore(uri).read("clips").num_rows == lock["steps"]["export"]["outputs"]["clips"] > 0
        assert not (tmp_path / "run").exists()  # nothing was written to a local folder named after the URI
        _audit_shows_the_lineage_of_the_lock(uri, loc, tmp_path)

        monkeypatch.setenv("EMO_CACHE", str(tmp_path / "other-cache"))  # another machine: only the bucket
        again = build(bf, uri)
        assert set(actions(again).values()) == {"up to date"}, again.render()


def _audit_shows_the_lineage_of_the_lock(uri: str, loc: Location, tmp_path) -> None:
    """`emo audit s3://...` as a user runs it prints (and its report shows) the lineage that the
    bucket's emo.lock gives when read as a local OUT."""
    local = tmp_path / "lock-only"
    loc.get_file("emo.lock", local / "emo.lock")
    expected = build_lineage(local)
    assert any(line.startswith("checkpoint train/stage2/") for line in expected)
    assert any(line.startswith("video samples/hanks.mp4") for line in expected)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "audit", uri], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = done.stdout.splitlines()
    assert printed[:len(expected)] == expected, done.stdout
    report = loc.read_text("audit/report.html")
    assert "Build lineage (emo.lock)" in report and all(html.escape(line) in report for line in expected)
