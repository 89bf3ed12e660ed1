"""Audio cross-attention: ±m frame feature windows to tokens, and one cross-attention per backbone block.

Each frame's window of features (model/audio_features.py) is projected to 2m+1 tokens that every
backbone transformer block cross-attends to, beside its own attn2, behind a zero-initialised
output projection (EMOModel.init_new_layers), so the backbone starts unchanged.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from model.unet import transformer_blocks

_attention = AttnProcessor2_0()


class AudioProjection(nn.Module):
    """(..., 2m+1, L*D) windows -> (..., 2m+1, audio_dim) tokens, with a learned offset embedding;
    with `null_token`, one more learned token (zeros at first) after them.

    Why the null token: every position of a block attends to the same few audio tokens, so without
    one the attention's output is a convex mix of the same values everywhere, about the same vector
    at the mouth as on the cheek, and only the layers after it can confine the voice to the mouth.
    A token that carries nothing gives each position somewhere else to put its weight: the mouth's
    positions can take the voice while the rest take nothing.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, window: int, null_token: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))
        self.offset = nn.Parameter(torch.zeros(window, out_dim))
        self.out_norm = nn.LayerNorm(out_dim)
        self.null = nn.Parameter(torch.zeros(1, out_dim)) if null_token else None

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        tokens = self.out_norm(self.mlp(self.norm(windows)) + self.offset)  # (..., 2m+1, audio_dim)
        if self.null is None:
            return tokens
        null = self.null.to(tokens.dtype).expand(*tokens.shape[:-2], 1, -1)  # (..., 1, audio_dim)
        return torch.cat([tokens, null], dim=-2)


def audio_attention_layers(backbone, audio_dim: int) -> nn.ModuleList:
    """One cross-attention (query: block features, keys: audio tokens) per backbone transformer block."""
    layers = []
    for _, block in transformer_blocks(backbone):
        ch, heads = block.attn1.query_dim, block.attn1.heads
        layers.append(Attention(query_dim=ch, cross_attention_dim=audio_dim, heads=heads, dim_head=ch // heads))
    return nn.ModuleList(layers)


class _AudioAttnProcessor:
    """The backbone's attn2: its original cross-attention to the null context, plus audio attention."""

    def __init__(self, state, layer: Attention):
        self.state, self.layer = state, layer

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        out = _attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        tokens = self.state.audio_tokens
        if tokens is None:
            return out
        audio = self.layer(hidden_states, encoder_hidden_states=tokens.to(hidden_states.dtype))  # (B*F, N, C)
        keep = self.state.frame_mask(self.state.audio_keep, out) * self.state.region_mask(out)
        return out + keep * audio


def install_audio_attention(backbone, state, layers: nn.ModuleList) -> None:
    """Route every backbone attn2 through `_AudioAttnProcessor` with its own audio layer."""
    for (_, block), layer in zip(transformer_blocks(backbone), layers, strict=True):
        block.attn2.set_processor(_AudioAttnProcessor(state, layer))
