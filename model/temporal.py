"""Temporal modules: self-attention along the frame axis after every spatial layer (AnimateDiff).

One module sits after each (resnet, attention) pair of the backbone, where AnimateDiff puts its
motion modules, so AnimateDiff weights map one to one (`load_motion_module`). Each module also
sees the motion frames (ReferenceNet's features of the previous clip's last n frames, prepended
along the frame axis) and cross-attends to the per-frame speed embeddings. `proj_out` starts at
zero, so a module is the identity until trained.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.unet import temporal_sites


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) sinusoidal positions, the same formula as AnimateDiff's and diffusers'."""
    position = torch.arange(length).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


class TemporalModule(nn.Module):
    """Frame-axis transformer on (B*F, C, H, W) features; key names follow AnimateDiff's."""

    def __init__(self, channels: int, heads: int, speed_dim: int, max_frames: int, norm_groups: int):
        super().__init__()
        dim_head = channels // heads
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.attention_blocks = nn.ModuleList(
            [Attention(query_dim=channels, heads=heads, dim_head=dim_head) for _ in range(2)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(channels) for _ in range(2)])
        self.speed_norm = nn.LayerNorm(channels)
        self.speed_attention = Attention(query_dim=channels, cross_attention_dim=speed_dim, heads=heads, dim_head=dim_head)
        self.ff_norm = nn.LayerNorm(channels)
        self.ff = FeedForward(channels, activation_fn="geglu")
        self.proj_out = nn.Linear(channels, channels)
        self.register_buffer("pe", sinusoidal_positions(max_frames, channels), persistent=False)

    def forward(self, x: torch.Tensor, num_frames: int, motion: torch.Tensor | None = None,
                speed: torch.Tensor | None = None) -> torch.Tensor:
        """x (B*F, C, H, W); motion (B, n, C, H, W) or None; speed (B, F, speed_dim) or None."""
        bf, c, h, w = x.shape
        b, f = bf // num_frames, num_frames
        frames = x.view(b, f, c, h, w)  # (B*F, C, H, W) -> (B, F, C, H, W)
        n = 0
        if motion is not None:  # motion frames precede the window on the frame axis
            n = motion.shape[1]
            frames = torch.cat([motion.to(x.dtype), frames], dim=1)  # -> (B, n+F, C, H, W)
        # Group statistics span all frames of a sample, as in AnimateDiff: (B, C, n+F, H, W).
        hidden = self.norm(frames.permute(0, 2, 1, 3, 4))
        # (B, C, n+F, H, W) -> (B, H, W, n+F, C) -> (B*H*W, n+F, C)
        hidden = hidden.permute(0, 3, 4, 2, 1).reshape(b * h * w, n + f, c)
        if n + f > self.pe.shape[0]:
            raise ValueError(f"{n}+{f} frames exceed the temporal modules' {self.pe.shape[0]} positions")
        hidden = self.proj_in(hidden)
        for norm, attn in zip(self.norms, self.attention_blocks, strict=True):
            hidden = attn(norm(hidden) + self.pe[: n + f].to(hidden.dtype)) + hidden
        if speed is not None:
            tokens = speed.to(hidden.dtype).repeat_interleave(h * w, dim=0)  # (B, F, S) -> (B*H*W, F, S)
            hidden = self.speed_attention(self.speed_norm(hidden), encoder_hidden_states=tokens) + hidden
        hidden = self.ff(self.ff_norm(hidden)) + hidden
        hidden = self.proj_out(hidden[:, n:])  # the window's own frames: (B*H*W, F, C)
        # (B*H*W, F, C) -> (B, H, W, F, C) -> (B, F, C, H, W) -> (B*F, C, H, W)
        hidden = hidden.view(b, h, w, f, c).permute(0, 3, 4, 1, 2).reshape(bf, c, h, w)
        return x + hidden


def temporal_modules(backbone, config) -> tuple[nn.ModuleList, list[str]]:
    """One TemporalModule per backbone site, and the sites' names (AnimateDiff's order)."""
    sites = temporal_sites(backbone)
    groups = backbone.config.norm_num_groups
    modules = [TemporalModule(s.channels, config.temporal_heads, config.speed_dim, config.temporal_max_frames, groups)
               for s in sites]
    return nn.ModuleList(modules), [s.name for s in sites]


