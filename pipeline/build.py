"""`emo build BUILDFILE --out OUT`: bring a model up to date with a build file, redoing only what changed.

The steps, in order: curate -> export -> train/stage{k} ... -> sample/{name}. Each is keyed by the
hash of its inputs: the sources' content and metadata, its own settings, and the outputs of the
steps it reads (curate's dataset hash, export's clips hash, the parent checkpoint's weights). A step
whose key matches OUT/emo.lock and whose outputs are still there is skipped; downstream steps are
keyed on upstream *outputs*, so a step that reruns but produces the same thing stops the cascade.

Curation resumes per source on its own (pipeline/runner.py), so a new source is the only one
processed, and it redoes by itself the runs of a stage whose settings changed (pipeline/ledger.py).
Before curating, the build forgets the sources the lock shows are stale (their content or metadata
changed, or they left the build file), so that curate redoes those too. The file format is shown in examples/build.yaml.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

import yaml

from manifests import ManifestStore
from manifests.fs import Location
from manifests.optout import forget_inputs, remove_sources
from manifests.sources import SOURCE_FILE_COLUMNS
from pipeline.ledger import Ledger
from pipeline.lock import FileHashes, Lock, changes, record

log = logging.getLogger(__name__)
CURATE_TABLES = ("sources", "shots", "timeline", "tracks", "segments", "clips", "rejections")
SAMPLE_PARAMS = {"steps": int, "fps": (int, float), "seed": int, "guidance_ref": (int, float),
                 "guidance_audio": (int, float), "speed": (int, float)}


# ---------------------------------------------------------------- the build file


class BuildFileError(ValueError):
    """A problem in the build file; the message starts with FILE:LINE."""


class _At:
    """A YAML node and its file: typed reads whose errors name the line."""

    def __init__(self, node: yaml.Node, file: Path):
        self.node, self.file = node, file

    def fail(self, msg: str) -> NoReturn:
        raise BuildFileError(f"{self.file}:{self.node.start_mark.line + 1}: {msg}")

    def value(self, kind: type | tuple = object, what: str = "") -> Any:
        v = yaml.SafeLoader("").construct_object(self.node, deep=True)
        if not isinstance(v, kind) or (isinstance(v, bool) and kind in (int, (int, float))):
            self.fail(f"expected {what or kind}, got {v!r}")
        return v

    def keys(self, known: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, _At]:
        if not isinstance(self.node, yaml.MappingNode):
            self.fail(f"expected a mapping with keys: {', '.join(known)}")
        out: dict[str, _At] = {}
        for k, v in self.node.value:
            key = _At(k, self.file)
            if k.value not in known:
                key.fail(f"unknown key {k.value!r}; known: {', '.join(known)}")
            if k.value in out:
                key.fail(f"{k.value!r} given twice")
            out[k.value] = _At(v, self.file)
        if missing := [r for r in required if r not in out]:
            self.fail(f"{missing[0]!r} is required")
        return out

    def items(self) -> list[_At]:
        if not isinstance(self.node, yaml.SequenceNode):
            self.fail("expected a list")
        return [_At(n, self.file) for n in self.node.value]

    def path(self, must_exist: bool = True) -> Path:
        p = Path(self.value(str, "a path")).expanduser()
        p = (p if p.is_absolute() else self.file.parent / p).resolve()
        if must_exist and not p.exists():
            self.fail(f"{p}: no such file or folder")
        return p


@dataclass
class TrainSpec:
    stage: int
    steps: int | None
    config: dict[str, Any]
    init_from: Path | None  # a checkpoint to fine-tune; None: the previous stage in this build
    trainable: list[str] | None


@dataclass
class SampleSpec:
    name: str
    image: Path
    audio: Path
    checkpoint: Path | None  # None: the last training stage of this build
    params: dict[str, Any]


@dataclass
class BuildSpec:
    file: Path
    sources: list[dict[str, Any]]  # sources-file rows: uri (absolute) and metadata
    stages: list[str]
    curate_config: dict[str, Any]
    num_cpus: int | None = None
    max_workers: int | None = None
    val_fraction: float = 0.1
    model: str = "tiny"
    seed: int = 0
    train: list[TrainSpec] = field(default_factory=list)
    samples: list[SampleSpec] = field(default_factory=list)


def load_build_file(path: str | Path) -> BuildSpec:
    """Parse and check a build file; every problem is a BuildFileError naming its line."""
    file = Path(path).resolve()
    try:
        root = yaml.compose(file.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise BuildFileError(f"{file}:{mark.line + 1 if mark else '?'}: {e.problem or e}") from None
    if root is None:
        raise BuildFileError(f"{file}:1: the build file is empty")
    top = _At(root, file).keys(("sources", "curate", "export", "train", "samples"), required=("sources",))
    spec = BuildSpec(file=file, sources=_sources(top["sources"]), stages=[], curate_config={})
    _curate(spec, top.get("curate"))
    if "export" in top and (v := top["export"].keys(("val_fraction",)).get("val_fraction")):
        spec.val_fraction = float(v.value((int, float), "a number"))
    if "train" in top:
        _train(spec, top["train"])
    for item in top["samples"].items() if "samples" in top else []:
        spec.samples.append(_sample(spec, item))
    return spec


def _sources(at: _At) -> list[dict[str, Any]]:
    from pipeline.sources_file import SourcesFileError, read_sources

    rows: dict[str, dict[str, Any]] = {}
    for item in at.items():
        meta = {}
        entry = item
        if isinstance(item.node, yaml.MappingNode):
            keys = item.keys(SOURCE_FILE_COLUMNS, required=("uri",))
            meta = {k: _text(v.value()) for k, v in keys.items() if k != "uri"}
            entry = keys["uri"]
        uri = entry.value(str, "a file, folder, URL or sources file")
        if urlparse(uri).scheme in ("http", "https"):
            found = [{"uri": uri}]
        else:
            p = entry.path()
            if p.is_dir() or p.suffix.lower() in (".csv", ".jsonl", ".ndjson", ".parquet"):
                try:
                    found = read_sources(p)
                    if bad := [r["input_error"] for r in found if r.get("input_error")]:
                        entry.fail(f"{bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
                    found = [_plain(r) for r in found]
                except SourcesFileError as e:
                    entry.fail(str(e))
            else:
                found = [{"uri": str(p), "title": p.name}]
        for r in found:
            rows.setdefault(r["uri"], {**r, **meta})
    if not rows:
        at.fail("no sources")
    return list(rows.values())


def _text(v: Any) -> str:
    """A sources-file field as text; YAML reads an unquoted `consent: yes` as True."""
    return {True: "yes", False: "no"}.get(v, str(v)) if isinstance(v, bool) else str(v)


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A read_sources row back to sources-file columns (its extra columns unpacked from meta)."""
    out = {k: row[k] for k in SOURCE_FILE_COLUMNS if row.get(k) is not None}
    return {**out, **json.loads(row["meta"])} if row.get("meta") else out


