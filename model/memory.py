"""The memory switches of a training run, for cards smaller than the 80 GB full stage 1 wants.

Full sd15 stage 1 holds about 37 GB before activations (fp32 weights 9.1, gradients 6.9, AdamW
moments 13.8, EMA 6.9). Each switch is one EMOConfig key (set them in --config):

    optimizer: adamw8bit      8-bit AdamW moments (bitsandbytes, optional): 13.8 -> about 3.5 GB
    ema_device: cpu           the EMA lives in host RAM: -6.9 GB on the device
    frozen_dtype: bf16        frozen weights (VAE aside) in bf16: stage 2 and 3 freeze most of the model
    gradient_checkpointing    recompute backbone and ReferenceNet activations in the backward pass
    mixed_precision           auto (bf16 or fp16 on CUDA, none on the CPU) | no | fp16 | bf16

Sharding weights, gradients and optimizer state across GPUs (FSDP, DeepSpeed ZeRO) is accelerate's
job: `accelerate config` then `accelerate launch -m model.train ...` (see the README).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("emo.train")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_optimizer(kind: str, params: list[torch.nn.Parameter], lr: float, weight_decay: float):
    """AdamW, or bitsandbytes' 8-bit AdamW (an optional dependency, needed only for this switch)."""
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if kind == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ValueError("optimizer: adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {kind!r}; known: adamw, adamw8bit")


def mixed_precision(setting: str) -> str:
    """accelerate's mixed_precision for a config's setting ('auto' picks by device)."""
    if setting != "auto":
        return setting
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def cast_frozen(model: torch.nn.Module, dtype_name: str, precision: str) -> int:
    """Frozen parameters to `dtype_name`; returns how many. Needs autocast to mix them with fp32 ones."""
    if dtype_name == "fp32":
        return 0
    if precision == "no":
        log.warning("frozen_dtype: %s ignored: it needs mixed_precision (autocast) to run", dtype_name)
        return 0
    count = 0
    for param in model.parameters():
        if not param.requires_grad:
            param.data = param.data.to(DTYPES[dtype_name])
            count += 1
    return count


def ema_device(setting: str, device: torch.device) -> torch.device:
    if setting not in ("same", "cpu"):
        raise ValueError(f"unknown ema_device {setting!r}; known: same, cpu")
    return torch.device("cpu") if setting == "cpu" else device
