"""Latent codecs: images in [-1, 1] <-> the latents the UNets see, at 1/8 of the resolution.

`KLCodec` wraps Stable Diffusion's AutoencoderKL (frozen). `PixelCodec` is the tiny model's
parameter-free stand-in: an 8x area downsample to RGB plus luma as four channels, decoded by
upsampling, so the tiny model trains in seconds and its samples still show a (blurry) face.
`PatchCodec` (codec "pixel_patches") keeps more of each 8x8 patch: its 4x4 RGB means as 48
channels, so a parted lip on a moving head survives (at 1/8 it is a smudge the face mesh misreads).
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
    channels = 4

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        rgb = F.avg_pool2d(images.float(), self.factor)  # (N, 3, H, W) -> (N, 3, H/8, W/8)
        luma = (0.299 * rgb[:, :1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3])
        return torch.cat([rgb, luma], dim=1)  # (N, 4, H/8, W/8)

    def upsample(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, 4, h, w) latents (or changes of them) -> (N, 3, 8h, 8w) RGB, not clamped."""
        return F.interpolate(latents[:, :3].float(), scale_factor=self.factor, mode="bilinear", align_corners=False)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.upsample(latents).clamp(-1, 1)


class PatchCodec(nn.Module):
    """(N, 3, H, W) -> (N, 3*d*d, H/8, W/8): each 8x8 patch as its d x d RGB means (d = `detail`).

    Parameter-free and exact up to the 2x2 means: decoding folds the channels back into an image of
    H*d/8 pixels and upsamples it. Why: a clip re-made from its own latents through the reference
    skip is what a perfect model could give (benchmarks/codec_ceiling.py). Of the demo's curated
    clips at 128 px, sync confidence of the clip / re-made at 1/8 (PixelCodec) / at d=4 (this):
    the astronaut, a still head whose mouth alone moves, 12.3 / 7.8 / 8.0; the carphone man, whose
    head turns away from the reference frame, 7.3 / 0.7 / 6.9. At 1/8 a moving head's change is a
    blur over the sharp reference and the face mesh reads its mouth as the reference's. The cost:
    48 channels of detail to denoise, which minutes of CPU training leave grainy (why the demo
    keeps PixelCodec: its sampled heads stay still).
    """

    factor = 8

    def __init__(self, detail: int = 4):
        super().__init__()
        if self.factor % detail:
            raise ValueError(f"detail {detail} must divide {self.factor}")
        self.detail = detail
        self.channels = 3 * detail * detail

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        small = F.avg_pool2d(images.float(), self.factor // self.detail)  # (N, 3, H*d/8, W*d/8)
        return F.pixel_unshuffle(small, self.detail)  # (N, 3*d*d, H/8, W/8)

    def upsample(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, 3*d*d, h, w) latents (or changes of them) -> (N, 3, 8h, 8w), not clamped."""
        small = F.pixel_shuffle(latents.float(), self.detail)  # (N, 3, h*d, w*d)
        return F.interpolate(small, scale_factor=self.factor // self.detail, mode="bilinear", align_corners=False)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.upsample(latents).clamp(-1, 1)


class KLCodec(nn.Module):
    """Stable Diffusion's VAE, scaled by its `scaling_factor`; the latent mean is used, not a sample."""

    factor = 8
    channels = 4

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
    if kind == "pixel_patches":
        return PatchCodec()
    if kind != "autoencoder_kl":
        raise ValueError(f"unknown codec {kind!r}")
    if folder is None or not (Path(folder) / "config.json").is_file():
        raise FileNotFoundError(f"no diffusers VAE at {folder}: {SD15_DOWNLOAD_HINT}")
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder)
    if 2 ** (len(vae.config.block_out_channels) - 1) != 8:
        raise ValueError(f"{folder}: the VAE must downsample by 8, as SD's does")
    return KLCodec(vae)