def _curate(spec: BuildSpec, at: _At | None) -> None:
    from pipeline.plan import STAGES, build_stages, canonical, known, load_config, normalize_config
    from pipeline.runner import DEFAULT_STAGES

    keys = at.keys(("stages", "config", "config_file", "num_cpus", "max_workers")) if at else {}
    spec.stages = list(DEFAULT_STAGES)
    if "stages" in keys:
        spec.stages = [canonical(s.value(str, "a stage name")) for s in keys["stages"].items()]
        for s, node in zip(spec.stages, keys["stages"].items(), strict=True):
            if s not in STAGES:
                node.fail(f"unknown stage {s!r}; known: {known()}")
        if "download" not in spec.stages:
            keys["stages"].fail("a build curates its sources: 'download' must be one of the stages")
    config: dict[str, Any] = {}
    if "config_file" in keys:
        try:
            config = load_config(keys["config_file"].path())
        except ValueError as e:
            keys["config_file"].fail(str(e))
    if "config" in keys:
        inline = keys["config"].value(dict, "a mapping of stage names to settings")
        try:
            inline = normalize_config(inline, "config")
        except ValueError as e:
            keys["config"].fail(str(e))
        config = _merge(config, inline)
    try:
        build_stages(spec.stages, config)
    except ValueError as e:
        (keys.get("config") or keys.get("config_file") or keys.get("stages") or at).fail(str(e))
    spec.curate_config = config
    for k in ("num_cpus", "max_workers"):
        if k in keys:
            setattr(spec, k, keys[k].value(int, "a whole number"))


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _train(spec: BuildSpec, at: _At) -> None:
    from model.checkpoint import resolve_checkpoint
    from model.config import EMO_MODELS, EMOConfig
    from model.train import LAYER_GROUPS

    keys = at.keys(("model", "seed", "stages"), required=("stages",))
    if "model" in keys:
        spec.model = keys["model"].value(str, "a model size")
        if spec.model not in EMO_MODELS:
            keys["model"].fail(f"unknown model size {spec.model!r}; known: {', '.join(EMO_MODELS)}")
    if "seed" in keys:
        spec.seed = keys["seed"].value(int, "a whole number")
    known = {f.name for f in dataclasses.fields(EMOConfig)}
    for item in keys["stages"].items():
        k = item.keys(("stage", "steps", "config", "init_from", "trainable"), required=("stage",))
        stage = k["stage"].value(int, "1, 2 or 3")
        if stage not in (1, 2, 3):
            k["stage"].fail(f"stage must be 1, 2 or 3, got {stage}")
        if any(t.stage == stage for t in spec.train):
            k["stage"].fail(f"stage {stage} is listed twice")
        steps = k["steps"].value(int, "a whole number of steps") if "steps" in k else None
        config = k["config"].value(dict, "a mapping of EMOConfig keys") if "config" in k else {}
        if unknown := sorted(set(config) - known):
            k["config"].fail(f"unknown EMO config keys {unknown}")
        init_from = None
        if "init_from" in k:
            init_from = k["init_from"].path()
            try:
                resolve_checkpoint(init_from)
            except FileNotFoundError as e:
                k["init_from"].fail(str(e))
        elif steps is None:
            item.fail("'steps' is required (only a fine-tune from 'init_from' has a default)")
        trainable = [t.value(str, "a layer group") for t in k["trainable"].items()] if "trainable" in k else None
        if bad := [t for t in trainable or [] if t not in LAYER_GROUPS]:
            k["trainable"].fail(f"unknown layer groups {bad}; known: {', '.join(LAYER_GROUPS)}")
        spec.train.append(TrainSpec(stage, steps, config, init_from, trainable))


