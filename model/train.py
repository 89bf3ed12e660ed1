"""Train EMO in its three stages from the clips manifest.

    stage 1  single frames: backbone, ReferenceNet, face locator
    stage 2  f frames + n motion frames: temporal modules and audio layers (the rest frozen)
    stage 3  speed layers and temporal modules (audio frozen)

Each stage starts from the previous stage's checkpoint (--init-from). Batches depend only on
(seed, step) (model/data.py), so --resume continues with exactly the losses an uninterrupted run
would have had. Usage: `emo train --data OUT --stage 1 --model tiny --out runs/s1 --steps 200`.

Fine-tuning on new footage: `--finetune --init-from CKPT` starts from a finished checkpoint with a
tenth of its learning rate (unless --config sets one) and, without --steps, a tenth of its steps;
`--trainable audio,temporal` trains only those layer groups. The parent is recorded in meta.json.
"""

from __future__ import annotations

import argparse
import csv
import logging
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import load_file

from manifests import ManifestStore
from manifests.fs import is_uri
from manifests.lineage import merge_sources, training_sources
from model.audio import check_featurizer
from model.checkpoint import (
    latest_checkpoint,
    load_weights,
    optimizer_from_tensors,
    read_meta,
    resolve_checkpoint,
)
from model.config import EMOConfig, load_config
from model.data import ClipWindows
from model.emo import EMOModel
from model.latents import load_codec
from model.memory import cast_frozen, ema_device, make_optimizer, mixed_precision
from model.remote import RemoteRun, local_checkpoint
from model.temporal import load_motion_module
from model.train_loop import TrainLoop, noise_schedule
from model.unet import SD15_DOWNLOAD_HINT, load_pretrained_unet, unet_kwargs_of

log = logging.getLogger("emo.train")

def build_model(args, config: EMOConfig) -> tuple[EMOModel, EMOConfig, dict | None, str | None]:
    """A fresh model for this stage: (model, config, parent record, VAE folder or None)."""
    if args.init_from:
        parent_dir = resolve_checkpoint(args.init_from)
        parent = read_meta(parent_dir)
        arch = EMOConfig.from_dict(parent["config"]).to_dict()
        # Training settings come from this stage's size and --config, the architecture from the parent.
        overrides = load_config(arch["name"], args.config).to_dict()
        arch.update({k: v for k, v in overrides.items() if k in TRAINING_KEYS})
        if args.finetune and "learning_rate" not in _file_keys(args.config):
            arch["learning_rate"] *= FINETUNE_LR_SCALE
        arch["audio_encoder"] = args.audio_encoder or (
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
    if args.pretrained:
        backbone = load_pretrained_unet(args.pretrained)
        config.unet = unet_kwargs_of(backbone)
        config.codec = "autoencoder_kl"  # an SD folder brings its VAE, whatever the size's default
        config = _with_featurizer_dims(config)
        return EMOModel(config, backbone), config, None, str(Path(args.pretrained) / "vae")
    if config.requires_pretrained:
        raise SystemExit(f"the {config.name} model starts from Stable Diffusion 1.5: {SD15_DOWNLOAD_HINT}")
    return EMOModel(_with_featurizer_dims(config)), config, None, None


def _changed_audio_projection(model: EMOModel, weights: Path) -> set[str]:
    """Audio projection tensors whose shape a new audio encoder changed: those layers start afresh."""
    from safetensors import safe_open

    own = model.state_dict()
    with safe_open(str(weights), framework="pt") as f:
        return {k for k in f.keys() if k.startswith("audio_proj.") and list(f.get_slice(k).get_shape()) != list(own[k].shape)}


def _file_keys(path: str | None) -> set[str]:
    """The keys a --config file sets (YAML or JSON), to tell an explicit setting from a default."""
    if path is None:
        return set()
    import yaml  # JSON is YAML

    return set(yaml.safe_load(Path(path).read_text()) or {})


# A fine-tune adapts a finished model to new footage: a gentler and shorter run than the parent's.
FINETUNE_LR_SCALE = 0.1
FINETUNE_STEP_DIVISOR = 10

# Layer groups for --trainable (parameter-name prefixes; speed attention inside the temporal
# modules belongs to "speed", as stage 2 leaves it to stage 3).
LAYER_GROUPS = {"backbone": ("backbone.",), "reference": ("reference_net.", "reference_gates"),
                "face_locator": ("face_locator.",), "audio": ("audio_proj.", "audio_attention."),
                "temporal": ("temporal.",), "speed": ("speed_encoder.",)}


def layer_group(name: str) -> str | None:
    if ".speed_" in name:
        return "speed"
    return next((g for g, prefixes in LAYER_GROUPS.items() if name.startswith(prefixes)), None)


def set_trainable(model: EMOModel, groups: list[str]) -> list[str]:
    """Train exactly these layer groups instead of the stage's own; returns the trainable names."""
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(layer_group(name) in groups)
        if param.requires_grad:
            names.append(name)
    if not names:
        raise SystemExit(f"--trainable {','.join(groups)}: no parameters in those groups")
    return names


def _groups(text: str) -> list[str]:
    groups = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in groups if g not in LAYER_GROUPS]
    if unknown or not groups:
        raise argparse.ArgumentTypeError(f"unknown layer groups {unknown}; known: {', '.join(LAYER_GROUPS)}")
    return groups


