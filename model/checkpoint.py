"""Checkpoints: safetensors weights, EMA and optimizer state, and a JSON record of what made them.

    CKPT_DIR/
      step-000500/  model.safetensors  ema.safetensors  optimizer.safetensors  meta.json
      vae/            the frozen AutoencoderKL (diffusers save_pretrained), when the model uses one
      audio_encoder/  the frozen wav2vec2 (transformers save_pretrained), when the model uses one
      loss.csv

meta.json holds the config, stage, step, the clips manifest hash trained on, the sources of
those clips with their licenses and consent (manifests/lineage.py) and the parent checkpoint, so
`load_checkpoint` rebuilds the model from the folder alone. Nothing here loads a pickle:
optimizer state is flattened into safetensors plus JSON.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from manifests.hashing import sha256_file
from model.config import EMOConfig

FORMAT = "emo-forge/checkpoint/1"


def step_dir(ckpt_dir: str | Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step-{step:07d}"


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The highest-step complete checkpoint in a folder (one with meta.json), or None."""
    steps = sorted(p for p in Path(ckpt_dir).glob("step-*") if (p / "meta.json").is_file())
    return steps[-1] if steps else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A step folder, or a run folder (its latest step)."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint (a folder with meta.json) at {path}")
    return latest


def read_meta(path: str | Path) -> dict:
    meta = json.loads((resolve_checkpoint(path) / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an {FORMAT} checkpoint")
    return meta


def optimizer_to_tensors(optimizer: torch.optim.Optimizer, names: list[str]) -> tuple[dict, list]:
    """Optimizer state as {"<param name>::<key>": tensor} and JSON-ready param groups."""
    sd = optimizer.state_dict()
    tensors = {f"{names[i]}::{k}": v.detach().cpu().contiguous()
               for i, state in sd["state"].items() for k, v in state.items()}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[i] for i in g["params"]]}
              for g in sd["param_groups"]]
    return tensors, groups


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, names: list[str], tensors: dict, groups: list) -> None:
    index = {n: i for i, n in enumerate(names)}
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        name, field = key.split("::")
        state.setdefault(index[name], {})[field] = value
    param_groups = [{**g, "params": [index[n] for n in g["params"]]} for g in groups]
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


def save_checkpoint(ckpt_dir: str | Path, step: int, weights: dict[str, torch.Tensor],
                    ema: dict[str, torch.Tensor] | None, optimizer: torch.optim.Optimizer | None,
                    param_names: list[str], meta: dict, keep_last: int = 2) -> Path:
    """Write step-NNNNNNN atomically (a temporary folder renamed into place), keeping `keep_last` in all.

    `weights` is the model's full state dict (on a sharded run, what `accelerator.get_state_dict`
    gathers). Older checkpoints beyond keep_last - 1 go before the new one is written, so the disk
    never holds more than keep_last of them (a stage-1 sd15 checkpoint is about 30 GB).
    """
    final = step_dir(ckpt_dir, step)
    prune_checkpoints(ckpt_dir, max(1, keep_last) - 1, spare=final)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
    if ema is not None:
        save_file({k: v.cpu().contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    groups = None
    if optimizer is not None:
        tensors, groups = optimizer_to_tensors(optimizer, param_names)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
    meta = {"format": FORMAT, **meta, "step": step, "optimizer_groups": groups,
            "model_sha256": sha256_file(tmp / "model.safetensors")}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def prune_checkpoints(ckpt_dir: str | Path, keep: int, spare: Path | None = None) -> None:
    """Delete all but the `keep` highest-step checkpoints (and any `spare` folder being rewritten)."""
    steps = sorted(p for p in Path(ckpt_dir).glob("step-*") if p != spare)
    for old in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def load_weights(model: torch.nn.Module, path: str | Path, strict: bool = True,
                 skip: set[str] = frozenset()) -> list[str]:
    """Copy a safetensors file into `model` one tensor at a time; returns the model keys it lacked.

    Memory holds the model and one tensor, not the model and a second full copy of its state dict.
    """
    from safetensors import safe_open

    own = model.state_dict()
    seen = set()
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            if key in skip:
                continue
            if key not in own:
                raise ValueError(f"{path}: weights for an unknown parameter {key}")
            with torch.no_grad():
                own[key].copy_(f.get_tensor(key))
            seen.add(key)
    missing = sorted(set(own) - seen - skip)
    if strict and missing:
        raise ValueError(f"{path}: no weights for {len(missing)} parameters, e.g. {missing[:3]}")
    return missing


def load_checkpoint(path: str | Path, ema: bool = True, device: str | torch.device = "cpu"):
    """(model, config, meta) from a step folder or a run folder (its latest step).

    With ema=True the EMA weights replace the trained layers' raw weights (what a sampler wants).
    meta gains "dir" (the step folder), "vae_path" and "audio_encoder_path" (absolute or None).
    """
    from model.emo import EMOModel

    folder = resolve_checkpoint(path)
    meta = read_meta(folder)
    config = EMOConfig.from_dict(meta["config"])
    root = folder.parent
    meta["dir"] = str(folder)
    meta["vae_path"] = str(root / meta["vae"]) if meta.get("vae") else None
    meta["audio_encoder_path"] = str(root / meta["audio_encoder"]) if meta.get("audio_encoder") else None
    if meta["audio_encoder_path"]:
        config.audio_encoder = meta["audio_encoder_path"]
    model = EMOModel(config)
    load_weights(model, folder / "model.safetensors")
    if ema and (folder / "ema.safetensors").is_file():
        load_weights(model, folder / "ema.safetensors", strict=False)
    return model.to(device).eval(), config, meta