def _sample(spec: BuildSpec, at: _At) -> SampleSpec:
    k = at.keys(("image", "audio", "name", "checkpoint", *SAMPLE_PARAMS), required=("image", "audio"))
    image, audio = k["image"].path(), k["audio"].path()
    name = k["name"].value(str, "a name") if "name" in k else f"{image.stem}-{audio.stem}"
    if any(s.name == name for s in spec.samples):
        at.fail(f"two samples are named {name!r}: give one a 'name'")
    checkpoint = k["checkpoint"].path() if "checkpoint" in k else None
    if checkpoint is None and not spec.train:
        at.fail("no training stages in this build: give the sample a 'checkpoint'")
    params = {p: k[p].value(kind, "a number") for p, kind in SAMPLE_PARAMS.items() if p in k}
    return SampleSpec(name, image, audio, checkpoint, params)


# ---------------------------------------------------------------- the steps


@dataclass
class Step:
    """One step of the build: what it reads, how it runs, how to tell its recorded outputs are still there."""

    name: str
    inputs: Callable[[], dict[str, Any]]
    run: Callable[[dict[str, Any], dict[str, Any] | None], dict[str, Any]]
    present: Callable[[dict[str, Any]], bool]


class _Pending(dict):
    """The outputs of a step a dry run would run first: every value says so."""

    def __init__(self, step: str):
        super().__init__()
        self.step = step

    def __getitem__(self, key: str) -> str:
        return f"<new output of {self.step}>"


class BuildOut:
    """Where a build writes. A folder: OUT itself. Object storage: curate, export and train read and
    write the bucket; the lock, build/ and samples/ are written in a local work folder and each file
    is uploaded as it is saved, so the bucket alone holds the build (the work folder is a cache)."""

    def __init__(self, out: str | Path):
        self.loc = Location(out)
        self.data = self.loc.uri  # what curate, export and train are given
        self.remote = not self.loc.local
        if self.remote:
            from model.remote import cache_root

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


