"""The stage registry: which stages exist, in which order, what each needs, and how they are built from a config."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from stages.base import Stage

# name -> "module:Class". Order is execution order; the download stage runs first, per input.
# The names are the ledger's (stage_runs.stage); the design's names are accepted everywhere a stage is named.
STAGES: dict[str, str] = {
    "download": "stages.download.stage:DownloadStage",
    "shots": "stages.shots.stage:ShotStage",
    "faces": "stages.faces.stage:FaceStage",
    "diarize": "stages.diarize.stage:DiarizeStage",
    "quality": "stages.quality.stage:QualityStage",
}
ALIASES = {"shot-detect": "shots", "face-crop": "faces", "speaker-diarize": "diarize", "quality-filter": "quality"}


def canonical(name: str) -> str:
    """A stage's ledger name from its own or its design name (shot-detect, face-crop, ...)."""
    return ALIASES.get(name, name)


def stage_class(name: str) -> type[Stage]:
    module, cls = STAGES[canonical(name)].split(":")
    return getattr(importlib.import_module(module), cls)


def needs(stage: Stage | type[Stage]) -> tuple[str, ...]:
    """Stages that must have succeeded on a source before `stage` runs on it: the writers of what it reads."""
    return tuple(n for n in STAGES if n != stage.name and set(stage_class(n).writes) & set(stage.reads))


def known() -> str:
    return ", ".join(f"{n} ({d})" if (d := next((a for a, c in ALIASES.items() if c == n), None)) else n for n in STAGES)


def available_stages() -> list[str]:
    """Stages whose module is present in this installation."""
    names = []
    for name, target in STAGES.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            names.append(name)
    return names


def load_config(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """A YAML file of {stage_name: {kwarg: value}}, plus an optional `pipeline:` section (PipelineSettings)."""
    if path is None:
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of stage names to settings")
    return normalize_config(data, str(path))


def normalize_config(data: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """Stage sections under their ledger names (a design name is accepted); unknown names are an error."""
    unknown = {k for k in data if canonical(k) not in STAGES and k != "pipeline"}
    if unknown:
        raise ValueError(f"{where}: unknown stages {sorted(unknown)}; known: {known()}")
    data = {canonical(k): v for k, v in data.items()}
    PipelineSettings.from_config(data)  # unknown pipeline settings fail here, before any work
    return data


@dataclass(frozen=True)
class PipelineSettings:
    """The config's `pipeline:` section: when a stage is given up on for one source.

    source_timeout_s / timeout_per_media_s: one stage on one source may take
        source_timeout_s + timeout_per_media_s * (seconds of media); past that the source gets a
        failed row with reason `timeout` and the worker process is replaced (pipeline/worker.py).
        The defaults are generous on purpose: the limit is for sources that hang, not slow ones.
    download_timeout_s: the limit for fetching one input (its duration is not known yet); a server
        that trickles bytes slower than any useful rate never trips the per-read timeout, only this.
    max_worker_deaths: a source whose stage has killed its worker process this many times (a
        decoder crash, the OOM killer) gets a failed row with reason `worker_died` instead of
        another try, so one poisonous file cannot stall a run.
    """

    source_timeout_s: float = 300.0
    timeout_per_media_s: float = 30.0
    download_timeout_s: float = 3600.0
    max_worker_deaths: int = 3

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> PipelineSettings:
        raw = (config or {}).get("pipeline") or {}
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown pipeline settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**raw)

    def time_limit(self, stage: str, source: dict[str, Any]) -> float:
        """Seconds `stage` may take on `source` (a sources row, or an input row for download)."""
        if stage == "download":
            return self.download_timeout_s
        seconds = source.get("duration_s")
        if not seconds and source.get("n_frames") and source.get("fps"):
            seconds = source["n_frames"] / source["fps"]
        return self.source_timeout_s + self.timeout_per_media_s * float(seconds or 0.0)


def build_stages(names: list[str], config: dict[str, dict[str, Any]] | None = None) -> list[Stage]:
    config = {canonical(k): v for k, v in (config or {}).items()}
    unknown = [n for n in names if canonical(n) not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; known: {known()}")
    names = [canonical(n) for n in names]
    missing = [n for n in names if n not in available_stages()]
    if missing:
        raise ValueError(f"stages not implemented in this version: {missing}")
    stages = []
    for name in sorted(set(names), key=list(STAGES).index):
        stage_cls = stage_class(name)
        try:
            stages.append(stage_cls(**(config.get(name) or {})))
        except TypeError as e:
            raise ValueError(f"bad settings for stage {name!r}: {e}") from e
    return stages
