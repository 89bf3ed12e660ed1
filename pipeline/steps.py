"""The steps of `emo build` after curation: export, one per training stage, one per sample.

A step says what keys it (`inputs()`: its settings and the outputs of the steps it reads), does its
work (`run()`, returning the outputs the lock records) and tells whether what the lock recorded is
still there (`outputs_present()`). Steps read each other's outputs through `BuildContext.outputs`,
which the walk in pipeline/build.py fills in as steps run or are found up to date. Train and sample
construct `TrainOptions` / `SampleOptions` and call the trainer and sampler directly.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manifests.fs import Location
from manifests.hashing import sha256_file
from manifests.mirror import mirrored
from model.checkpoint import read_meta
from model.remote import cache_root, local_checkpoint
from model.sample import SampleOptions, sample
from model.train import TrainOptions, train
from pipeline.buildfile import BuildSpec, SampleSpec, TrainSpec
from pipeline.export import export
from pipeline.lock import FileHashes


class BuildOut:
    """Where a build writes. A folder: OUT itself. Object storage: curate, export and train read and
    write the bucket; the lock, build/ and samples/ are written in a local work folder and each file
    is uploaded as it is saved, so the bucket alone holds the build (the work folder is a cache)."""

    def __init__(self, out: str | Path):
        self.loc = Location(out)
        self.data = self.loc.uri  # what curate, export and train are given
        self.remote = not self.loc.local
        if self.remote:
            self.work = cache_root(self.data, "build")
            shutil.rmtree(self.work, ignore_errors=True)  # only the bucket's copy counts
            for rel in ("emo.lock", "build/file_hashes.json"):
                if self.loc.exists(rel):
                    self.loc.get_file(rel, self.work / rel)
        else:
            self.work = self.loc.path

    def __str__(self) -> str:
        return self.data

    def has(self, rel: str) -> bool:
        return self.loc.exists(rel)

    def uri(self, rel: str) -> str:
        """A file or folder of OUT as the commands take it: a local path, or a URI in the bucket."""
        return self.loc.child_uri(rel) if self.remote else str(self.work / rel)

    def publish(self, *rels: str) -> None:
        """Upload these files of the work folder (a folder OUT has nothing to do)."""
        for rel in rels:
            if self.remote and (self.work / rel).is_file():
                self.loc.put_file(self.work / rel, rel)


@dataclass
class BuildContext:
    """What every step of one build shares."""

    spec: BuildSpec
    out: BuildOut
    hashes: FileHashes  # content hashes of local files, cached by size and mtime
    outputs: dict[str, dict]  # step name -> its outputs, as the walk finds or makes them


class Step:
    """One step of the build (see the module docstring)."""

    name: str

    def __init__(self, ctx: BuildContext):
        self.ctx = ctx

    def inputs(self) -> dict[str, Any]:
        raise NotImplementedError

    def run(self, inputs: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
        """Do the work; `prev` is the lock's record of the last run (None: never run)."""
        raise NotImplementedError

    def outputs_present(self, record: dict[str, Any]) -> bool:
        raise NotImplementedError


