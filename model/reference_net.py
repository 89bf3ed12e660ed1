"""ReferenceNet and reference-attention.

ReferenceNet is a second UNet of the backbone's shape, run once at t=0 on the reference image's
latent (and on the motion frames, model/temporal.py). Its self-attention inputs are handed to the
backbone's self-attention at the same transformer block, at every resolution: the backbone
attends jointly over its own tokens and the reference tokens. A zero-initialised tanh gate per
block blends the joint attention in, so a pretrained backbone starts unchanged:

    out = attn(x, x) + tanh(g) * (attn(x, [x; ref]) - attn(x, x))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from model.unet import null_context, temporal_sites, transformer_blocks

_attention = AttnProcessor2_0()


@dataclass
class ReferenceFeatures:
    """What ReferenceNet hands the backbone; computed once per reference (and motion window)."""

    attn: dict[str, torch.Tensor] = field(default_factory=dict)  # block name -> (B, N, C)
    motion: dict[str, torch.Tensor] = field(default_factory=dict)  # site name -> (B, n, C, h, w)


class _WriteProcessor:
    """ReferenceNet's attn1: record the reference image's tokens, then attend as usual."""

    def __init__(self, net: ReferenceNet, key: str):
        self.net, self.key = net, key

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        capture = self.net._capture
        if capture is not None:
            # (B*(1+n), N, C) -> (B, 1+n, N, C) -> the reference image, index 0: (B, N, C)
            _, n_tok, ch = hidden_states.shape
            capture.attn[self.key] = hidden_states.view(-1, self.net._images_per_sample, n_tok, ch)[:, 0]
        return _attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class ReferenceNet(nn.Module):
    """A parallel UNet run on the reference latent (plus motion frames) that only writes features."""

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        self.unet = unet
        self._capture: ReferenceFeatures | None = None
        self._images_per_sample = 1
        for name, block in transformer_blocks(unet):
            block.attn1.set_processor(_WriteProcessor(self, name))
        for site in temporal_sites(unet):
            site.module.register_forward_hook(self._motion_hook(site.name))

    def _motion_hook(self, name: str):
        def hook(module, args, output):
            capture, per = self._capture, self._images_per_sample
            if capture is None or per == 1:
                return None
            out = output[0] if isinstance(output, tuple) else output.sample if hasattr(output, "sample") else output
            # (B*(1+n), C, h, w) -> (B, 1+n, C, h, w) -> motion frames only: (B, n, C, h, w)
            capture.motion[name] = out.view(-1, per, *out.shape[1:])[:, 1:]
            return None

        return hook

    def forward(self, ref_latent: torch.Tensor, motion_latents: torch.Tensor | None = None) -> ReferenceFeatures:
        """ref_latent (B, C, h, w); motion_latents (B, n, C, h, w) or None (stage 1)."""
        images = ref_latent[:, None]  # (B, C, h, w) -> (B, 1, C, h, w)
        if motion_latents is not None:
            images = torch.cat([images, motion_latents.to(ref_latent.dtype)], dim=1)  # (B, 1+n, C, h, w)
        batch, per = images.shape[:2]
        flat = images.flatten(0, 1)  # (B, 1+n, C, h, w) -> (B*(1+n), C, h, w)
        timestep = torch.zeros(flat.shape[0], device=flat.device, dtype=torch.long)
        self._capture, self._images_per_sample = ReferenceFeatures(), per
        try:
            self.unet(flat, timestep, encoder_hidden_states=null_context(self.unet, flat.shape[0], flat))
            return self._capture
        finally:
            self._capture, self._images_per_sample = None, 1


class _ReferenceAttnProcessor:
    """The backbone's attn1: self-attention joined with the reference tokens behind a gate."""

    def __init__(self, state, key: str, gates: nn.Parameter, index: int):
        self.state, self.key, self.gates, self.index = state, key, gates, index

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        out = _attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        ref = self.state.reference.attn.get(self.key) if self.state.reference is not None else None
        if ref is None:
            return out
        # (B, N_ref, C) -> (B*F, N_ref, C): every frame of a sample sees its own reference
        ref = ref.to(hidden_states.dtype).repeat_interleave(self.state.num_frames, dim=0)
        joint = _attention(attn, hidden_states, torch.cat([hidden_states, ref], dim=1), attention_mask, temb)
        gate = torch.tanh(self.gates[self.index]).to(out.dtype)
        keep = self.state.frame_mask(self.state.reference_keep, out)  # (B*F, 1, 1)
        return out + (gate * keep) * (joint - out)


def install_reference_attention(backbone: UNet2DConditionModel, state, gates: nn.Parameter) -> None:
    """Point every backbone attn1 at its ReferenceNet twin; `gates` holds one scalar per block."""
    blocks = transformer_blocks(backbone)
    if gates.numel() != len(blocks):
        raise ValueError(f"{gates.numel()} reference gates for {len(blocks)} transformer blocks")
    for i, (name, block) in enumerate(blocks):
        block.attn1.set_processor(_ReferenceAttnProcessor(state, name, gates, i))
