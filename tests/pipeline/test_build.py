"""`emo build` on footage cut from the demo corpus, with the tiny model: only what changed reruns.

The footage is three pieces of the demo's talking.mp4 (real video, real speech), 5-6 s each, so
curation runs every stage in seconds. One base build (two pieces; curate, export, train stages
1-3, one sample) is shared by the module; tests that change the build work on a copy of its OUT.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file

from manifests import ManifestStore
from manifests.lineage import checkpoints_of
from manifests.splits import exported_clips
from model.checkpoint import read_meta, resolve_checkpoint
from model.config import EMO_MODELS
from pipeline.audit import build_lineage, report
from pipeline.build import build
from pipeline.buildfile import BuildFileError, load_build_file
from pipeline.cli import main as cli_main
from stages.media.video_io import write_mp4

OVERFIT = {"overfit_batch": True, "batch_size": 1, "cond_drop_prob": 0.0}
STAGE1_STEPS = 30


def cut(src: Path, dst: Path, start_s: float, seconds: float, mirror: bool = False) -> Path:
    """A piece of a video with its audio (16 kHz mono), re-encoded (and mirrored): footage of its own."""
    with av.open(str(src)) as c:
        fps = float(c.streams.video[0].average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)
                  if start_s <= float(f.pts * f.time_base) < start_s + seconds]
    frames = [np.ascontiguousarray(f[:, ::-1]) for f in frames] if mirror else frames
    with av.open(str(src)) as c:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        audio = np.concatenate([g.to_ndarray().reshape(-1) for f in c.decode(audio=0) for g in resampler.resample(f)])
    write_mp4(dst, frames, fps, audio=audio[int(start_s * 16000):int((start_s + seconds) * 16000)], audio_rate=16000)
    return dst


@pytest.fixture(scope="module", autouse=True)
def _torch_on_one_thread(one_cpu_thread):
    yield


@pytest.fixture
def cli():
    """`emo` in-process; its logging.basicConfig would leave a handler on this test's captured stderr."""
    handlers = logging.root.handlers[:]
    yield cli_main
    logging.root.handlers[:] = handlers


@pytest.fixture(scope="module")
def footage(demo_corpus, tmp_path_factory) -> dict[str, Path]:
    """Three pieces of talking.mp4 where someone speaks, a portrait and 0.5 s of speech to sample with.

    c, the source a test adds, is mirrored: all three show the same man, and export's near-duplicate
    rule (across sources) would otherwise fold c's clips into a's and leave the training set as it was.
    """
    d = tmp_path_factory.mktemp("footage")
    talking = demo_corpus / "talking.mp4"
    wav, sr = sf.read(str(demo_corpus / "speech.wav"), dtype="float32")
    sf.write(d / "speech.wav", wav[10 * sr:int(10.5 * sr)], sr)
    return {"a": cut(talking, d / "a.mp4", 10, 6), "b": cut(talking, d / "b.mp4", 22, 5),
            "c": cut(talking, d / "c.mp4", 15, 5, mirror=True), "portrait": demo_corpus / "portraits" / "hanks.png",
            "speech": d / "speech.wav", "curate_config": demo_corpus / "config.yaml"}


def build_doc(footage: dict[str, Path], sources=("a", "b"), stage2_lr: float = 3e-3) -> dict:
    return {
        "sources": [{"uri": str(footage[s]), "license": "CC-BY-4.0", "consent": "yes", "category": "speech"}
                    for s in sources],
        "curate": {"stages": ["download", "shots", "faces", "diarize", "quality"],
                   "config": {"quality": {"rules": {"low_sync": 0.0, "voice_over": 1}}}},  # every candidate, whatever its voice
        "export": {"val_fraction": 0.2},
        "train": {"model": "tiny", "seed": 0, "stages": [
            {"stage": 1, "steps": STAGE1_STEPS, "config": {**OVERFIT, "learning_rate": 3e-3}},
            {"stage": 2, "steps": 2, "config": {"batch_size": 1, "num_frames": 6, "learning_rate": stage2_lr}},
            {"stage": 3, "steps": 1, "config": {"batch_size": 1, "num_frames": 6}}]},
        "samples": [{"image": str(footage["portrait"]), "audio": str(footage["speech"]), "name": "hanks",
                     "steps": 2}],
    }


