"""A lip-sync expert on latents, and the stage-2 loss it gives: does this mouth move with this audio?

Why: a denoising loss alone lets the model leave the audio's timing out. The lips are a few
percent of the frame, and at the noise levels where the mouth could come from the audio it is
already readable from the noisy frames (README, "The demo corpus": the audio's timing lowers the
demo's loss inside the mouth by 0.02-2.5%). Wav2Lip (Prajwal et al., 2020) met the same thing in
GANs and fixed it with a frozen expert, trained beforehand to tell in-sync from shifted audio,
scoring the generated mouths; LatentSync does it inside latent diffusion. Here the expert reads
latents directly:

    mouth    K frames of the latents in a box around the clip's lip mask (MOUTH_BOX of the grid),
             each minus the K frames' mean (what moves, not whose mouth it is), averaged to POOLED cells
    audio    the same K frames' audio features
    score    scale * cos(mouth embedding, audio embedding) + bias: > 0 in sync, < 0 shifted

`fit_expert` trains it at the start of stages 2 and 3 on the run's own training clips (in sync, against
the same clip's audio at least K frames away), in seconds, and keeps it beside the checkpoints
(sync_expert.safetensors, reused on resume). In training (model/train_loop.py) the loss is the
expert's -log p(in sync) of the mouths the model predicts (the clean latents implied by its
output), weighted per example by how much signal is left at its timestep (alphas_cumprod).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("emo.train")

K = 5  # frames per judgement (SyncNet's 0.2 s at 25 fps)
MOUTH_BOX = (0.25, 0.375)  # the box around the lips' centre, as shares of the latent grid (4 x 6 of 16 x 16)
POOLED = (2, 3)  # the box averaged to this many cells: a few hundred windows do not overfit it
FIT_STEPS, FIT_BATCH, HOLDOUT = 1500, 64, 0.2
FIT_CLIPS = 64  # the most clips the expert is fitted on (each encoded whole once)


def lip_centres(lip_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) lip masks -> (B, 2) (row, column) of their centre on a latent grid of `size`;
    the grid's centre for a clip without lips."""
    small = F.adaptive_avg_pool2d(lip_mask.float(), size)[:, 0]  # (B, h, w)
    rows = torch.arange(size[0], dtype=torch.float32)[:, None]
    cols = torch.arange(size[1], dtype=torch.float32)[None]
    mass = small.sum((1, 2))
    centre = torch.tensor([(size[0] - 1) / 2, (size[1] - 1) / 2])
    found = torch.stack([(small * rows).sum((1, 2)), (small * cols).sum((1, 2))], 1) / mass.clamp(min=1e-6)[:, None]
    return torch.where(mass[:, None] > 0, found, centre)


def mouth_box(h: int, w: int) -> tuple[int, int]:
    """Rows and columns of the mouth box on an h x w latent grid (at least the pooled cells)."""
    return max(POOLED[0], round(h * MOUTH_BOX[0])), max(POOLED[1], round(w * MOUTH_BOX[1]))


