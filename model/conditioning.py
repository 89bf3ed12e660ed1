"""The per-forward conditioning that the backbone's attention processors and hooks read, and the
gradient-checkpointing switch the temporal hooks obey.

diffusers' UNet forward only carries a timestep and one context tensor, so EMO's other
conditions (reference features, audio tokens, motion frames, speed) are set here by
`EMOModel.forward` before the backbone runs. It is deliberately left in place after the
forward: gradient checkpointing recomputes layers during backward and must see the same values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.reference_net import ReferenceFeatures


@dataclass
class ForwardState:
    num_frames: int = 1  # F, frames per sample folded into the backbone's batch axis
    reference: ReferenceFeatures | None = None
    reference_keep: torch.Tensor | None = None  # (B,) 1 keeps the reference, 0 drops it (CFG)
    audio_tokens: torch.Tensor | None = None  # (B*F, 2m+1 [+1 null], audio_dim)
    audio_keep: torch.Tensor | None = None  # (B,)
    audio_region: torch.Tensor | None = None  # (B, 1, H, W) in [0, 1]: where audio attention writes; None: everywhere
    speed: torch.Tensor | None = None  # (B, F, speed_dim)
    temporal: bool = False  # stage 1 trains on single images: no temporal modules
    checkpointing: bool = False  # temporal modules recompute activations in backward (set_gradient_checkpointing)

    def region_mask(self, like: torch.Tensor) -> torch.Tensor | float:
        """`audio_region` at the resolution of `like` (B*F, N, C), a square block of N positions, as
        (B*F, N, 1): a position is in the region if any pixel it covers is; 1.0 when there is none."""
        if self.audio_region is None:
            return 1.0
        side = math.isqrt(like.shape[1])
        region = F.adaptive_max_pool2d(self.audio_region.to(like.dtype), side)  # (B, 1, side, side)
        return region.flatten(1)[..., None].repeat_interleave(self.num_frames, dim=0)  # (B*F, N, 1)

    def frame_mask(self, keep: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | float:
        """A per-sample keep mask (B,) as (B*F, 1, 1), in `like`'s dtype; 1.0 when absent."""
        if keep is None:
            return 1.0
        # (B,) -> (B*F, 1, 1)
        return keep.to(like.dtype).repeat_interleave(self.num_frames)[:, None, None]