def write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def files(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def actions(report) -> dict[str, str]:
    return {s.name: s.action for s in report.steps}


@pytest.fixture(scope="module")
def base(ray_local, footage, tmp_path_factory):
    """The base build: (build file, OUT, report)."""
    root = tmp_path_factory.mktemp("base")
    bf = write(root / "build.yaml", build_doc(footage))
    report = build(bf, root / "out")
    return bf, root / "out", report


def copy_out(base, tmp_path: Path) -> Path:
    shutil.copytree(base[1], tmp_path / "out")
    return tmp_path / "out"


def test_first_build_runs_every_step(base):
    _, out, report = base
    assert set(actions(report).values()) == {"ran"}
    assert list(actions(report)) == ["curate", "export", "train/stage1", "train/stage2", "train/stage3",
                                     "sample/hanks"]
    lock = json.loads((out / "emo.lock").read_text())
    assert lock["steps"]["curate"]["outputs"]["processed"] == {s: 2 for s in
                                                              ("download", "shots", "faces", "diarize", "quality")}
    assert lock["steps"]["export"]["outputs"]["clips"] > 0
    assert (out / "samples" / "hanks.mp4").is_file()


def test_a_rebuild_with_nothing_changed_does_nothing(base, cli, capsys):
    bf, out, _ = base
    before = files(out)
    report = build(bf, out)
    assert report.ran == [] and set(actions(report).values()) == {"up to date"}
    assert "nothing to do: all 6 steps are up to date" in report.render()
    assert files(out) == before  # not one file written, the lock included
    assert cli(["build", str(bf), "--out", str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_dry_run_says_what_would_run_and_why_and_changes_nothing(base, footage, tmp_path):
    _, out, _ = base
    bf = write(tmp_path / "build.yaml", build_doc(footage, sources=("a", "b", "c"), stage2_lr=1e-3))
    before = files(out)
    report = build(bf, out, dry_run=True)
    assert files(out) == before
    why = {s.name: s.reason for s in report.steps}
    assert set(actions(report).values()) == {"would run"}
    assert why["curate"] == f"sources[{footage['c']}] added"
    assert "dataset_hash" in why["export"] and "<new output of curate>" in why["export"]
    assert "learning_rate: 0.003 -> 0.001" in why["train/stage2"]
    assert "learning_rate" not in why["train/stage1"]


def test_changing_a_training_setting_retrains_from_that_stage_on(base, footage, tmp_path):
    out = copy_out(base, tmp_path)
    manifests = {p: t for p, t in files(out).items() if "manifests" in p.parts or "export" in p.parts}
    bf = write(tmp_path / "build.yaml", build_doc(footage, stage2_lr=1e-3))
    report = build(bf, out)
    assert actions(report) == {"curate": "up to date", "export": "up to date", "train/stage1": "up to date",
                               "train/stage2": "ran", "train/stage3": "ran", "sample/hanks": "ran"}
    assert {p: t for p, t in files(out).items() if p in manifests} == manifests  # curation and export untouched
    assert read_meta(out / "train" / "stage2")["config"]["learning_rate"] == 1e-3
    assert read_meta(out / "train" / "stage2")["parent"]["path"].startswith(str(out / "train" / "stage1"))


def test_adding_a_source_curates_only_it_then_reruns_what_reads_the_dataset(base, footage, tmp_path):
    out = copy_out(base, tmp_path)
    store = ManifestStore(out)
    runs_before = {(r["stage"], r["source_id"]): r["finished_at"] for r in store.read("stage_runs").to_pylist()}
    bf = write(tmp_path / "build.yaml", build_doc(footage, sources=("a", "b", "c")))
    report = build(bf, out)
    done = actions(report)
    assert {k: v for k, v in done.items() if not k.startswith("sample/")} == dict.fromkeys(
        ["curate", "export", "train/stage1", "train/stage2", "train/stage3"], "ran"), report.render()
    lock = json.loads((out / "emo.lock").read_text())
    base_lock = json.loads((base[1] / "emo.lock").read_text())
    # The sample reads the model, not the dataset: it reruns exactly when training on the new dataset
    # gave other weights (a step or two of training may draw the same clips as before).
    model = [lk["steps"]["train/stage3"]["outputs"]["model_sha256"] for lk in (lock, base_lock)]
    assert done["sample/hanks"] == ("ran" if model[0] != model[1] else "up to date"), report.render()
    assert lock["steps"]["curate"]["outputs"]["processed"] == {s: 1 for s in
                                                              ("download", "shots", "faces", "diarize", "quality")}
    runs = {(r["stage"], r["source_id"]): r["finished_at"] for r in store.read("stage_runs").to_pylist()}
    assert {k: runs[k] for k in runs_before} == runs_before  # the two old sources: not one stage rerun
    new = next(r for r in store.read("sources").to_pylist() if r["uri"] == str(footage["c"]))
    assert {k for k in runs if k not in runs_before} == {("download", new["input_id"])} | {
        (s, new["source_id"]) for s in ("shots", "faces", "diarize", "quality")}
    assert lock["steps"]["export"]["outputs"]["manifest_hash"] != base_lock["steps"]["export"]["outputs"]["manifest_hash"]
    assert lock["steps"]["train/stage1"]["outputs"]["manifest_hash"] == lock["steps"]["export"]["outputs"]["clips_hash"]


def test_a_dropped_source_leaves_the_dataset(base, footage, tmp_path):
    out = copy_out(base, tmp_path)
    store = ManifestStore(out)
    gone = next(r for r in store.read("sources").to_pylist() if r["uri"] == str(footage["b"]))
    report = build(write(tmp_path / "build.yaml", build_doc(footage, sources=("a",))), out)
    assert actions(report)["curate"] == actions(report)["export"] == "ran"
    lock = json.loads((out / "emo.lock").read_text())["steps"]
    assert lock["curate"]["outputs"]["processed"] == {}  # nothing to curate, only rows to forget
    assert gone["source_id"] not in {r["source_id"] for r in store.read("sources").to_pylist()}
    assert gone["source_id"] not in {c["source_id"] for c in store.read("clips").to_pylist()}
    assert not store.has_shard("tracks", gone["source_id"])
    # Its files go with its rows: media, audio, masks and clips.
    assert gone["media_path"] and not (out / gone["media_path"]).exists()
    assert not (out / gone["audio_path"]).exists()
    assert not [p for p in out.rglob("*") if gone["source_id"] in p.name]


def test_changing_a_curate_setting_redoes_that_stage_for_every_source(base, footage, tmp_path):
    out = copy_out(base, tmp_path)
    doc = build_doc(footage)
    # Both thresholds are far below this footage's confidence (its jaw follows its audio: about 20), so
    # the same clips are kept and what is tested is only that the setting's change redoes quality.
    doc["curate"]["config"]["quality"]["rules"]["low_sync"] = -1.0
    report = build(write(tmp_path / "build.yaml", doc), out)
    assert report.steps[0].reason == "config.quality.rules.low_sync: 0.0 -> -1.0"
    lock = json.loads((out / "emo.lock").read_text())["steps"]
    assert lock["curate"]["outputs"]["processed"] == {"quality": 2}  # shots, faces, diarize kept


def test_the_lock_chains_the_sample_back_to_the_sources(base, footage):
    _, out, _ = base
    lock = json.loads((out / "emo.lock").read_text())
    steps = lock["steps"]
    sample = steps["sample/hanks"]["outputs"]
    sidecar = json.loads((out / (sample["video"] + ".json")).read_text())
    assert sample["checkpoint_sha256"] == sidecar["checkpoint_sha256"] == steps["train/stage3"]["outputs"]["model_sha256"]
    assert steps["train/stage3"]["inputs"]["parent_sha256"] == steps["train/stage2"]["outputs"]["model_sha256"]
    assert steps["train/stage2"]["inputs"]["parent_sha256"] == steps["train/stage1"]["outputs"]["model_sha256"]
    for k in (1, 2, 3):
        o = steps[f"train/stage{k}"]
        assert o["inputs"]["clips_hash"] == o["outputs"]["manifest_hash"] == steps["export"]["outputs"]["clips_hash"]
    assert steps["export"]["inputs"]["dataset_hash"] == steps["curate"]["outputs"]["dataset_hash"]
    card = json.loads((out / "export" / "dataset_card.json").read_text())
    assert card["manifest_hash"] == steps["export"]["outputs"]["manifest_hash"]
    assert set(steps["curate"]["inputs"]["sources"]) == {str(footage["a"]), str(footage["b"])}
    for entry in steps.values():
        assert entry["versions"]["torch"] == torch.__version__.split("+")[0] and entry["versions"]["emo-forge"]
        assert entry["finished_at"] and len(entry["key"]) == 64
    lines = build_lineage(out)
    assert any(line.startswith("checkpoint train/stage3/") and card["manifest_hash"][:12] in line for line in lines)
    assert any(line.startswith("video samples/hanks.mp4") and sample["checkpoint_sha256"][:12] in line
               for line in lines)


def test_a_video_leads_to_what_its_model_learned_from_and_an_optout_names_the_models(base, footage, cli, capsys,
                                                                                    tmp_path):
    _, out, _ = base
    store = ManifestStore(out)
    sources = {r["uri"]: r for r in store.read("sources").to_pylist()}
    seconds = {}
    for c in exported_clips(store):
        if c["split"] in (None, "train"):
            seconds[c["source_id"]] = seconds.get(c["source_id"], 0.0) + c["n_frames"] / c["fps"]
    assert len(seconds) == 2  # both pieces of footage reach the training set
    # The watermark in the sample names stage 3; its record (with stages 2 and 1 behind it) names the sources.
    assert cli(["detect", str(out / "samples" / "hanks.mp4"), "--checkpoints", str(out)]) == 0
    printed = capsys.readouterr().out
    found, _ = json.JSONDecoder().raw_decode(printed)
    (made_by,) = found["checkpoints"]
    assert Path(made_by["checkpoint"]) == resolve_checkpoint(out / "train" / "stage3")
    assert {s["source_id"]: s["seconds"] for s in made_by["sources"]} == pytest.approx(seconds)
    assert {s["uri"] for s in made_by["sources"]} == {str(footage["a"]), str(footage["b"])}
    assert made_by["licenses"] == {"CC-BY-4.0": pytest.approx(sum(seconds.values()), abs=1e-3)}
    assert "learned from 2 source(s)" in printed
    # Opting out one piece names every checkpoint trained on it, and the tombstone keeps the list.
    copy = copy_out(base, tmp_path)
    gone = sources[str(footage["b"])]
    assert cli(["optout", str(copy), "--source", str(footage["b"])]) == 0
    result = json.loads(capsys.readouterr().out)
    affected = {Path(a["checkpoint"]).parent.name: a for a in result["checkpoints_affected"]}
    assert sorted(affected) == ["stage1", "stage2", "stage3"]
    assert all(a["sources"] == [gone["source_id"]] and a["via"] == "its own training clips" for a in affected.values())
    tomb = json.loads((copy / "manifests" / "tombstones.jsonl").read_text().splitlines()[-1])
    assert sorted(Path(p).parent.name for p in tomb["checkpoints"]) == ["stage1", "stage2", "stage3"]
    # Later, the audit still flags them: their record names a source whose sha256 is tombstoned.
    assert [m["opted_out"] for m in checkpoints_of(out)] == [[], [], []]  # the shared base: nothing opted out
    page = report(copy).read_text()
    assert page.count(f"learned from 1 opted-out source(s): {gone['source_id']}") == 3


def test_a_fine_tune_starts_from_its_parent_and_records_it(base, footage, tmp_path):
    """Same data, seed and fixed batch as the parent's stage 1: the first loss (from the parent's EMA) is at or below where the parent ended.

    Measured (one CPU thread): parent 1.165 -> 0.00142 in 30 steps, fine-tune's first (from its EMA) 0.00084.
    """
    out = copy_out(base, tmp_path)
    parent = base[1] / "train" / "stage1"
    doc = build_doc(footage)
    doc["train"]["stages"] = [{"stage": 1, "init_from": str(parent), "config": OVERFIT},
                              {"stage": 3, "init_from": str(base[1] / "train" / "stage3"),
                               "config": {"batch_size": 1, "num_frames": 6}, "trainable": ["audio", "temporal"]}]
    doc["samples"] = []
    report = build(write(tmp_path / "build.yaml", doc), out)
    assert actions(report) == {"curate": "up to date", "export": "up to date", "train/stage1": "ran",
                               "train/stage3": "ran"}
    lock = json.loads((out / "emo.lock").read_text())["steps"]
    parent_lock = json.loads((base[1] / "emo.lock").read_text())["steps"]["train/stage1"]["outputs"]
    ft = lock["train/stage1"]["outputs"]
    meta = read_meta(out / ft["checkpoint"])
    assert meta["finetune"] and meta["parent"]["model_sha256"] == parent_lock["model_sha256"]
    assert meta["parent"]["path"] == str(base[1] / parent_lock["checkpoint"])
    assert meta["step"] == STAGE1_STEPS // 10  # fewer steps by default
    assert meta["config"]["learning_rate"] == pytest.approx(EMO_MODELS["tiny"].learning_rate / 10)
    # The fine-tune starts from the parent's EMA weights, which on this overfitting run sit at or below
    # the parent's last logged loss (measured: 0.00084 against 0.00142): never far above it.
    print(f"parent: first {parent_lock['first_loss']:.4f}, last {parent_lock['last_loss']:.5f}; "
          f"fine-tune first {ft['first_loss']:.5f}")
    assert ft["first_loss"] <= 1.5 * parent_lock["last_loss"]
    assert ft["first_loss"] < parent_lock["first_loss"] / 20  # a fresh model would start near the parent's first
    # --trainable audio,temporal in stage 3: audio layers (stage 3 freezes them) move, speed layers do not.
    w = {k: load_file(resolve_checkpoint(d) / "model.safetensors")
         for k, d in (("parent", base[1] / "train" / "stage3"), ("ft", out / "train" / "stage3"))}
    assert not torch.equal(w["parent"]["audio_proj.mlp.0.weight"], w["ft"]["audio_proj.mlp.0.weight"])
    assert torch.equal(w["parent"]["speed_encoder.mlp.0.weight"], w["ft"]["speed_encoder.mlp.0.weight"])
    assert read_meta(out / "train" / "stage3")["trainable_groups"] == ["audio", "temporal"]


BAD = [
    ("sources:\n  - a.mp4\nsorces: []\n", 3, "unknown key 'sorces'"),
    ("sources:\n  - {uri: a.mp4}\n  - missing.mp4\n", 3, "no such file or folder"),
    ("sources: [a.mp4]\ntrain:\n  stages:\n    - stage: 1\n      steps: 2\n      config: {learning_rat: 0.1}\n",
     6, "unknown EMO config keys ['learning_rat']"),
    ("sources: [a.mp4]\ntrain:\n  stages:\n    - {stage: 4, steps: 1}\n", 4, "stage must be 1, 2 or 3"),
    ("sources: [a.mp4]\ncurate:\n  config:\n    quality: {no_such_setting: 1}\n", 4, "bad settings for stage 'quality'"),
    ("sources: [a.mp4]\ncurate:\n  stages: [download, shots, face]\n", 3, "unknown stage 'face'"),
    ("sources: [a.mp4]\nsamples:\n  - {image: a.mp4, audio: a.mp4}\n", 3, "give the sample a 'checkpoint'"),
    ("sources:\n  - a.mp4\n  bad: [\n", 3, ""),  # not YAML
]


@pytest.mark.parametrize("text,line,words", BAD)
def test_a_bad_build_file_is_an_error_that_names_the_line(footage, tmp_path, text, line, words, cli, capsys):
    shutil.copyfile(footage["a"], tmp_path / "a.mp4")
    bf = tmp_path / "build.yaml"
    bf.write_text(text)
    with pytest.raises(BuildFileError) as e:
        load_build_file(bf)
    assert str(e.value).startswith(f"{bf}:{line}: ") and words in str(e.value)
    assert cli(["build", str(bf), "--out", str(tmp_path / "out")]) == 2
    assert f"{bf}:{line}: " in capsys.readouterr().err


def test_the_example_build_files_are_valid(base, demo_corpus, tmp_path):
    """examples/ as shipped, next to a demo corpus and the base build standing in for runs/demo."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    shutil.copytree(examples, tmp_path / "examples")
    (tmp_path / "demo").symlink_to(demo_corpus)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(base[1])
    spec = load_build_file(tmp_path / "examples" / "build.yaml")
    assert [t.stage for t in spec.train] == [1, 2, 3] and len(spec.sources) == 3
    report = build(tmp_path / "examples" / "finetune.yaml", tmp_path / "mine", dry_run=True)
    assert set(actions(report)) == {"curate", "export", "train/stage3", "sample/hanks-speech"}
    assert set(actions(report).values()) == {"would run"}
    assert not (tmp_path / "mine").exists()
