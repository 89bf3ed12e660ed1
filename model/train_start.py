"""Where a training run starts: the stage's fresh model, a parent checkpoint, or the run's own latest step.

A fresh run builds the named size (or SD 1.5's weights with --pretrained); with --init-from it takes
the parent's architecture and weights and this stage's training settings; with --resume it takes
the run's own config and weights. The frozen VAE and wav2vec2 are copied into the run folder once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml
from safetensors import safe_open

from model.audio_features import check_featurizer
from model.checkpoint import latest_checkpoint, load_weights, read_meta, resolve_checkpoint
from model.config import EMOConfig, load_config
from model.emo import EMOModel
from model.latents import load_codec
from model.temporal import load_motion_module
from model.unet import SD15_DOWNLOAD_HINT, load_pretrained_unet, unet_kwargs_of

if TYPE_CHECKING:  # model/train.py imports this module
    from model.train import TrainOptions

log = logging.getLogger("emo.train")


def build_model(opts: TrainOptions, config: EMOConfig) -> tuple[EMOModel, EMOConfig, dict | None, str | None]:
    """A fresh model for this stage: (model, config, parent record, VAE folder or None)."""
    if opts.init_from:
        parent_dir = resolve_checkpoint(opts.init_from)
        parent = read_meta(parent_dir)
        arch = EMOConfig.from_dict(parent["config"]).to_dict()
        # Training settings come from this stage's size and --config, the architecture from the parent.
        overrides = load_config(arch["name"], opts.config).to_dict()
        ignored = sorted(k for k in _file_keys(opts.config) if k not in TRAINING_KEYS and overrides[k] != arch.get(k))
        if ignored:
            log.warning("--config sets %s, which the parent checkpoint's architecture fixes: ignored "
                        "(a later stage may change only %s)", ", ".join(ignored), ", ".join(sorted(TRAINING_KEYS)))
        arch.update({k: v for k, v in overrides.items() if k in TRAINING_KEYS})
        if opts.finetune and "learning_rate" not in _file_keys(opts.config):
            arch["learning_rate"] *= FINETUNE_LR_SCALE
        arch["audio_encoder"] = opts.audio_encoder or (
            str(parent_dir.parent / parent["audio_encoder"]) if parent.get("audio_encoder") else None)
        config = _with_featurizer_dims(EMOConfig.from_dict(arch))
        model = EMOModel(config)
        skipped = _changed_audio_projection(model, parent_dir / "model.safetensors")
        load_weights(model, parent_dir / "model.safetensors", strict=not skipped, skip=skipped)
        if (parent_dir / "ema.safetensors").is_file():  # the parent's average: what it would sample with
            load_weights(model, parent_dir / "ema.safetensors", strict=False, skip=skipped)
        if skipped:
            log.info("audio encoder changed: audio projection re-initialised (%d tensors)", len(skipped))
        record = {"path": str(parent_dir.resolve()), "stage": parent["stage"], "step": parent["step"],
                  "model_sha256": parent["model_sha256"], "manifest_hash": parent.get("manifest_hash")}
        vae = str(parent_dir.parent / parent["vae"]) if parent.get("vae") else None
        return model, config, record, vae
    if opts.pretrained:
        backbone = load_pretrained_unet(opts.pretrained)
        config.unet = unet_kwargs_of(backbone)
        config.codec = "autoencoder_kl"  # an SD folder brings its VAE, whatever the size's default
        config = _with_featurizer_dims(config)
        return EMOModel(config, backbone), config, None, str(Path(opts.pretrained) / "vae")
    if config.requires_pretrained:
        raise SystemExit(f"the {config.name} model starts from Stable Diffusion 1.5: {SD15_DOWNLOAD_HINT}")
    return EMOModel(_with_featurizer_dims(config)), config, None, None


def _changed_audio_projection(model: EMOModel, weights: Path) -> set[str]:
    """Audio projection tensors whose shape a new audio encoder changed: those layers start afresh."""
    own = model.state_dict()
    with safe_open(str(weights), framework="pt") as f:
        return {k for k in f.keys() if k.startswith("audio_proj.") and list(f.get_slice(k).get_shape()) != list(own[k].shape)}


def _file_keys(path: str | None) -> set[str]:
    """The keys a --config file sets (YAML or JSON), to tell an explicit setting from a default."""
    if path is None:
        return set()
    return set(yaml.safe_load(Path(path).read_text()) or {})  # JSON is YAML


# A fine-tune adapts a finished model to new footage: a gentler and shorter run than the parent's.
FINETUNE_LR_SCALE = 0.1
FINETUNE_STEP_DIVISOR = 10

# Keys a later stage may change without changing the architecture.
TRAINING_KEYS = {"batch_size", "learning_rate", "weight_decay", "grad_clip", "ema_decay", "cond_drop_prob",
                 "save_every", "gradient_checkpointing", "num_workers", "overfit_batch", "keep_checkpoints",
                 "num_frames", "num_motion_frames", "gradient_accumulation", "optimizer", "ema_device",
                 "frozen_dtype", "mixed_precision", "frame_cache_mb", "mouth_loss_weight",
                 "audio_region",  # where audio attention writes: no weights of its own
                 "train_timestep_max", "sync_loss_weight"}


def _with_featurizer_dims(config: EMOConfig) -> EMOConfig:
    """Take the audio feature shape from wav2vec2's config when one is given."""
    if config.audio_encoder:
        from transformers import Wav2Vec2Config  # seconds to import: only when a wav2vec2 is named

        w2v = Wav2Vec2Config.from_pretrained(config.audio_encoder)
        config.audio_feature_dim = w2v.hidden_size
        config.audio_feature_layers = min(config.audio_feature_layers, w2v.num_hidden_layers + 1)
    return config


