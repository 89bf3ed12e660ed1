"""Which parameters each training stage trains: the one table behind `set_stage` and `--trainable`.

    stage 1  single frames: backbone, ReferenceNet, face locator
    stage 2  f frames + n motion frames: temporal modules and audio layers (the rest frozen)
    stage 3  speed layers and temporal modules (audio frozen)

A layer group is a set of parameter-name prefixes. Speed attention inside the temporal modules
(`temporal.N.speed_attention...`) belongs to "speed", not "temporal": stage 2 leaves it to stage 3.
No torch import here, so the build-file reader and `emo train --help` can name the groups cheaply.
"""

from __future__ import annotations

LAYER_GROUPS = {"backbone": ("backbone.",), "reference": ("reference_net.", "reference_gates"),
                "face_locator": ("face_locator.",), "audio": ("audio_proj.", "audio_attention."),
                "temporal": ("temporal.",), "speed": ("speed_encoder.",)}

# What each training stage trains; everything else is frozen.
STAGE_GROUPS = {1: ("backbone", "reference", "face_locator"), 2: ("temporal", "audio"), 3: ("speed", "temporal")}


def layer_group(name: str) -> str | None:
    """The group a parameter belongs to, by its name in EMOModel; None for none."""
    if ".speed_" in name:
        return "speed"
    return next((g for g, prefixes in LAYER_GROUPS.items() if name.startswith(prefixes)), None)


def set_trainable(model, groups: tuple[str, ...] | list[str]) -> list[str]:
    """Train exactly these groups' parameters and freeze the rest; returns the trainable names."""
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(layer_group(name) in groups)
        if param.requires_grad:
            names.append(name)
    return names


def unknown_groups(groups: list[str]) -> list[str]:
    return [g for g in groups if g not in LAYER_GROUPS]
