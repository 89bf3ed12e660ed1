"""The backbone: an SD 1.5-shaped UNet2DConditionModel that denoises video latents frame by frame.

There is no text prompt. The UNet's own cross-attention (attn2) is kept so pretrained weights
load unchanged; it sees a single all-zero "null context" token, and the audio layers ride along
on its attention processor (model/audio_attention.py). Frames are folded into the batch axis; the temporal
modules (model/temporal.py) unfold them after each spatial layer.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from torch import nn

SD15_DOWNLOAD_HINT = (
    "download runwayml/stable-diffusion-v1-5 (its unet/ and vae/ folders in diffusers format, e.g. "
    "`huggingface-cli download runwayml/stable-diffusion-v1-5 --include 'unet/*' 'vae/*' --local-dir SD15`) "
    "and pass --pretrained SD15"
)


def build_unet(unet_kwargs: dict) -> UNet2DConditionModel:
    """A UNet from UNet2DConditionModel keyword arguments (unknown keys are dropped)."""
    accepted = set(inspect.signature(UNet2DConditionModel.__init__).parameters) - {"self"}
    return UNet2DConditionModel(**{k: v for k, v in unet_kwargs.items() if k in accepted})


def load_pretrained_unet(pretrained: str | Path) -> UNet2DConditionModel:
    """The SD 1.5 UNet from a local diffusers folder (PATH/unet), with a clear message when absent."""
    folder = Path(pretrained) / "unet"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no diffusers UNet at {folder}: {SD15_DOWNLOAD_HINT}")
    return UNet2DConditionModel.from_pretrained(folder)


def unet_kwargs_of(unet: UNet2DConditionModel) -> dict:
    """The UNet's constructor arguments, JSON-ready, so a checkpoint can rebuild it without its source."""
    accepted = set(inspect.signature(UNet2DConditionModel.__init__).parameters) - {"self"}
    out = {}
    for k, v in dict(unet.config).items():
        if k in accepted:
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


def null_context(unet: UNet2DConditionModel, batch: int, like: torch.Tensor) -> torch.Tensor:
    """The all-zero stand-in for the text prompt the backbone no longer has: (batch, 1, cross_dim)."""
    return like.new_zeros(batch, 1, unet.config.cross_attention_dim)


@dataclass(frozen=True)
class Site:
    """A place after one spatial layer of a UNet where a temporal module sits (AnimateDiff's layout)."""

    name: str  # e.g. "down_blocks.0.1": block, then layer within it
    module: nn.Module  # the layer whose output the temporal module transforms
    channels: int


def temporal_sites(unet: UNet2DConditionModel) -> list[Site]:
    """After each (resnet, attention) pair of every down, mid and up block, in forward order."""
    sites = []
    for kind, blocks in (("down_blocks", unet.down_blocks), ("up_blocks", unet.up_blocks)):
        for i, block in enumerate(blocks):
            layers = block.attentions if getattr(block, "attentions", None) else block.resnets
            for j, layer in enumerate(layers):
                sites.append(Site(f"{kind}.{i}.{j}", layer, _out_channels(layer)))
    mid = unet.mid_block
    if mid is not None and getattr(mid, "attentions", None):
        sites.append(Site("mid_block.0", mid.attentions[0], _out_channels(mid.attentions[0])))
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    return sorted(sites, key=lambda s: (order[s.name.split(".")[0]], *map(int, s.name.split(".")[1:])))


def _out_channels(layer: nn.Module) -> int:
    # Transformer2DModel keeps in == out channels; ResnetBlock2D stores out_channels.
    return layer.out_channels if hasattr(layer, "out_channels") and layer.out_channels else layer.in_channels


def transformer_blocks(unet: UNet2DConditionModel) -> list[tuple[str, nn.Module]]:
    """Every BasicTransformerBlock, by its module name, in a fixed order."""
    from diffusers.models.attention import BasicTransformerBlock

    return [(n, m) for n, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)]