def plan(spec: BuildSpec, bo: BuildOut, hashes: FileHashes, outputs: dict[str, dict]) -> list[Step]:
    """The build's steps in order; `outputs` fills in as they run (or are found up to date)."""
    from manifests.hashing import sha256_file
    from model.checkpoint import read_meta

    def curate_inputs() -> dict:
        sources = {r["uri"]: _source_hash(r, hashes) for r in spec.sources}
        return {"sources": sources, "stages": spec.stages, "config": spec.curate_config}

    def export_inputs() -> dict:
        return {"dataset_hash": outputs["curate"]["dataset_hash"], "val_fraction": spec.val_fraction}

    def card_present(rec: dict) -> bool:
        card = "export/dataset_card.json"
        return bo.has(card) and json.loads(bo.loc.read_text(card))["manifest_hash"] == rec["outputs"]["manifest_hash"]

    def ckpt_present(rec: dict) -> bool:
        meta = f"{rec['outputs']['checkpoint']}/meta.json"
        return bo.has(meta) and json.loads(bo.loc.read_text(meta))["model_sha256"] == rec["outputs"]["model_sha256"]

    steps = [Step("curate", curate_inputs, lambda i, p: _run_curate(spec, bo, i, p),
                  lambda rec: bool(ManifestStore(bo.data).shard_keys("sources"))),
             Step("export", export_inputs, lambda i, p: _run_export(spec, bo), card_present)]
    previous = None
    for t in spec.train:
        def train_inputs(t=t, previous=previous) -> dict:
            d = {"clips_hash": outputs["export"]["clips_hash"], "stage": t.stage, "model": spec.model,
                 "steps": t.steps, "seed": spec.seed, "config": t.config, "trainable": t.trainable}
            if t.init_from:
                d["init_from"] = {"path": str(t.init_from), "model_sha256": read_meta(t.init_from)["model_sha256"]}
            elif previous:
                d["parent_sha256"] = outputs[previous]["model_sha256"]
            return d

        def train_run(inputs, prev, t=t, previous=previous) -> dict:
            parent = t.init_from or (bo.uri(outputs[previous]["checkpoint"]) if previous else None)
            return _run_train(spec, bo, t, parent)

        steps.append(Step(f"train/stage{t.stage}", train_inputs, train_run, ckpt_present))
        previous = f"train/stage{t.stage}"
    for s in spec.samples:
        def sample_inputs(s=s, last=previous) -> dict:
            ckpt = read_meta(s.checkpoint)["model_sha256"] if s.checkpoint else outputs[last]["model_sha256"]
            return {"checkpoint_sha256": ckpt, "image": hashes(s.image), "audio": hashes(s.audio), "params": s.params}

        def sample_run(inputs, prev, s=s, last=previous) -> dict:
            return _run_sample(bo, s, s.checkpoint or bo.uri(outputs[last]["checkpoint"]))

        def video_present(rec: dict) -> bool:
            video = bo.work / rec["outputs"]["video"]
            if bo.remote and bo.has(rec["outputs"]["video"]):
                bo.loc.get_file(rec["outputs"]["video"], video)
            return video.is_file() and sha256_file(video) == rec["outputs"]["sha256"]

        steps.append(Step(f"sample/{s.name}", sample_inputs, sample_run, video_present))
    return steps


def _source_hash(row: dict[str, Any], hashes: FileHashes) -> str:
    """A source's metadata and, for a local file, its content (a URL is known by its address)."""
    from pipeline.lock import digest

    content = hashes(row["uri"]) if Path(row["uri"]).is_file() else None
    return digest({**row, "content": content})


def _run_curate(spec: BuildSpec, bo: BuildOut, inputs: dict, prev: dict | None) -> dict:
    from pipeline.runner import CurateOptions, curate

    store = ManifestStore(bo.data)
    _forget_stale(store, (prev or {}).get("inputs", {}).get("sources", {}), inputs["sources"])
    sources = bo.work / "build" / "sources.jsonl"
    sources.parent.mkdir(parents=True, exist_ok=True)
    sources.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in spec.sources))
    bo.publish("build/sources.jsonl")
    before = _run_times(store)
    summary = curate(CurateOptions(sources=str(sources), out=bo.data, stages=tuple(spec.stages),
                                   config=spec.curate_config, num_cpus=spec.num_cpus, max_workers=spec.max_workers))
    processed: dict[str, int] = {}
    for (stage, key), finished in _run_times(store).items():
        if before.get((stage, key)) != finished:
            processed[stage] = processed.get(stage, 0) + 1
    return {"dataset_hash": store.content_hash(CURATE_TABLES), "processed": processed, "sources_ok": summary.ok,
            "clips": store.read("clips").num_rows}