class ExportStep(Step):
    name = "export"

    def inputs(self) -> dict[str, Any]:
        return {"dataset_hash": self.ctx.outputs["curate"]["dataset_hash"], "val_fraction": self.ctx.spec.val_fraction}

    def run(self, inputs: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
        spec, bo = self.ctx.spec, self.ctx.out
        with mirrored(bo.data, ("manifests", "clips")) as local:  # as `emo export` does on object storage
            card = export(local, val_fraction=spec.val_fraction, command=f"emo build {spec.file} --out {bo}")
        return {"manifest_hash": card["manifest_hash"], "clips_hash": card["clips_hash"],
                "clips": card["clips"], "identities": card["identities"], "card": "export/dataset_card.json"}

    def outputs_present(self, record: dict[str, Any]) -> bool:
        card, bo = "export/dataset_card.json", self.ctx.out
        return bo.has(card) and json.loads(bo.loc.read_text(card))["manifest_hash"] == record["outputs"]["manifest_hash"]


class TrainStep(Step):
    """One training stage, from `init_from`, the previous stage of this build (`parent`), or nothing."""

    def __init__(self, ctx: BuildContext, t: TrainSpec, parent: str | None):
        super().__init__(ctx)
        self.t, self.parent = t, parent
        self.name = f"train/stage{t.stage}"

    def inputs(self) -> dict[str, Any]:
        spec, t, outputs = self.ctx.spec, self.t, self.ctx.outputs
        d = {"clips_hash": outputs["export"]["clips_hash"], "stage": t.stage, "model": spec.model,
             "steps": t.steps, "seed": spec.seed, "config": t.config, "trainable": t.trainable}
        if t.init_from:
            d["init_from"] = {"path": str(t.init_from), "model_sha256": read_meta(t.init_from)["model_sha256"]}
        elif self.parent:
            d["parent_sha256"] = outputs[self.parent]["model_sha256"]
        return d

    def run(self, inputs: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
        spec, bo, t = self.ctx.spec, self.ctx.out, self.t
        parent = t.init_from or (bo.uri(self.ctx.outputs[self.parent]["checkpoint"]) if self.parent else None)
        run_rel = self.name
        run = bo.uri(run_rel)
        if parent is not None and not bo.remote and Path(parent).resolve().is_relative_to(run):
            raise ValueError(f"train stage {t.stage}: init_from {parent} lies inside {run}, which a retrain replaces")
        # A changed input retrains from step 0.
        bo.loc.delete_tree(run_rel) if bo.remote else shutil.rmtree(run, ignore_errors=True)
        config = bo.work / "build" / f"train-stage{t.stage}.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(t.config, sort_keys=True))
        bo.publish(f"build/train-stage{t.stage}.json")
        saved = train(TrainOptions(  # on object storage, `saved` is its local staging copy
            data=bo.data, stage=t.stage, out=run, steps=t.steps, model=spec.model, config=config, seed=spec.seed,
            init_from=parent, finetune=bool(t.init_from), trainable=t.trainable or None, quiet=True))
        meta = read_meta(saved)
        with open(saved.parent / "loss.csv", newline="") as fh:
            losses = [float(r["loss"]) for r in csv.DictReader(fh)]
        return {"checkpoint": f"{run_rel}/{saved.name}", "model_sha256": meta["model_sha256"],
                "manifest_hash": meta["manifest_hash"], "parent": meta["parent"], "finetune": meta["finetune"],
                "step": meta["step"], "learning_rate": meta["config"]["learning_rate"],
                "first_loss": losses[0], "last_loss": losses[-1]}

    def outputs_present(self, record: dict[str, Any]) -> bool:
        meta, bo = f"{record['outputs']['checkpoint']}/meta.json", self.ctx.out
        return bo.has(meta) and json.loads(bo.loc.read_text(meta))["model_sha256"] == record["outputs"]["model_sha256"]


class SampleStep(Step):
    """One video, from the sample's own checkpoint or the last training stage of this build (`last`)."""

    def __init__(self, ctx: BuildContext, s: SampleSpec, last: str | None):
        super().__init__(ctx)
        self.s, self.last = s, last
        self.name = f"sample/{s.name}"

    def inputs(self) -> dict[str, Any]:
        s, hashes = self.s, self.ctx.hashes
        ckpt = read_meta(s.checkpoint)["model_sha256"] if s.checkpoint else self.ctx.outputs[self.last]["model_sha256"]
        return {"checkpoint_sha256": ckpt, "image": hashes(s.image), "audio": hashes(s.audio), "params": s.params}

    def run(self, inputs: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
        bo, s = self.ctx.out, self.s
        checkpoint = s.checkpoint or bo.uri(self.ctx.outputs[self.last]["checkpoint"])
        name = None  # how the lock names the checkpoint: relative to OUT when it lies in OUT
        if bo.remote and str(checkpoint).startswith(bo.data + "/"):
            checkpoint, uri = local_checkpoint(str(checkpoint))
            name = uri[len(bo.data) + 1:]
        out = bo.work
        video = out / "samples" / f"{s.name}.mp4"
        video.parent.mkdir(parents=True, exist_ok=True)
        rec = sample(SampleOptions(checkpoint=checkpoint, image=s.image, audio=s.audio, out=video, **s.params))
        bo.publish(f"samples/{s.name}.mp4", f"samples/{s.name}.mp4.json")
        ckpt = Path(rec["checkpoint"])
        name = name or (str(ckpt.relative_to(out)) if ckpt.is_relative_to(out) else str(ckpt))
        return {"video": str(video.relative_to(out)), "sha256": sha256_file(video), "checkpoint": name,
                "checkpoint_sha256": rec["checkpoint_sha256"], "manifest_hash": rec["manifest_hash"],
                "frames": rec["frames"]}

    def outputs_present(self, record: dict[str, Any]) -> bool:
        bo = self.ctx.out
        video = bo.work / record["outputs"]["video"]
        if bo.remote and bo.has(record["outputs"]["video"]):
            bo.loc.get_file(record["outputs"]["video"], video)
        return video.is_file() and sha256_file(video) == record["outputs"]["sha256"]


def later_steps(ctx: BuildContext) -> list[Step]:
    """Export, the training stages in order (each from the one before), then the samples."""
    steps: list[Step] = [ExportStep(ctx)]
    previous = None
    for t in ctx.spec.train:
        steps.append(TrainStep(ctx, t, previous))
        previous = steps[-1].name
    steps += [SampleStep(ctx, s, previous) for s in ctx.spec.samples]
    return steps