def install_temporal_modules(backbone, state, modules: nn.ModuleList) -> None:
    """Hook each module onto the output of its backbone site; `state.checkpointing` toggles recomputation."""
    for site, module in zip(temporal_sites(backbone), modules, strict=True):
        site.module.register_forward_hook(_temporal_hook(state, site.name, module))


def _temporal_hook(state, name: str, module: TemporalModule):
    def hook(layer, args, output):
        if not state.temporal:
            return None
        x = output[0] if isinstance(output, tuple) else output
        motion = state.reference.motion.get(name) if state.reference is not None else None
        if state.checkpointing and torch.is_grad_enabled():
            y = checkpoint(module, x, state.num_frames, motion, state.speed, use_reentrant=False)
        else:
            y = module(x, state.num_frames, motion, state.speed)
        return (y, *output[1:]) if isinstance(output, tuple) else y

    return hook


# AnimateDiff motion-module weights: the original release's keys and diffusers' MotionAdapter keys.
_SITE_KEY = re.compile(r"^(down_blocks|up_blocks|mid_block)\.(?:(\d+)\.)?motion_modules\.(\d+)\.(.+)$")
_RENAMES = [
    ("temporal_transformer.", ""),
    ("transformer_blocks.0.norm1.", "norms.0."),
    ("transformer_blocks.0.attn1.", "attention_blocks.0."),
    ("transformer_blocks.0.norm2.", "norms.1."),
    ("transformer_blocks.0.attn2.", "attention_blocks.1."),
    ("transformer_blocks.0.norm3.", "ff_norm."),
    ("transformer_blocks.0.", ""),
]


def map_motion_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """AnimateDiff keys -> {site name: {TemporalModule key: tensor}}; positional tables are recomputed."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _SITE_KEY.match(key)
        if match is None:
            raise KeyError(f"not an AnimateDiff motion-module key: {key!r}")
        kind, block, layer, rest = match.groups()
        site = f"{kind}.{block}.{layer}" if block is not None else f"{kind}.{layer}"
        for old, new in _RENAMES:
            rest = rest.replace(old, new, 1) if rest.startswith(old) else rest
        if rest.endswith(("pos_encoder.pe", "pos_embed.pe")):
            continue
        if "transformer_blocks." in rest:
            raise KeyError(f"{key!r}: only one temporal transformer block per module is supported")
        out.setdefault(site, {})[rest] = value
    return out


def load_motion_module(path: str | Path, modules: nn.ModuleList, site_names: list[str]) -> None:
    """Load AnimateDiff weights (a .safetensors file, or a diffusers MotionAdapter folder) into `modules`."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / "diffusion_pytorch_model.safetensors"
    if path.suffix in {".ckpt", ".pt", ".pth", ".bin"}:
        raise ValueError(
            f"{path}: refusing to unpickle a foreign checkpoint; use a .safetensors motion module (e.g. "
            "guoyww/animatediff-motion-adapter-v1-5-2's diffusion_pytorch_model.safetensors) or convert it first"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no motion module at {path}: download an AnimateDiff motion module "
                                "(e.g. guoyww/animatediff-motion-adapter-v1-5-2) and pass --motion-module")
    by_site = map_motion_keys(load_file(path))
    extra = sorted(set(by_site) - set(site_names))
    if extra:
        raise ValueError(f"{path}: motion modules for sites this UNet lacks: {extra} (a different UNet shape?)")
    for name, module in zip(site_names, modules, strict=True):
        weights = by_site.get(name)
        if weights is None:
            continue  # e.g. AnimateDiff v1 has no mid-block module: ours stays at zero output
        try:
            result = module.load_state_dict(weights, strict=False)
        except RuntimeError as err:
            raise ValueError(f"{path}: motion module for {name} does not fit: {err}") from None
        missing = [k for k in result.missing_keys if not k.startswith("speed_")]
        if missing or result.unexpected_keys:
            raise ValueError(f"{path}: motion module for {name}: missing {missing}, unexpected {result.unexpected_keys}")
