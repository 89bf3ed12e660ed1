"""Which stages exist, in which order, and how they are built from a config."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from stages.base import Stage

# name -> "module:Class". Order is execution order; the download stage runs first, per input.
STAGES: dict[str, str] = {
    "download": "stages.download:DownloadStage",
    "shots": "stages.shots:ShotStage",
    "faces": "stages.faces:FaceStage",
    "diarize": "stages.diarize:DiarizeStage",
    "quality": "stages.quality:QualityStage",
}


def available_stages() -> list[str]:
    """Stages whose module is present in this installation."""
    names = []
    for name, target in STAGES.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            names.append(name)
    return names


def load_config(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """A YAML file of {stage_name: {kwarg: value}}."""
    if path is None:
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of stage names to settings")
    unknown = set(data) - set(STAGES) - {"pipeline"}
    if unknown:
        raise ValueError(f"{path}: unknown stages {sorted(unknown)}; known: {list(STAGES)}")
    return data


def build_stages(names: list[str], config: dict[str, dict[str, Any]] | None = None) -> list[Stage]:
    config = config or {}
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; known: {list(STAGES)}")
    missing = [n for n in names if n not in available_stages()]
    if missing:
        raise ValueError(f"stages not implemented in this version: {missing}")
    stages = []
    for name in sorted(names, key=list(STAGES).index):
        module, cls = STAGES[name].split(":")
        stage_cls = getattr(importlib.import_module(module), cls)
        try:
            stages.append(stage_cls(**(config.get(name) or {})))
        except TypeError as e:
            raise ValueError(f"bad settings for stage {name!r}: {e}") from e
    return stages
