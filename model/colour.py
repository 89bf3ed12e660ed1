"""Colour matching of generated frames to the reference: each frame's per-channel mean and spread set
to the reference crop's (AdaIN on pixels, as StableSR's colour fix does on its outputs).

A small model sampled in few steps gives each frame its own colour cast (the demo: the green-magenta
balance of the frame mean jumping by up to 15 levels between neighbouring frames), which reads as
flicker. A talking head's frame statistics barely change as the mouth and head move, so pinning them
to the reference takes the cast out and leaves the motion. Applied before the watermark goes in.
"""

from __future__ import annotations

import numpy as np


class ColourMatch:
    def __init__(self, reference: np.ndarray):
        """reference: (H, W, 3) uint8, the crop the model was given."""
        ref = reference.reshape(-1, 3).astype(np.float32)
        self.mean, self.std = ref.mean(0), ref.std(0)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> the same frames with the reference's per-channel mean and spread."""
        x = frames.astype(np.float32)
        mean = x.mean(axis=(1, 2), keepdims=True)
        std = x.std(axis=(1, 2), keepdims=True)
        out = (x - mean) / np.maximum(std, 1e-3) * self.std + self.mean
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
