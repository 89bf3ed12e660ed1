"""Latent codecs: images in [-1, 1] <-> the latents the UNets see, at 1/8 of the resolution.

`KLCodec` wraps Stable Diffusion's AutoencoderKL (frozen). `PixelCodec` is the tiny model's
parameter-free stand-in: an 8x area downsample to RGB plus luma as four channels, decoded by
upsampling, so the tiny model trains in seconds and its samples still show a (blurry) face.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from model.unet import SD15_DOWNLOAD_HINT


class PixelCodec(nn.Module):
    """(N, 3, H, W) -> (N, 4, H/8, W/8): RGB area means and luma."""

    factor = 8

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        rgb = F.avg_pool2d(images.float(), self.factor)  # (N, 3, H, W) -> (N, 3, H/8, W/8)
        luma = (0.299 * rgb[:, :1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3])
        return torch.cat([rgb, luma], dim=1)  # (N, 4, H/8, W/8)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        rgb = latents[:, :3].float()
        return F.interpolate(rgb, scale_factor=self.factor, mode="bilinear", align_corners=False).clamp(-1, 1)


class KLCodec(nn.Module):
    """Stable Diffusion's VAE, scaled by its `scaling_factor`; the latent mean is used, not a sample."""

    factor = 8

    def __init__(self, vae):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.scale = float(vae.config.scaling_factor)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(images.to(dtype)).latent_dist.mean.float() * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode((latents / self.scale).to(dtype)).sample.float().clamp(-1, 1)


def load_codec(kind: str, folder: str | Path | None) -> nn.Module:
    """The codec a config names; `folder` holds an AutoencoderKL in diffusers format (PATH/vae)."""
    if kind == "pixel":
        return PixelCodec()
    if kind != "autoencoder_kl":
        raise ValueError(f"unknown codec {kind!r}")
    if folder is None or not (Path(folder) / "config.json").is_file():
        raise FileNotFoundError(f"no diffusers VAE at {folder}: {SD15_DOWNLOAD_HINT}")
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder)
    if 2 ** (len(vae.config.block_out_channels) - 1) != 8:
        raise ValueError(f"{folder}: the VAE must downsample by 8, as SD's does")
    return KLCodec(vae)
