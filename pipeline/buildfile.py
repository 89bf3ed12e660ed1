"""The build file of `emo build`: YAML parsed and checked into typed specs, every error naming its line.

    sources   files, folders, sources files (CSV, JSONL, Parquet) or URLs, with sources-file metadata
    curate    stages, their config (inline or a config file), num_cpus, max_workers
    export    val_fraction
    train     model size, seed, and stages (1, 2, 3): steps, EMOConfig keys, init_from, trainable
    samples   image, audio, name, checkpoint and the sampler's settings

The file format is shown in examples/build.yaml; pipeline/steps.py turns a BuildSpec into steps.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

import yaml

from manifests.sources import SOURCE_FILE_COLUMNS
from model.checkpoint import resolve_checkpoint
from model.config import EMO_MODELS, EMOConfig
from model.layer_groups import LAYER_GROUPS, unknown_groups
from pipeline.plan import STAGES, build_stages, canonical, known, load_config, normalize_config
from pipeline.sources_file import SourcesFileError, read_sources

# The sampler's settings a build file may give (model/sample.py: SampleOptions), and their YAML types.
SAMPLE_PARAMS = {"steps": int, "fps": (int, float), "seed": int, "guidance_ref": (int, float),
                 "guidance_audio": (int, float), "speed": (int, float)}


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
    from pipeline.runner import DEFAULT_STAGES  # runner imports ray: reading a build file should not

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
        if bad := unknown_groups(trainable or []):
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
