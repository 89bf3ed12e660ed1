"""Which checkpoints learned from a source: own clips, parents, and checkpoints too old to say.

The checkpoints here are meta.json files written by hand (what the trainer writes is checked in
tests/model/test_train.py and, through `emo build`, in tests/pipeline/test_build.py), so that a
chain with a parent outside the searched folder and one with no record can be laid out on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path

from manifests.lineage import describe_checkpoints, learned_from, merge_sources


def src(sid: str, license: str = "CC-BY-4.0", seconds: float = 2.0) -> dict:
    return {"source_id": sid, "sha256": sid * 4, "uri": f"file:///{sid}.mp4", "license": license,
            "consent": "yes", "clips": 1, "seconds": seconds}


def ckpt(folder: Path, sha: str, sources: list[dict] | None, parent: Path | None = None, parent_sha: str = "") -> Path:
    step = folder / "step-0000010"
    step.mkdir(parents=True)
    meta = {"format": "emo-forge/checkpoint/1", "stage": 1, "step": 10, "model_sha256": sha}
    if sources is not None:
        meta["sources"] = sources
    if parent is not None:
        meta["parent"] = {"path": str(parent), "model_sha256": parent_sha}
    (step / "meta.json").write_text(json.dumps(meta))
    return step


def test_a_source_reaches_every_checkpoint_downstream_of_it(tmp_path):
    runs, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    base = ckpt(elsewhere / "base", "a" * 64, [src("s1"), src("s2")])  # outside the searched folder
    tuned = ckpt(runs / "tuned", "b" * 64, [src("s3")], parent=base, parent_sha="a" * 64)
    tuned2 = ckpt(runs / "tuned2", "c" * 64, [src("s3")], parent=tuned, parent_sha="b" * 64)
    clean = ckpt(runs / "clean", "d" * 64, [src("s3")])
    old = ckpt(runs / "old", "e" * 64, None)  # made before checkpoints recorded their sources
    (runs / "notes").mkdir()
    (runs / "notes" / "meta.json").write_text('{"something": "else"}')  # not a checkpoint: ignored

    found = learned_from([runs], {"s2"})
    assert {a["checkpoint"]: a["via"] for a in found["affected"]} == {
        str(tuned): "a parent checkpoint", str(tuned2): "a parent checkpoint"}
    assert [u["checkpoint"] for u in found["unknown"]] == [str(old)]
    found = learned_from([runs, elsewhere], {"s3", "s1"})
    got = {a["checkpoint"]: (a["via"], a["sources"]) for a in found["affected"]}
    assert got == {str(base): ("its own training clips", ["s1"]), str(tuned): ("its own training clips", ["s1", "s3"]),
                   str(tuned2): ("its own training clips", ["s1", "s3"]), str(clean): ("its own training clips", ["s3"])}
    assert str(old) not in got and learned_from([runs], {"s9"})["affected"] == []
    assert clean.exists() and old.exists()  # nothing is deleted: naming them is the job


def test_detect_finds_the_checkpoint_by_its_id_and_tallies_its_licenses(tmp_path):
    base = ckpt(tmp_path / "base", "1234abcd" + "0" * 56, [src("s1", "CC-BY-4.0", 3.0), src("s2", "own", 1.5)])
    tuned = ckpt(tmp_path / "tuned", "feedbeef" + "0" * 56, [src("s3", "own", 2.0)], parent=base,
                 parent_sha="1234abcd" + "0" * 56)
    (hit,) = describe_checkpoints([tmp_path], "FEEDBEEF")
    assert hit["checkpoint"] == str(tuned) and [s["source_id"] for s in hit["sources"]] == ["s1", "s2", "s3"]
    assert hit["licenses"] == {"CC-BY-4.0": 3.0, "own": 3.5} and hit["consent"] == {"yes": 6.5}
    assert hit["unrecorded_ancestors"] == []
    assert describe_checkpoints([tmp_path], "00000000") == []


def test_a_resumed_run_keeps_what_it_learned_before():
    merged = merge_sources([src("s1"), src("s2", seconds=1.0)], [src("s2", seconds=4.0), src("s3")])
    assert [(e["source_id"], e["seconds"]) for e in merged] == [("s1", 2.0), ("s2", 4.0), ("s3", 2.0)]


def test_a_curate_out_is_searched_outside_its_data_folders(tmp_path):
    from manifests.lineage import find_checkpoints

    trained = ckpt(tmp_path / "train" / "stage1", "a" * 64, [src("s1")])
    ckpt(tmp_path / "clips" / "s1", "b" * 64, [src("s1")])  # a data folder: never walked
    assert [c.path for c in find_checkpoints(tmp_path)] == [trained]
    assert [c.path for c in find_checkpoints(trained)] == [trained]  # a step folder itself