# Keys a later stage may change without changing the architecture.
TRAINING_KEYS = {"batch_size", "learning_rate", "weight_decay", "grad_clip", "ema_decay", "cond_drop_prob",
                 "save_every", "gradient_checkpointing", "num_workers", "overfit_batch", "keep_checkpoints",
                 "num_frames", "num_motion_frames", "gradient_accumulation", "optimizer", "ema_device",
                 "frozen_dtype", "mixed_precision", "frame_cache_mb"}


def _with_featurizer_dims(config: EMOConfig) -> EMOConfig:
    """Take the audio feature shape from wav2vec2's config when one is given."""
    if config.audio_encoder:
        from transformers import Wav2Vec2Config

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
            from transformers import Wav2Vec2Model

            Wav2Vec2Model.from_pretrained(config.audio_encoder).save_pretrained(out / "audio_encoder")
        assets["audio_encoder"] = "audio_encoder"
    return assets


def open_loss_log(path: Path, start_step: int):
    """The loss CSV, cut back to `start_step` when resuming (later rows belonged to a lost run)."""
    rows = []
    if path.is_file() and start_step > 0:
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= start_step]
    fh = open(path, "w", newline="")
    writer = csv.DictWriter(fh, fieldnames=["stage", "step", "loss", "windows"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return fh, writer


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


def train(args) -> Path:
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from tqdm import tqdm

    if args.finetune and not args.init_from:
        raise SystemExit("--finetune needs --init-from: the checkpoint to fine-tune")
    remote, init_uri = _on_object_store(args)
    if args.steps is None:
        if not args.finetune:
            raise SystemExit("--steps is required (only a --finetune run has a default)")
        args.steps = max(1, read_meta(args.init_from)["step"] // FINETUNE_STEP_DIVISOR)
    out = remote.staging if remote else Path(args.out)
    resume_from = latest_checkpoint(out) if args.resume and out.is_dir() else None
    if resume_from is not None:  # the run's own config and weights; the other model flags are ignored
        resume_from, meta, config = resume_state(out, args.stage)
        parent, start_step = meta["parent"], meta["step"]
        args.trainable = meta.get("trainable_groups")
        vae_folder = str(out / meta["vae"]) if meta.get("vae") else None
        if args.stage > 1:
            check_featurizer(config)
        torch.manual_seed(args.seed)
        model = EMOModel(config)
        load_weights(model, resume_from / "model.safetensors")
    else:
        torch.manual_seed(args.seed)
        config = load_config(args.model, args.config, audio_encoder=args.audio_encoder)
        if args.stage > 1:  # before any weights load: a missing wav2vec2 is a one-line error
            check_featurizer(config)
        model, config, parent, vae_folder = build_model(args, config)
        if parent and init_uri:  # lineage names the checkpoint in the bucket, not the local copy
            parent["path"] = init_uri
        start_step = 0
        if args.motion_module:
            load_motion_module(args.motion_module, model.temporal, model.temporal_site_names)
    if args.stage > 1 and parent is None and resume_from is None and not args.pretrained:
        log.warning("stage %d without --init-from: the backbone and ReferenceNet are untrained", args.stage)

    precision = mixed_precision(config.mixed_precision)
    # ReferenceNet's last up-block layers never reach the loss: DDP must be told some parameters are unused.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # cpu=True is what makes accelerate join a torchrun group over gloo when there is no GPU.
    accelerator = Accelerator(mixed_precision=precision, kwargs_handlers=[ddp], cpu=not torch.cuda.is_available())
    main_process = accelerator.is_main_process
    if not main_process:  # one process logs, writes loss.csv and checkpoints
        logging.getLogger("emo").setLevel(logging.WARNING)
    device = accelerator.device
    names = set_trainable(model, args.trainable) if args.trainable else model.set_stage(args.stage)
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    cast_frozen(model, config.frozen_dtype, precision)
    model.set_gradient_checkpointing(config.gradient_checkpointing)
    codec = load_codec(config.codec, vae_folder).to(device)
    out.mkdir(parents=True, exist_ok=True)
    assets = save_assets(out, config, vae_folder) if main_process else {}
    optimizer = make_optimizer(config.optimizer, params, config.learning_rate, config.weight_decay)
    ema_on = ema_device(config.ema_device, device)
    if resume_from is not None:
        ema = load_file(resume_from / "ema.safetensors")
        optimizer_from_tensors(optimizer, names, load_file(resume_from / "optimizer.safetensors"),
                               meta["optimizer_groups"])
    else:
        ema = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    ema = {k: v.to(ema_on, torch.float32, copy=True) for k, v in ema.items()}
    model, optimizer = accelerator.prepare(model, optimizer)
    manifest_hash = ManifestStore(args.data).content_hash(["clips"])
    if resume_from is not None and meta["manifest_hash"] != manifest_hash:
        log.warning("the clips manifest changed since %s was saved", resume_from)

    accumulation = max(1, config.gradient_accumulation)
    data = ClipWindows(args.data, config, args.stage, args.seed, first_step=start_step,
                       num_steps=max(0, args.steps - start_step), rank=accelerator.process_index,
                       accumulation=accumulation)
    loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=config.num_workers)
    trained_on = training_sources(args.data, data.clips)  # kept with the weights: see manifests/lineage.py
    if resume_from is not None:
        trained_on = merge_sources(meta.get("sources") or [], trained_on)
    meta_base = {"config": config.to_dict(), "stage": args.stage, "manifest_hash": manifest_hash,
                 "parent": parent, "seed": args.seed, "finetune": bool(args.finetune),
                 "trainable": ", ".join(args.trainable) if args.trainable else STAGE_NOTE[args.stage],
                 "trainable_groups": args.trainable, "noise_schedule": noise_schedule(config),
                 "sources": trained_on, "world_size": accelerator.num_processes,
                 "gradient_accumulation": accumulation, **assets}
    loss_fh, loss_log = open_loss_log(out / "loss.csv", start_step) if main_process else (None, None)
    run = TrainLoop(accelerator, model, optimizer, params, ema, codec, config, accumulation)
    saved = resume_from
    bar = tqdm(total=args.steps, initial=start_step, desc=f"stage {args.stage}",
               disable=args.quiet or not main_process)
    model.train()
    for k, batch in enumerate(loader):
        step = start_step + k // accumulation + 1
        row = run.micro_step(batch, step, last=(k + 1) % accumulation == 0, clips=data.clips)
        if row is None:
            continue
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        if main_process:
            loss_log.writerow({"stage": args.stage, **row, "loss": repr(row["loss"])})
            loss_fh.flush()
        if step % config.save_every == 0 or step == args.steps:
            saved = run.save(out, step, names, {**meta_base, "created": datetime.now(UTC).isoformat()})
            if remote and main_process:
                remote.push(saved, config.keep_checkpoints)
    bar.close()
    if main_process:
        loss_fh.close()
        log.info("stage %d: %s", args.stage, saved)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    # accelerate keeps its precision process-wide; the demo and `emo build` train several stages in one.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    return saved


def _on_object_store(args) -> tuple[RemoteRun | None, str | None]:
    """--out / --init-from on object storage: (the run's local staging, --init-from's URI); both
    are then read and written as local folders here, and each saved step is uploaded."""
    init_uri = None
    if args.init_from and is_uri(args.init_from):
        local, init_uri = local_checkpoint(args.init_from)
        args.init_from = str(local)
    return (RemoteRun.open(args.out, args.resume) if is_uri(args.out) else None), init_uri


STAGE_NOTE = {1: "backbone, reference_net, face_locator", 2: "temporal, audio", 3: "speed, temporal"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emo train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the curation output (OUT) holding the clips manifest: a folder, "
                   "or s3://... (clips read through a bounded local cache, EMO_CLIP_CACHE_BYTES)")
    p.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    p.add_argument("--config", help="YAML/JSON file of EMOConfig keys that override the named size")
    p.add_argument("--model", default="tiny", help="named size: tiny | sd15")
    p.add_argument("--out", required=True, help="checkpoint folder of this run, or s3://... (each step uploaded whole)")
    p.add_argument("--steps", type=int, help="train until this global step (required unless --finetune)")
    p.add_argument("--init-from", help="previous stage's checkpoint (a step folder or run folder)")
    p.add_argument("--finetune", action="store_true",
                   help=f"--init-from is a finished model to adapt: learning rate x{FINETUNE_LR_SCALE} unless --config "
                        f"sets one, default steps 1/{FINETUNE_STEP_DIVISOR} of the parent's")
    p.add_argument("--trainable", type=_groups, metavar="GROUPS",
                   help=f"train only these layer groups, comma-separated ({', '.join(LAYER_GROUPS)})")
    p.add_argument("--pretrained", help="folder with SD 1.5's unet/ and vae/ in diffusers format")
    p.add_argument("--motion-module", help="AnimateDiff motion module (.safetensors or diffusers folder)")
    p.add_argument("--audio-encoder", help="wav2vec2 folder (transformers format); default: offline mel features")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue this run from the latest checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line: exit status 0 once the last checkpoint is written (`train` returns its path)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
