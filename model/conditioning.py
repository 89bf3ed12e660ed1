"""The per-forward conditioning that the backbone's attention processors and hooks read, and the
gradient-checkpointing switch the temporal hooks obey.

diffusers' UNet forward only carries a timestep and one context tensor, so EMO's other
conditions (reference features, audio tokens, motion frames, speed) are set here by
`EMOModel.forward` before the backbone runs. It is deliberately left in place after the
forward: gradient checkpointing recomputes layers during backward and must see the same values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.reference_net import ReferenceFeatures


@dataclass
class ForwardState:
    num_frames: int = 1  # F, frames per sample folded into the backbone's batch axis
    reference: ReferenceFeatures | None = None
    reference_keep: torch.Tensor | None = None  # (B,) 1 keeps the reference, 0 drops it (CFG)
    audio_tokens: torch.Tensor | None = None  # (B*F, 2m+1 [+1 null], audio_dim)
    audio_keep: torch.Tensor | None = None  # (B,)
    speed: torch.Tensor | None = None  # (B, F, speed_dim)
    temporal: bool = False  # stage 1 trains on single images: no temporal modules
    checkpointing: bool = False  # temporal modules recompute activations in backward (set_gradient_checkpointing)

    def frame_mask(self, keep: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | float:
        """A per-sample keep mask (B,) as (B*F, 1, 1), in `like`'s dtype; 1.0 when absent."""
        if keep is None:
            return 1.0
        # (B,) -> (B*F, 1, 1)
        return keep.to(like.dtype).repeat_interleave(self.num_frames)[:, None, None]