def _run_times(store: ManifestStore) -> dict[tuple[str, str], Any]:
    return {(r["stage"], r["source_id"]): r["finished_at"]
            for r in store.read("stage_runs", columns=["stage", "source_id", "finished_at"]).to_pylist()}


def _forget_stale(store: ManifestStore, old: dict[str, str], new: dict[str, str]) -> None:
    """Forget changed or dropped sources, so curate fetches and processes them anew. (Runs made with
    other settings curate redoes by itself: pipeline/ledger.py.)"""
    gone = {uri for uri, h in old.items() if new.get(uri) != h}
    rows = store.read("sources").to_pylist()
    stale = [r for r in rows if r["uri"] in gone]
    forget_inputs(store, stale)
    redo = {r["source_id"] for r in stale if r["source_id"]}  # source_ids every media stage redoes
    # Bytes no remaining input has: everything they gave goes, files included.
    orphans = redo - {r["source_id"] for r in rows if r["uri"] not in gone}
    remove_sources(store, orphans, [r for r in stale if r["source_id"] in orphans])
    Ledger(store).forget(redo)
    if gone:
        log.info("curate: forgetting %d changed or dropped inputs (%d sources redo every stage)", len(gone), len(redo))


def _run_export(spec: BuildSpec, bo: BuildOut) -> dict:
    from manifests.export import export
    from manifests.mirror import mirrored

    with mirrored(bo.data, ("manifests", "clips")) as local:  # as `emo export` does on object storage
        card = export(local, val_fraction=spec.val_fraction, command=f"emo build {spec.file} --out {bo}")
    return {"manifest_hash": card["manifest_hash"], "clips_hash": ManifestStore(bo.data).content_hash(["clips"]),
            "clips": card["clips"], "identities": card["identities"], "card": "export/dataset_card.json"}


def _run_train(spec: BuildSpec, bo: BuildOut, t: TrainSpec, parent: Path | str | None) -> dict:
    from model.checkpoint import read_meta
    from model.train import build_parser, train

    run_rel = f"train/stage{t.stage}"
    run = bo.uri(run_rel)
    if parent is not None and not bo.remote and Path(parent).resolve().is_relative_to(run):
        raise ValueError(f"train stage {t.stage}: init_from {parent} lies inside {run}, which a retrain replaces")
    # A changed input retrains from step 0.
    bo.loc.delete_tree(run_rel) if bo.remote else shutil.rmtree(run, ignore_errors=True)
    config = bo.work / "build" / f"train-stage{t.stage}.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(t.config, sort_keys=True))
    bo.publish(f"build/train-stage{t.stage}.json")
    argv = ["--data", bo.data, "--stage", str(t.stage), "--model", spec.model, "--out", run,
            "--seed", str(spec.seed), "--config", str(config), "--quiet"]
    argv += ["--steps", str(t.steps)] if t.steps is not None else []
    argv += ["--init-from", str(parent)] if parent is not None else []
    argv += ["--finetune"] if t.init_from else []
    argv += ["--trainable", ",".join(t.trainable)] if t.trainable else []
    saved = train(build_parser().parse_args(argv))  # on object storage: its local staging copy
    meta = read_meta(saved)
    with open(saved.parent / "loss.csv", newline="") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    return {"checkpoint": f"{run_rel}/{saved.name}", "model_sha256": meta["model_sha256"],
            "manifest_hash": meta["manifest_hash"], "parent": meta["parent"], "finetune": meta["finetune"],
            "step": meta["step"], "learning_rate": meta["config"]["learning_rate"],
            "first_loss": losses[0], "last_loss": losses[-1]}


