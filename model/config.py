"""The EMO model's configuration: one dataclass and a registry of named sizes.

Tests and production differ only by name: `EMO_MODELS["tiny"]` (one layer per block, two heads,
8x8 latents, a parameter-free pixel codec and a mel featurizer; trains on two CPU cores),
`EMO_MODELS["demo"]` (tiny at 16x16 latents of 128 px, denoising changes from the reference) and
`EMO_MODELS["sd15"]` (Stable Diffusion 1.5's UNet shape, its VAE, wav2vec2 audio features).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Stable Diffusion 1.5's UNet, as in runwayml/stable-diffusion-v1-5/unet/config.json.
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

TINY_UNET = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 2,
    "norm_num_groups": 32,
}


@dataclass
class EMOConfig:
    """Architecture, data and optimisation settings of one EMO model."""

    name: str = "tiny"
    # UNet2DConditionModel kwargs shared by the backbone and ReferenceNet; replaced by the
    # pretrained UNet's own config when --pretrained is given.
    unet: dict[str, Any] = field(default_factory=lambda: dict(TINY_UNET))
    image_size: int = 64  # pixels; latents are image_size / 8
    # "pixel" (parameter-free, 4 channels), "pixel_patches" (parameter-free, 48 channels: a parted lip survives)
    # or "autoencoder_kl" (SD's VAE); model/latents.py. The UNet's in/out channels must match.
    codec: str = "pixel"
    # Denoise each frame's change from the reference instead of the frame (model/reference_skip.py).
    reference_skip: bool = False
    residual_scale: float = 1.0  # the changes times this: towards the noise's unit variance
    requires_pretrained: bool = False  # sd15 refuses to start from random weights

    # Audio: features of `audio_feature_layers` encoder layers of width `audio_feature_dim` per video
    # frame; each frame sees `audio_context` neighbours on each side (EMO's m=2).
    audio_encoder: str | None = None  # None: the offline mel featurizer; else a wav2vec2 path
    audio_feature_layers: int = 2
    audio_feature_dim: int = 32
    audio_context: int = 2
    audio_dim: int = 32  # width of the audio tokens the backbone attends to
    audio_hidden: int = 64
    audio_null_token: bool = False  # one learned token beside the audio's (model/audio_attention.py says why)
    # Where the audio attention may write: "frame" (everywhere, as EMO) or "lips" (inside the clip's
    # lip mask in training, the portrait's lips when sampling; Hallo confines it likewise).
    audio_region: str = "frame"

    # Temporal modules (AnimateDiff-style) and motion frames.
    num_frames: int = 12  # f, frames denoised together in stages 2 and 3
    num_motion_frames: int = 4  # n, last frames of the previous clip
    temporal_heads: int = 2
    temporal_max_frames: int = 32

    # Head speed (degrees per frame), EMO's tanh soft buckets.
    speed_buckets: int = 9
    speed_max: float = 8.0
    speed_dim: int = 32

    # Training.
    batch_size: int = 2
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # The diffusion loss weighs 1 + this inside the clip's lip mask, so the few latents of the mouth
    # are not drowned by the rest of the frame (Hallo weighs lip, face and the rest likewise); 0: plain MSE.
    mouth_loss_weight: float = 0.0
    cond_drop_prob: float = 0.05  # per condition (reference, audio), for classifier-free guidance
    num_train_timesteps: int = 1000
    # Training draws timesteps from [0, this) (default: all of them). Lower puts the steps where the
    # mouth is neither drowned by the noise nor readable from the noisy input: the demo's stage 2 at
    # 500 gave the audio's timing 0.07% inside the mouth after 150 steps, 0.02% at all timesteps
    # (benchmarks/audio_use.py; README, "The demo corpus"). Sampling is unchanged.
    train_timestep_max: int | None = None
    # Stages 2 and 3 add this times a lip-sync expert's -log p(in sync) of the predicted mouths
    # (model/sync_expert.py: fitted on the run's clips at its start); 0: none.
    sync_loss_weight: float = 0.0
    prediction_type: str = "epsilon"  # epsilon (SD 1.5's) | v_prediction
    save_every: int = 500
    keep_checkpoints: int = 2
    gradient_checkpointing: bool = False  # backbone and ReferenceNet recompute activations
    num_workers: int = 0
    frame_cache_mb: int = 0  # keep decoded clips in memory up to this (per process and worker)
    # Steps of batch_size per process summed before each optimizer step.
    gradient_accumulation: int = 1
    # Memory switches (model/memory.py says what each saves).
    optimizer: str = "adamw"  # adamw | adamw8bit (needs bitsandbytes)
    ema_device: str = "same"  # same | cpu
    frozen_dtype: str = "fp32"  # fp32 | bf16 | fp16: frozen weights, under mixed precision
    mixed_precision: str = "auto"  # auto | no | fp16 | bf16
    # Debugging aid: repeat step 0's batch (noise and timestep included) every step, so a
    # working model must drive the loss towards zero (the overfitting test uses it).
    overfit_batch: bool = False

    def __post_init__(self):
        if self.audio_region not in ("frame", "lips"):
            raise ValueError(f"audio_region must be 'frame' or 'lips', not {self.audio_region!r}")
        if self.train_timestep_max is not None and not 0 < self.train_timestep_max <= self.num_train_timesteps:
            raise ValueError(f"train_timestep_max must be in 1..{self.num_train_timesteps} "
                             f"(num_train_timesteps), not {self.train_timestep_max}")

    @property
    def latent_size(self) -> int:
        return self.image_size // 8

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EMOConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown EMO config keys: {sorted(unknown)}")
        return cls(**d)


EMO_MODELS: dict[str, EMOConfig] = {
    "tiny": EMOConfig(),
    # The demo's model: tiny's UNet on 16x16 latents of a 128-px crop, with the reference skip path,
    # so a CPU demo of minutes shows a face (pipeline/demo.py).
    "demo": EMOConfig(
        name="demo",
        unet={**TINY_UNET, "sample_size": 16},
        image_size=128,
        reference_skip=True,
        residual_scale=4.0,
        audio_null_token=True,  # the voice can reach the mouth alone (model/audio_attention.py)
        audio_context=0,  # one audio token per frame: five frames of audio averaged blur the timing
        mouth_loss_weight=20.0,  # the mouth's latents count (model/train_loop.py: diffusion_loss)
        train_timestep_max=500,  # where the mouth is neither drowned by noise nor read from the input
        sync_loss_weight=0.2,  # and a lip-sync expert judges the predicted mouths (model/sync_expert.py)
        frame_cache_mb=1024,  # the demo's training clips, decoded once (about 200 MB at 128 px)
    ),
    "sd15": EMOConfig(
        name="sd15",
        unet=dict(SD15_UNET),
        image_size=512,
        codec="autoencoder_kl",
        requires_pretrained=True,
        audio_feature_layers=12,
        audio_feature_dim=768,
        audio_dim=768,
        audio_hidden=1024,
        temporal_heads=8,
        speed_dim=320,
        batch_size=1,
        learning_rate=1e-5,
        weight_decay=1e-2,
        ema_decay=0.9999,
        save_every=2000,
        gradient_checkpointing=True,
        num_workers=4,
    ),
}


def load_config(model: str, file: str | Path | None = None, **overrides: Any) -> EMOConfig:
    """A named size, updated by a YAML/JSON file's keys and then by keyword overrides."""
    if model not in EMO_MODELS:
        raise KeyError(f"unknown model size {model!r}; known: {', '.join(EMO_MODELS)}")
    d = EMO_MODELS[model].to_dict()
    if file is not None:
        text = Path(file).read_text()
        if str(file).endswith((".yaml", ".yml")):
            import yaml

            d.update(yaml.safe_load(text) or {})
        else:
            d.update(json.loads(text))
    d.update({k: v for k, v in overrides.items() if v is not None})
    return EMOConfig.from_dict(d)