def save_assets(out: Path, config: EMOConfig, vae_folder: str | None) -> dict:
    """Copy the frozen VAE and wav2vec2 next to the checkpoints once, so the run folder is self-contained."""
    assets = {"vae": None, "audio_encoder": None}
    if vae_folder:
        if not (out / "vae" / "config.json").is_file():
            load_codec("autoencoder_kl", vae_folder).vae.save_pretrained(out / "vae")
        assets["vae"] = "vae"
    if config.audio_encoder:
        if not (out / "audio_encoder" / "config.json").is_file():
            from transformers import Wav2Vec2Model  # as in _with_featurizer_dims

            Wav2Vec2Model.from_pretrained(config.audio_encoder).save_pretrained(out / "audio_encoder")
        assets["audio_encoder"] = "audio_encoder"
    return assets


def resume_state(out: Path, stage: int) -> tuple[Path, dict, EMOConfig]:
    """The run's latest checkpoint, its meta and config, with the run's own copy of wav2vec2."""
    resume_from = latest_checkpoint(out)
    meta = read_meta(resume_from)
    if meta["stage"] != stage:
        raise SystemExit(f"{resume_from} is a stage-{meta['stage']} run; asked to resume stage {stage}")
    config = EMOConfig.from_dict(meta["config"])
    if meta.get("audio_encoder"):  # the copy save_assets made, not the path it was first read from
        config.audio_encoder = str(out / meta["audio_encoder"])
    return resume_from, meta, config


@dataclass
class RunStart:
    """Where a run starts: a fresh model for its stage, or the run's own latest checkpoint."""

    model: EMOModel
    config: EMOConfig
    parent: dict | None
    vae_folder: str | None
    trainable: tuple[str, ...] | None
    start_step: int = 0
    resume_from: Path | None = None
    meta: dict | None = None  # the resumed checkpoint's


def start_run(opts: TrainOptions, out: Path, init_uri: str | None) -> RunStart:
    """The model this run trains, seeded by opts.seed; `init_uri` is --init-from's address in a bucket."""
    resume_from = latest_checkpoint(out) if opts.resume and out.is_dir() else None
    if resume_from is not None:  # the run's own config and weights; the other model flags are ignored
        resume_from, meta, config = resume_state(out, opts.stage)
        vae_folder = str(out / meta["vae"]) if meta.get("vae") else None
        if opts.stage > 1:
            check_featurizer(config)
        torch.manual_seed(opts.seed)
        model = EMOModel(config)
        load_weights(model, resume_from / "model.safetensors")
        trainable = tuple(meta["trainable_groups"]) if meta.get("trainable_groups") else None
        return RunStart(model, config, meta["parent"], vae_folder, trainable, meta["step"], resume_from, meta)
    torch.manual_seed(opts.seed)
    config = load_config(opts.model, opts.config, audio_encoder=opts.audio_encoder)
    if opts.stage > 1:  # before any weights load: a missing wav2vec2 is a one-line error
        check_featurizer(config)
    model, config, parent, vae_folder = build_model(opts, config)
    if parent and init_uri:  # lineage names the checkpoint in the bucket, not the local copy
        parent["path"] = init_uri
    if opts.motion_module:
        load_motion_module(opts.motion_module, model.temporal, model.temporal_site_names)
    if opts.stage > 1 and parent is None and not opts.pretrained:
        log.warning("stage %d without --init-from: the backbone and ReferenceNet are untrained", opts.stage)
    return RunStart(model, config, parent, vae_folder, opts.trainable)
