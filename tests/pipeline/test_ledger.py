"""pipeline/ledger.py on a real store: what a run redoes, and `emo curate` redoing a stage whose settings changed.

The e2e tests run real stages on a real clip (a piece of the demo's talking.mp4) through real Ray:
`emo curate` as a user runs it (a subprocess), and curate() against a real loopback HTTP server
whose /fault/flaky/ path answers 500 twice before it serves the file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from manifests import ManifestStore
from manifests.compact import compact
from pipeline.ledger import Ledger, downstream, run_key
from pipeline.plan import build_stages
from pipeline.runner import CurateOptions, curate
from tests.pipeline.test_build import cut
from tests.pipeline.test_curate import write_sources

ROOT = Path(__file__).resolve().parents[2]
MEDIA = ["shots", "faces", "diarize", "quality"]


def record_all(ledger: Ledger, stages, key: str, status: str = "ok", error: str | None = None) -> None:
    for s in stages:
        ledger.record(s.name, key, status, s.config_hash(), error=error)


def finished(out: Path) -> dict[tuple[str, str], object]:
    rows = ManifestStore(out).read("stage_runs", columns=["stage", "source_id", "finished_at"]).to_pylist()
    return {(r["stage"], r["source_id"]): r["finished_at"] for r in rows}


def test_record_writes_the_stage_runs_row_and_status_reads_it_back(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.record("faces", "s1", "failed", "abc", error="undecodable: frame 3", n_rows=0, seconds=1.5,
                  counters={"failed_undecodable": 1})
    (row,) = ManifestStore(tmp_path).read_shard("stage_runs", "faces-s1").to_pylist()
    assert row["stage"] == "faces" and row["source_id"] == "s1" and row["config_hash"] == "abc"
    assert row["error"] == "undecodable: frame 3" and row["counters"] == [("failed_undecodable", 1)]
    assert Ledger(tmp_path).status("faces", "s1") == "failed"  # a fresh ledger reads the disk
    assert Ledger(tmp_path).status("shots", "s1") is None


def test_pending_is_missing_then_stale_by_settings_with_what_reads_the_stale_output(tmp_path):
    stages = build_stages(MEDIA)
    ledger = Ledger(tmp_path)
    record_all(ledger, stages, "s1")
    assert ledger.pending(stages, ["s1", "s2"]) == {"s2": MEDIA}
    assert Ledger(tmp_path).pending(stages, ["s1"]) == {}

    changed = build_stages(MEDIA, {"faces": {"margin": 0.31}})
    assert Ledger(tmp_path).pending(changed, ["s1"]) == {"s1": ["faces", "diarize", "quality"]}
    changed = build_stages(MEDIA, {"quality": {"rules": {"low_sync": -1.0}}})
    assert Ledger(tmp_path).pending(changed, ["s1"]) == {"s1": ["quality"]}
    # A missing middle run redoes what reads it, not what it reads.
    ledger.forget(["s1"], ["diarize"])
    assert ledger.pending(stages, ["s1"]) == {"s1": ["diarize", "quality"]}


def test_a_revised_stage_is_redone_with_what_reads_it_and_an_unrevised_one_keeps_its_hash(tmp_path, monkeypatch):
    stages = build_stages(MEDIA)
    before = {s.name: s.config_hash() for s in stages}
    record_all(Ledger(tmp_path), stages, "s1")
    assert Ledger(tmp_path).pending(stages, ["s1"]) == {}

    faces = type(stages[1])
    monkeypatch.setattr(faces, "revision", faces.revision + 1)  # a release that changes what faces writes
    assert faces().config_hash() != before["faces"]
    assert Ledger(tmp_path).pending(stages, ["s1"]) == {"s1": ["faces", "diarize", "quality"]}
    monkeypatch.undo()
    # Revision 0 is not in the hash, so a stage never revised keeps the hash its OUTs were made with.
    shots = stages[0]
    assert shots.revision == 0 and "revision" not in shots.hashed()
    diarize = stages[2]
    assert diarize.hashed()["revision"] == diarize.revision >= 1


def test_downstream_follows_reads_and_uses():
    after = downstream(build_stages(MEDIA))
    assert after == {"shots": {"faces", "diarize", "quality"}, "faces": {"diarize", "quality"},
                     "diarize": {"quality"}, "quality": set()}


@pytest.mark.parametrize("error,retry", [("http_503: server error", True), ("http_429: slow down", True),
                                         ("connection_error: refused", True), ("http_404: not found", False),
                                         ("timeout: fetching took longer than its limit of 8 s", False),
                                         ("not_media: text/plain", False)])
def test_a_failed_download_is_retried_when_its_reason_is_passing(tmp_path, error, retry):
    (download,) = build_stages(["download"])
    ledger = Ledger(tmp_path)
    ledger.record("download", "i1", "failed", download.config_hash(), error=error)
    assert ledger.pending([download], ["i1"]) == ({"i1": ["download"]} if retry else {})


def test_new_download_limits_retry_its_failures_but_do_not_refetch_what_arrived(tmp_path):
    (download,) = build_stages(["download"])
    ledger = Ledger(tmp_path)
    ledger.record("download", "ok1", "ok", download.config_hash())
    ledger.record("download", "big", "failed", download.config_hash(), error="too_large: 9 bytes > cap 8")
    ledger.record("download", "no", "skipped", download.config_hash(), error="consent_no: the sources file says no")
    (bigger,) = build_stages(["download"], {"download": {"max_bytes": 1 << 40}})
    assert ledger.pending([download], ["ok1", "big", "no"]) == {}
    assert ledger.pending([bigger], ["ok1", "big", "no"]) == {"big": ["download"]}


def test_forget_deletes_only_the_named_runs_live_or_compacted(tmp_path):
    stages = build_stages(MEDIA)
    ledger = Ledger(tmp_path)
    for key in ("s1", "s2", "s3"):
        record_all(ledger, stages, key)
    compact(tmp_path, ["stage_runs"])  # the rows now live in a compacted part, not one file each
    ledger.record("shots", "s4", "ok", "h")
    assert ledger.forget(["s1"], ["faces", "quality"]) == 2
    assert ledger.forget(["s2", "s4"]) == 5
    assert ledger.forget(["nothing"]) == 0
    keys = ManifestStore(tmp_path).shard_keys("stage_runs")
    assert keys == {run_key(s, k) for s in MEDIA for k in ("s1", "s3")} - {"faces-s1", "quality-s1"}
    assert ledger.status("faces", "s1") is None
    assert Ledger(tmp_path).status("shots", "s1") == "ok" and Ledger(tmp_path).status("shots", "s2") is None


def test_a_redone_stage_forgets_its_old_files_of_that_source_only(tmp_path):
    from pipeline.runner import _claim

    stages = build_stages(MEDIA)
    ledger = Ledger(tmp_path)
    files = {sid: [tmp_path / "clips" / sid / f"{sid}-t00-c0{k}.{ext}" for k in (0, 1) for ext in ("mp4", "wav")]
             + [tmp_path / "masks" / sid / f"{sid}-t00.face.png"] for sid in ("s1", "s2")}
    for sid, paths in files.items():
        record_all(ledger, stages, sid)
        for p in paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")
    store = ManifestStore(tmp_path)
    store.write_shard("splits", "s1", [{"clip_id": "s1-t00-c00", "source_id": "s1", "split": "val"}])
    stricter = build_stages(MEDIA, {"quality": {"rules": {"blurry": 90.0}}})
    assert _claim(ledger, stricter, ["s1", "s2"]) == {"s1": ["quality"], "s2": ["quality"]}
    assert not store.shard_keys("splits")  # the export's decisions on the redone clips are void
    # Quality's clips of both go (its rerun writes the ones it keeps); the faces stage's masks stay.
    assert not (tmp_path / "clips").exists() or not any((tmp_path / "clips").rglob("*.*"))
    assert all(p.exists() for sid in files for p in files[sid] if "masks" in p.parts)
    for paths in files.values():  # a new source's first run forgets nothing
        for p in paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")
    assert _claim(ledger, stricter, ["s1", "s3"]) == {"s1": ["quality"], "s3": MEDIA}
    assert all(p.exists() for p in files["s2"]) and all(p.exists() for p in files["s1"])  # s1 has no row: not run yet
    record_all(ledger, stricter, "s1")
    ledger.record("faces", "s1", "ok", "an older faces")
    assert _claim(ledger, stricter, ["s1"]) == {"s1": ["faces", "diarize", "quality"]}
    assert not any(p.exists() for p in files["s1"]) and all(p.exists() for p in files["s2"])


def test_a_passing_server_error_is_retried_by_the_next_curate(ray_local, demo_corpus, server, tmp_path):
    """/fault/flaky/ answers 500 twice, then the file: with one retry the first run fails, the second fetches it."""
    sources = write_sources(tmp_path / "s.csv", [server.url("fault/flaky/cuts.mp4"), server.url("missing.mp4")])
    opts = CurateOptions(sources=str(sources), out=str(tmp_path / "out"), stages=("download",),
                         config={"download": {"retries": 1, "backoff_s": 0.01}})
    first = curate(opts)
    assert dict(first.failed) == {"http_500": 1, "http_404": 1}
    before = finished(tmp_path / "out")
    second = curate(opts)
    assert second.ok == 1 and dict(second.failed) == {"http_404": 1}
    after = finished(tmp_path / "out")
    changed = {k for k in after if after[k] != before[k]}
    assert len(changed) == 1  # the flaky input was fetched again; the 404 was left alone
    (row,) = [r for r in ManifestStore(tmp_path / "out").read("sources").to_pylist() if "flaky" in r["uri"]]
    assert row["status"] == "ok" and row["input_id"] == next(iter(changed))[1]


def emo_curate(sources: Path, out: Path, config: dict) -> None:
    cfg = out.parent / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "curate", str(sources), "--out", str(out),
                           "--config", str(cfg), "--num-cpus", "2"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_emo_curate_redoes_a_stage_whose_settings_changed_and_what_reads_it(demo_corpus, tmp_path):
    clip = cut(demo_corpus / "talking.mp4", tmp_path / "talk.mp4", 10, 4)
    sources = write_sources(tmp_path / "s.csv", [str(clip)])
    out = tmp_path / "out"
    config = yaml.safe_load((demo_corpus / "config.yaml").read_text())
    emo_curate(sources, out, config)
    first = finished(out)
    assert {stage for stage, _ in first} == {"download", *MEDIA}
    assert set(ManifestStore(out).read("stage_runs").column("status").to_pylist()) == {"ok"}

    config["face-crop"] = {"margin": 0.31}  # the design's name for faces, as a user may write it
    emo_curate(sources, out, config)
    second = finished(out)
    changed = {stage for (stage, key) in second if second[(stage, key)] != first[(stage, key)]}
    assert changed == {"faces", "diarize", "quality"}  # download and shots were left alone
    runs = {r["stage"]: r for r in ManifestStore(out).read("stage_runs").to_pylist()}
    assert runs["faces"]["config_hash"] == build_stages(["faces"], {"faces": {"margin": 0.31}})[0].config_hash()
    # Rows of what was redone are the new run's, one per table and source as before.
    assert ManifestStore(out).read("tracks").num_rows == runs["faces"]["n_rows"]
    assert clip_files(out) == named_clip_files(out) and named_clip_files(out)

    # Settings that keep no clip: the rerun leaves none of the earlier clips' files behind.
    config["quality"]["rules"]["face_too_small"] = 100000
    emo_curate(sources, out, config)
    assert ManifestStore(out).read("clips").num_rows == 0 and ManifestStore(out).read("rejections").num_rows
    assert clip_files(out) == set()


def clip_files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in (out / "clips").rglob("*") if p.is_file()} if (out / "clips").exists() else set()


def named_clip_files(out: Path) -> set[str]:
    return {c[k] for c in ManifestStore(out).read("clips").to_pylist() for k in ("crop_path", "audio_path")}
