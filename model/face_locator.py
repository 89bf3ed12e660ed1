"""Face locator: a few light convolutions that encode the face-region mask into latent space.

Its output is added to every frame's noisy latent before the backbone, telling the model where
the face may move. The last convolution is zero-initialised (model/emo.py), so it starts silent.
"""

from __future__ import annotations

import torch
from torch import nn


class FaceLocator(nn.Module):
    """(B, 1, H, W) mask in [0, 1] -> (B, latent_channels, H/8, W/8)."""

    def __init__(self, latent_channels: int = 4, channels: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, channels[0], 3, padding=1), nn.SiLU()]
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):  # three stride-2 convs: /8
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(channels[-1], latent_channels, 3, padding=1)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.body(mask))