def mouth_crops(latents: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(B, F, C, h, w) latents and (B, 2) centres -> (B, F, C, bh, bw), the mouth box kept inside the grid."""
    h, w = latents.shape[-2:]
    bh, bw = mouth_box(h, w)
    crops = []
    for b in range(latents.shape[0]):
        top = min(max(math.floor(float(centres[b, 0]) - (bh - 1) / 2 + 0.5), 0), h - bh)
        left = min(max(math.floor(float(centres[b, 1]) - (bw - 1) / 2 + 0.5), 0), w - bw)
        crops.append(latents[b, :, :, top:top + bh, left:left + bw])
    return torch.stack(crops)


def windows(x: torch.Tensor) -> torch.Tensor:
    """(B, F, ...) -> (B, F-K+1, K, ...): every run of K consecutive frames."""
    return x.unfold(1, K, 1).movedim(-1, 2)


class SyncExpert(nn.Module):
    """Scores K frames of mouth crops against K frames of audio features."""

    def __init__(self, channels: int, audio_dim: int, width: int = 64, embed: int = 32):
        super().__init__()
        mouth_in = K * channels * POOLED[0] * POOLED[1]
        self.mouth = nn.Sequential(nn.Linear(mouth_in, width), nn.SiLU(), nn.Linear(width, embed))
        self.audio = nn.Sequential(nn.LayerNorm(K * audio_dim), nn.Linear(K * audio_dim, width), nn.SiLU(),
                                   nn.Linear(width, embed))
        self.scale = nn.Parameter(torch.tensor(5.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def forward(self, mouths: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(..., K, C, bh, bw) mouth crops and (..., K, A) audio -> (...) logits of 'in sync'."""
        moving = mouths - mouths.mean(-4, keepdim=True)  # what moves over the K frames
        lead = moving.shape[:-3]
        cells = F.adaptive_avg_pool2d(moving.flatten(0, -4), POOLED).view(*lead, -1)  # (..., K, C*rows*cols)
        m = F.normalize(self.mouth(cells.flatten(-2)), dim=-1)
        a = F.normalize(self.audio(audio.flatten(-2)), dim=-1)
        return self.scale * (m * a).sum(-1) + self.bias


def sync_loss(expert: SyncExpert, clean: torch.Tensor, audio: torch.Tensor, centres: torch.Tensor,
              weight: torch.Tensor) -> torch.Tensor:
    """-log p(in sync) of every K-frame run of predicted clean latents (B, F, C, h, w) against the
    frames' own audio (B, F, A), averaged with per-example weights (B,)."""
    logits = expert(windows(mouth_crops(clean, centres)), windows(audio))  # (B, F-K+1)
    per_example = F.softplus(-logits).mean(1)
    return (weight * per_example).sum() / weight.sum().clamp(min=1e-6)


def _clip_tensors(dataset, codec, config, device, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(latents (n, C, h, w), audio (n, A), lip centre (2,)) of up to FIT_CLIPS training clips with a
    lip mask (drawn with `seed` when there are more: a large corpus is not encoded whole)."""
    from model.data import _read_mask

    clips = [c for c in dataset.clips if c.get("lip_mask_path")]
    if len(clips) > FIT_CLIPS:
        pick = np.random.default_rng(seed).choice(len(clips), FIT_CLIPS, replace=False)
        clips = [clips[i] for i in sorted(pick)]
    out = []
    for clip in clips:
        n = int(clip["n_frames"])
        frames = dataset.frame_cache.read(dataset.files.local(clip["crop_path"]), list(range(n)))
        with torch.no_grad():
            latents = torch.cat([codec.encode(frames[i:i + 64].to(device)).float().cpu() for i in range(0, n, 64)])
        scale = config.residual_scale if config.reference_skip else 1.0  # the model's own units
        audio = dataset.audio(clip).flatten(1)[:n]  # (n, L*D)
        mask = _read_mask(dataset.files.local(clip["lip_mask_path"]), config.image_size)[None]
        out.append((latents * scale, audio, lip_centres(mask, latents.shape[-2:])[0]))
    return out


def _part(n: int, part: str) -> tuple[int, int]:
    """The frames [lo, hi) of an n-frame clip in its training part (the first 1 - HOLDOUT) or held-out part."""
    cut = int(n * (1 - HOLDOUT))
    return (0, cut) if part == "train" else (cut, n)


def _length(n: int, part: str) -> int:
    lo, hi = _part(n, part)
    return hi - lo


def _draw(clips, rng: np.random.Generator, batch: int, part: str):
    """A batch of (mouth windows, audio in sync, audio >= K frames away) from one part of the clips."""
    usable = [c for c in clips if _length(len(c[0]), part) >= 2 * K]  # then the first start has a window K away
    if not usable:
        raise ValueError(f"the sync expert needs clips of at least {int(np.ceil(2 * K / HOLDOUT))} frames")
    mouths, good, bad = [], [], []
    while len(mouths) < batch:
        latents, audio, centre = usable[int(rng.integers(len(usable)))]
        lo, hi = _part(len(latents), part)
        s = int(rng.integers(lo, hi - K + 1))
        far = [o for o in range(lo, hi - K + 1) if abs(o - s) >= K]
        if not far:  # a short part: a start in its middle has no window K frames away
            continue
        o = int(far[int(rng.integers(len(far)))])
        mouths.append(mouth_crops(latents[None, s:s + K], centre[None])[0])
        good.append(audio[s:s + K])
        bad.append(audio[o:o + K])
    return torch.stack(mouths), torch.stack(good), torch.stack(bad)


def fit_expert(dataset, codec, config, seed: int = 0, device="cpu") -> tuple[SyncExpert, float]:
    """The expert trained on the clips of `dataset` (a model.data.ClipWindows), in the model's latents
    (the codec on `device`; the expert itself trains on the CPU, in seconds)."""
    clips = _clip_tensors(dataset, codec, config, device, seed)
    if not clips:
        raise ValueError("sync_loss_weight needs clips with lip masks (the faces stage writes them)")
    return fit(clips, seed)


def fit(clips: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], seed: int = 0,
        steps: int = FIT_STEPS) -> tuple[SyncExpert, float]:
    """The expert trained on (latents (n, C, h, w), audio (n, A), lip centre (2,)) per clip; returns
    it (frozen, eval) and its held-out accuracy: in-sync windows scored > 0 and shifted ones < 0, on
    the last HOLDOUT of each clip, which training never sees."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    expert = SyncExpert(clips[0][0].shape[1], clips[0][1].shape[1])
    opt = torch.optim.AdamW(expert.parameters(), lr=1e-3, weight_decay=0.1)
    for _ in range(steps):
        mouths, good, bad = _draw(clips, rng, FIT_BATCH, "train")
        loss = F.softplus(-expert(mouths, good)).mean() + F.softplus(expert(mouths, bad)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    expert.eval().requires_grad_(False)
    with torch.no_grad():
        mouths, good, bad = _draw(clips, rng, 512, "held_out")
        accuracy = float(((expert(mouths, good) > 0).float().mean() + (expert(mouths, bad) < 0).float().mean()) / 2)
    return expert, accuracy


def expert_for_run(out: Path, dataset, codec, config, seed: int, keep: bool = True, device="cpu") -> SyncExpert:
    """The run's expert: read from OUT/sync_expert.safetensors when a resumed run has one, else fitted
    (the same on every process: same clips, same seed) and, with `keep` (the main process), kept there."""
    from safetensors.torch import load_file, save_file

    path = Path(out) / "sync_expert.safetensors"
    if path.is_file():
        state = load_file(path)
        expert = SyncExpert(state["mouth.0.weight"].shape[1] // (K * POOLED[0] * POOLED[1]),
                            state["audio.0.weight"].shape[0] // K)
        expert.load_state_dict(state)
        return expert.eval().requires_grad_(False)
    expert, accuracy = fit_expert(dataset, codec, config, seed, device)
    log.info("sync expert: held-out accuracy %.3f (in sync vs the same clip's audio >= %d frames away)", accuracy, K)
    if not keep:
        return expert
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in expert.state_dict().items()}, str(path), metadata={"accuracy": f"{accuracy:.4f}"})
    return expert
