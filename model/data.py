"""Training batches from the `clips` manifest: frame windows, a reference frame, motion frames, audio.

The micro-batch of a step depends only on (seed, step, rank, micro): every random choice (clip,
window, reference frame, noise, timestep, condition dropout) comes from a generator seeded with
them, so a resumed run draws exactly the batches an uninterrupted run would, with no sampler state
to save, and every process of a multi-GPU run (rank) draws its own shard. Rank 0's first
micro-batch is seeded with (seed, step) alone: what a single process always drew.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from manifests import ManifestStore
from manifests.splits import exported_clips
from model.audio_features import audio_windows, build_featurizer, featurizer_cache_key, load_wav
from model.config import EMOConfig
from model.remote import ClipFiles

log = logging.getLogger(__name__)


class AudioFeatureCache:
    """Per-clip audio features (n_frames, L, D), computed on first use and kept under OUT/cache/audio."""

    def __init__(self, out: str | Path, config: EMOConfig, files: ClipFiles | None = None):
        self.files = files or ClipFiles(out)  # OUT itself, or a local cache of OUT on object storage
        self.out, self.config = self.files.dir, config
        self.key = featurizer_cache_key(config)  # from files alone: a cache hit never loads wav2vec2
        self._featurizer = None
        self._memory: dict[str, torch.Tensor] = {}

    @property
    def featurizer(self):
        if self._featurizer is None:  # built lazily: inside a DataLoader worker when there are workers
            self._featurizer = build_featurizer(self.config)
        return self._featurizer

    def __call__(self, clip: dict) -> torch.Tensor:
        if clip["clip_id"] in self._memory:
            return self._memory[clip["clip_id"]]
        path = self.out / "cache" / "audio" / self.key / f"{clip['clip_id']}.safetensors"
        if path.is_file():
            feats = load_file(path)["features"]
        else:
            feats = self.featurizer(load_wav(self.files.local(clip["audio_path"])), int(clip["n_frames"])).contiguous()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file({"features": feats}, str(tmp))
            os.replace(tmp, path)
        self._memory[clip["clip_id"]] = feats
        return feats


def _read_frames(path: Path, indices: list[int], size: int) -> torch.Tensor:
    """Frames at `indices` of an mp4 as (N, 3, size, size) in [-1, 1]."""
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    frames = torch.from_numpy(reader.get_batch(indices).asnumpy())  # (N, H, W, 3) uint8
    frames = frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # -> (N, 3, H, W) in [-1, 1]
    if frames.shape[-1] != size or frames.shape[-2] != size:
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return frames


class FrameCache:
    """Whole clips decoded and resized once and kept in memory, up to `megabytes`: a small corpus
    (the demo's) is then read from disk once instead of once per window. Beyond the budget, clips
    are read per window as before; the frames are the same either way."""

    def __init__(self, megabytes: int, size: int):
        self.budget, self.size = megabytes * 2**20, size
        self._clips: dict[Path, torch.Tensor] = {}

    def read(self, path: Path, indices: list[int]) -> torch.Tensor:
        clip = self._clips.get(path)
        if clip is None and self.budget > 0:
            import decord

            n = len(decord.VideoReader(str(path), ctx=decord.cpu(0)))
            if (n * 3 * self.size**2 * 4) <= self.budget:
                clip = self._clips[path] = _read_frames(path, list(range(n)), self.size)  # (n, 3, S, S)
                self.budget -= clip.numel() * clip.element_size()
        return clip[indices] if clip is not None else _read_frames(path, indices, self.size)


def face_fraction(store: ManifestStore, clips: list[dict]) -> float | None:
    """How much of a training crop the face fills: the median over `clips` of the face's side over
    the crop window's side (both in source pixels: clips.face_size_px, tracks.crop_box). A crop
    window holds all of a track's boxes, so a face that moves fills less of it than one that stays.
    The checkpoint records it and the sampler crops a portrait to the same share (model/sample.py);
    None where the tables do not say."""
    if "tracks" not in store.tables():
        return None
    windows = {r["track_id"]: r["crop_box"] for r in store.read("tracks", ["track_id", "crop_box"]).to_pylist()}
    shares = [c["face_size_px"] / (w[2] - w[0]) for c in clips
              if c.get("face_size_px") and (w := windows.get(c.get("track_id"))) and w[2] > w[0]]
    return round(float(np.median(shares)), 4) if shares else None


def _read_mask(path: Path | None, size: int) -> torch.Tensor:
    """The face-region mask as (1, size, size) in {0, 1}; the whole frame when the clip has none."""
    if path is None:
        return torch.ones(1, size, size)
    from PIL import Image

    mask = Image.open(path).convert("L").resize((size, size), Image.NEAREST)
    return torch.from_numpy((np.asarray(mask) > 127).astype(np.float32))[None]


class ClipWindows(torch.utils.data.Dataset):
    """Item k is micro-batch k % accumulation of training step `first_step + k // accumulation`,
    for process `rank`."""

    def __init__(self, out: str | Path, config: EMOConfig, stage: int, seed: int, first_step: int = 0,
                 num_steps: int = 1, rank: int = 0, accumulation: int = 1):
        self.out, self.config, self.seed = out, config, seed
        self.files = ClipFiles(out)  # OUT's files, through a bounded local cache when OUT is on object storage
        self.first_step, self.num_steps = first_step, num_steps
        self.rank, self.accumulation = rank, accumulation
        self.frames = 1 if stage == 1 else config.num_frames
        self.motion = 0 if stage == 1 else config.num_motion_frames
        self.audio = AudioFeatureCache(out, config, self.files) if stage > 1 else None
        self.speed = stage == 3
        self.frame_cache = FrameCache(config.frame_cache_mb, config.image_size)
        store = ManifestStore(out)
        if "clips" not in store.tables():
            raise FileNotFoundError(f"{out}: no clips manifest here (run emo curate, then emo export, into it)")
        rows = exported_clips(store)  # the export's split joined on; its near-duplicates left out
        self.clips = [r for r in rows if r["split"] in (None, "train") and r["n_frames"] > self.frames]
        if not self.clips:
            raise ValueError(f"{out}: no training clips with more than {self.frames} frames in the clips table")
        self.face_fraction = face_fraction(store, self.clips)

    def __len__(self) -> int:
        return self.num_steps * self.accumulation

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        step, micro = self.first_step + k // self.accumulation, k % self.accumulation
        if self.config.overfit_batch:
            step, micro = self.first_step, 0
        key = [self.seed, step] + ([self.rank, micro] if (self.rank, micro) != (0, 0) else [])
        rng = np.random.default_rng(key)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        examples = [self._example(rng) for _ in range(self.config.batch_size)]
        batch = {key: torch.stack([e[key] for e in examples]) for key in examples[0]}
        b, lat = self.config.batch_size, self.config.latent_size
        channels = self.config.unet.get("in_channels", 4)
        batch["noise"] = torch.randn(b, self.frames, channels, lat, lat, generator=gen)
        top = self.config.train_timestep_max or self.config.num_train_timesteps
        batch["timesteps"] = torch.randint(0, top, (b,), generator=gen)
        p = self.config.cond_drop_prob
        batch["reference_keep"] = (torch.rand(b, generator=gen) >= p).float()
        batch["audio_keep"] = (torch.rand(b, generator=gen) >= p).float()
        return batch

    def _example(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        index = int(rng.integers(len(self.clips)))
        clip = self.clips[index]
        n, f, m = int(clip["n_frames"]), self.frames, self.motion
        start = int(rng.integers(0, n - f + 1))
        outside = [i for i in range(n) if i < start or i >= start + f]  # the reference is never in the window
        ref = int(outside[int(rng.integers(len(outside)))])
        motion = list(range(start - m, start))
        valid = [i for i in motion if i >= 0]  # before the clip's start there is no previous clip: zeros
        frames = self.frame_cache.read(self.files.local(clip["crop_path"]), [*range(start, start + f), ref, *valid])
        ex = {
            # Which clip and window: logged, so a run shows what each process saw.
            "clip_index": torch.tensor(index), "window_start": torch.tensor(start),
            "frames": frames[:f],  # (F, 3, H, W)
            "reference": frames[f],  # (3, H, W)
            "face_mask": _read_mask(self.files.local(clip["face_mask_path"]) if clip["face_mask_path"] else None,
                                    self.config.image_size),
        }
        if self.config.mouth_loss_weight or self.config.sync_loss_weight:  # where the loss weighs more (a clip
            # without lips weighs evenly) and where the sync expert looks
            lips = clip.get("lip_mask_path")
            ex["lip_mask"] = _read_mask(self.files.local(lips), self.config.image_size) if lips else \
                torch.zeros(1, self.config.image_size, self.config.image_size)
        if self.config.audio_region == "lips" and self.audio is not None:
            lips = clip.get("lip_mask_path")  # a clip without lips lets the voice reach the whole frame
            ex["audio_region"] = _read_mask(self.files.local(lips) if lips else None, self.config.image_size)
        if m:
            motion_frames = torch.zeros(m, *frames.shape[1:])
            motion_frames[m - len(valid):] = frames[f + 1:]
            ex["motion"] = motion_frames  # (n, 3, H, W)
            ex["motion_valid"] = torch.tensor([i >= 0 for i in motion], dtype=torch.float32)  # (n,)
        if self.audio is not None:
            windows = audio_windows(self.audio(clip), self.config.audio_context)  # (n_frames, 2m+1, L*D)
            ex["audio"] = windows[start:start + f]
        if self.speed:
            speed = clip["head_speed"] or [0.0] * n
            ex["speed"] = torch.tensor(speed[start:start + f], dtype=torch.float32)
        return ex
