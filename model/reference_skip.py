"""The reference skip path: the model denoises a frame's change from the reference, not the frame.

With `reference_skip` on, every video latent the model sees or makes (the window's frames and the
motion frames) is its difference from the reference latent, times `residual_scale`:

    z = residual_scale * (E(frame) - E(reference))        frame = reference + D(z / residual_scale)

so appearance reaches the output through this skip, and the network spends its capacity on what
differs from the reference: the mouth, the eyes, the head's motion. EMO gets appearance through
ReferenceNet's attention alone, which takes far longer to learn than the minutes a CPU demo has;
ReferenceNet still sees the (absolute) reference latent here. The residuals of a talking head are
small, so `residual_scale` lifts them towards the unit variance the noise schedule assumes.

With a parameter-free pixel codec (PixelCodec, PatchCodec) the skip is taken in pixels (the reference image plus the
upsampled change), so the reference keeps its full resolution; with a VAE, in latents.
"""

from __future__ import annotations

import torch

from model.latents import PatchCodec, PixelCodec


def to_residual(latents: torch.Tensor, ref_latent: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, F, C, h, w) latents and (B, C, h, w) reference -> (B, F, C, h, w) scaled differences."""
    return (latents - ref_latent[:, None]) * scale  # the reference broadcast over frames


def decode_residual(codec, residual: torch.Tensor, ref_image: torch.Tensor, ref_latent: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """(N, C, h, w) residuals of one reference -> (N, 3, H, W) images in [-1, 1].

    ref_image (1, 3, H, W) in [-1, 1]; ref_latent (1, C, h, w), its encoding.
    """
    change = residual.float() / scale
    if isinstance(codec, (PixelCodec, PatchCodec)):
        # (N, C, h, w) -> (N, 3, H, W): the change at full resolution, added to the sharp reference
        return (ref_image.float() + codec.upsample(change)).clamp(-1, 1)
    return codec.decode(ref_latent.float() + change)