def _run_sample(bo: BuildOut, s: SampleSpec, checkpoint: Path | str) -> dict:
    from manifests.hashing import sha256_file
    from model.remote import local_checkpoint
    from model.sample import build_parser, sample

    name = None  # how the lock names the checkpoint: relative to OUT when it lies in OUT
    if bo.remote and str(checkpoint).startswith(bo.data + "/"):
        checkpoint, uri = local_checkpoint(str(checkpoint))
        name = uri[len(bo.data) + 1:]
    out = bo.work
    video = out / "samples" / f"{s.name}.mp4"
    video.parent.mkdir(parents=True, exist_ok=True)
    argv = ["--checkpoint", str(checkpoint), "--image", str(s.image), "--audio", str(s.audio), "--out", str(video)]
    for k, v in s.params.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    rec = sample(build_parser().parse_args(argv))
    bo.publish(f"samples/{s.name}.mp4", f"samples/{s.name}.mp4.json")
    ckpt = Path(rec["checkpoint"])
    name = name or (str(ckpt.relative_to(out)) if ckpt.is_relative_to(out) else str(ckpt))
    return {"video": str(video.relative_to(out)), "sha256": sha256_file(video),
            "checkpoint": name,            "checkpoint_sha256": rec["checkpoint_sha256"], "manifest_hash": rec["manifest_hash"],
            "frames": rec["frames"]}


# ---------------------------------------------------------------- the build


@dataclass
class StepResult:
    name: str
    action: str  # "ran", "up to date" or "would run"
    reason: str = ""
    seconds: float | None = None


@dataclass
class BuildReport:
    build_file: Path
    out: Path | str  # a folder, or the URI of a bucket prefix
    dry_run: bool
    steps: list[StepResult]
    lock: Lock

    @property
    def ran(self) -> list[str]:
        return [s.name for s in self.steps if s.action != "up to date"]

    def render(self) -> str:
        lines = [f"emo build {self.build_file} -> {self.out}" + (" (dry run)" if self.dry_run else "")]
        width = max(len(s.name) for s in self.steps)
        for s in self.steps:
            took = f" ({s.seconds:.1f} s)" if s.seconds is not None else ""
            lines.append(f"  {s.name:<{width}}  {s.action:<10}  {s.reason}{took}".rstrip())
        n, k = len(self.steps), len(self.ran)
        if not k:
            lines.append(f"nothing to do: all {n} steps are up to date")
        else:
            lines.append(f"{k} of {n} steps would run" if self.dry_run else
                         f"ran {k} of {n} steps; lock: {self.out}/emo.lock")
        return "\n".join(lines)


def build(build_file: str | Path, out: str | Path, dry_run: bool = False) -> BuildReport:
    """Run the steps whose inputs changed (or only say which and why, with dry_run)."""
    from pipeline.lock import digest

    spec = load_build_file(build_file)
    bo = BuildOut(out)
    out = bo.work  # the lock and build/ are written here (and uploaded when OUT is a bucket)
    old = Lock.load(out)
    new = Lock(build_file=str(spec.file))
    hashes = FileHashes(out / "build" / "file_hashes.json")
    outputs: dict[str, dict] = {}
    results = []
    for step in plan(spec, bo, hashes, outputs):
        prev = old.steps.get(step.name)
        inputs = step.inputs()
        if prev is None:
            reason = "never run"
        elif prev["key"] != digest(inputs):
            reason = "; ".join(changes(prev["inputs"], inputs))
        else:
            reason = None if step.present(prev) else "its outputs are missing or changed"
        if reason is None:
            new.steps[step.name], outputs[step.name] = prev, prev["outputs"]
            results.append(StepResult(step.name, "up to date"))
        elif dry_run:
            outputs[step.name] = _Pending(step.name)
            results.append(StepResult(step.name, "would run", reason))
        else:
            log.info("%s: %s", step.name, reason)
            t0 = time.perf_counter()
            produced = step.run(inputs, prev)
            new.steps[step.name] = record(inputs, produced, time.perf_counter() - t0)
            outputs[step.name] = produced
            Lock({**old.steps, **new.steps}, new.build_file).save(out)  # a crash keeps what finished
            bo.publish("emo.lock")
            results.append(StepResult(step.name, "ran", reason, time.perf_counter() - t0))
    if not dry_run and (new.steps != old.steps or new.build_file != old.build_file):
        new.save(out)
        bo.publish("emo.lock")
    if not dry_run:
        hashes.save()
        bo.publish("build/file_hashes.json")
    return BuildReport(spec.file, out if not bo.remote else bo.data, dry_run, results, new)
