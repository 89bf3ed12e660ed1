"""Speed layers: head rotation speed per frame, soft-bucketed as in EMO, embedded for the temporal modules.

EMO assigns a speed s (degrees per frame) to k buckets with centres c_i and radii r_i through
sw_i = tanh(3 (s - c_i) / r_i): about -1 below a bucket, +1 above it and graded near its
centre, so neighbouring speeds get neighbouring codes. An MLP turns the k-vector into an
embedding that the temporal modules cross-attend to (model/temporal.py).
"""

from __future__ import annotations

import torch
from torch import nn


def speed_buckets(speed: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """(B, F) speeds -> (B, F, k) soft bucket codes."""
    return torch.tanh((speed[..., None] - centers) / radii * 3.0)


class SpeedEncoder(nn.Module):
    """Head speed per frame -> (B, F, speed_dim) embeddings."""

    def __init__(self, num_buckets: int, speed_max: float, dim: int):
        super().__init__()
        spacing = speed_max / max(num_buckets - 1, 1)
        # arange, not linspace: after transformers loads a model, linspace ignores a torch.device("meta") block.
        centers = torch.arange(num_buckets, dtype=torch.float32) * spacing
        self.register_buffer("centers", centers, persistent=False)
        self.register_buffer("radii", torch.full_like(centers, spacing), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(num_buckets, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, speed: torch.Tensor) -> torch.Tensor:
        # Buckets in float32 (tanh of small differences), then the MLP's own dtype (fp16/bf16 on a GPU).
        codes = speed_buckets(speed.float(), self.centers.float(), self.radii.float())
        return self.mlp(codes.to(self.mlp[0].weight.dtype))
