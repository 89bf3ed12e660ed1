"""Train EMO in its three stages from the clips manifest (what each stage trains: model/layer_groups.py).

Each stage starts from the previous stage's checkpoint (--init-from). Batches depend only on
(seed, step) (model/data.py), so --resume continues with exactly the losses an uninterrupted run
would have had. Usage: `emo train --data OUT --stage 1 --model tiny --out runs/s1 --steps 200`.

Fine-tuning on new footage: `--finetune --init-from CKPT` starts from a finished checkpoint with a
tenth of its learning rate (unless --config sets one) and, without --steps, a tenth of its steps;
`--trainable audio,temporal` trains only those layer groups. The parent is recorded in meta.json.

`TrainOptions` is everything a run takes: the command line parses into it, and `emo build` and
`emo demo` construct it directly and call `train(opts)`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from tqdm import tqdm

from manifests import ManifestStore
from manifests.fs import is_uri
from manifests.lineage import merge_sources, training_sources
from manifests.splits import training_hash
from model.checkpoint import optimizer_from_tensors, read_meta
from model.config import EMOConfig
from model.data import ClipWindows
from model.emo import EMOModel
from model.latents import load_codec
from model.layer_groups import LAYER_GROUPS, STAGE_GROUPS, set_trainable, unknown_groups
from model.memory import cast_frozen, ema_device, make_optimizer, mixed_precision
from model.remote import RemoteRun, local_checkpoint
from model.train_loop import TrainLoop, noise_schedule
from model.train_start import FINETUNE_LR_SCALE, FINETUNE_STEP_DIVISOR, RunStart, save_assets, start_run

log = logging.getLogger("emo.train")


@dataclass(frozen=True)
class TrainOptions:
    """One training run: what `emo train` parses its command line into (see build_parser for each)."""

    data: str  # the curation output holding the clips manifest: a folder or s3://...
    stage: int  # 1, 2 or 3
    out: str  # this run's checkpoint folder, or s3://...
    steps: int | None = None  # train until this global step; None: a fine-tune's default
    model: str = "tiny"  # named size (model/config.py)
    config: str | None = None  # YAML/JSON file of EMOConfig keys that override the size
    init_from: str | None = None  # the checkpoint to start from (a step or run folder)
    finetune: bool = False  # init_from is a finished model to adapt
    trainable: tuple[str, ...] | None = None  # train only these layer groups, not the stage's own
    pretrained: str | None = None  # SD 1.5 folder (diffusers format)
    motion_module: str | None = None  # AnimateDiff motion module
    audio_encoder: str | None = None  # wav2vec2 folder; None: offline mel features
    seed: int = 0
    resume: bool = False  # continue from the latest checkpoint in `out`
    quiet: bool = False  # no progress bar

    def __post_init__(self):
        # Paths as text, as the command line gives them: meta.json and lineage record them as given.
        for name in ("data", "out", "config", "init_from", "pretrained", "motion_module", "audio_encoder"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(getattr(self, name)))
        if self.trainable is not None:
            object.__setattr__(self, "trainable", tuple(self.trainable))
            if bad := unknown_groups(self.trainable):
                raise ValueError(f"unknown layer groups {bad}; known: {', '.join(LAYER_GROUPS)}")
        if self.stage not in STAGE_GROUPS:
            raise ValueError(f"stage must be one of {', '.join(map(str, STAGE_GROUPS))}, got {self.stage}")

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


def _groups(text: str) -> tuple[str, ...]:
    groups = tuple(g.strip() for g in text.split(",") if g.strip())
    unknown = unknown_groups(groups)
    if unknown or not groups:
        raise argparse.ArgumentTypeError(f"unknown layer groups {unknown}; known: {', '.join(LAYER_GROUPS)}")
    return groups


def _trainable(model: EMOModel, groups: tuple[str, ...]) -> list[str]:
    """--trainable: exactly these layer groups instead of the stage's own; returns the trainable names."""
    names = set_trainable(model, groups)
    if not names:
        raise SystemExit(f"--trainable {','.join(groups)}: no parameters in those groups")
    return names


def _resolve(opts: TrainOptions) -> tuple[TrainOptions, RemoteRun | None, str | None]:
    """The options with a local --init-from and a default --steps; the remote run; --init-from's URI."""
    if opts.finetune and not opts.init_from:
        raise SystemExit("--finetune needs --init-from: the checkpoint to fine-tune")
    opts, remote, init_uri = _on_object_store(opts)
    if opts.steps is None:
        if not opts.finetune:
            raise SystemExit("--steps is required (only a --finetune run has a default)")
        opts = dataclasses.replace(opts, steps=max(1, read_meta(opts.init_from)["step"] // FINETUNE_STEP_DIVISOR))
    return opts, remote, init_uri


def _accelerator(config: EMOConfig) -> tuple[Accelerator, str]:
    precision = mixed_precision(config.mixed_precision)
    # ReferenceNet's last up-block layers never reach the loss: DDP must be told some parameters are unused.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # cpu=True is what makes accelerate join a torchrun group over gloo when there is no GPU.
    accelerator = Accelerator(mixed_precision=precision, kwargs_handlers=[ddp], cpu=not torch.cuda.is_available())
    if not accelerator.is_main_process:  # one process logs, writes loss.csv and checkpoints
        logging.getLogger("emo").setLevel(logging.WARNING)
    return accelerator, precision


def _prepare(opts: TrainOptions, start: RunStart, accelerator: Accelerator, precision: str, out: Path):
    """Freeze, cast, optimizer, EMA and codec for this run: (model, optimizer, params, names, ema, codec, assets)."""
    model, config, device = start.model, start.config, accelerator.device
    names = _trainable(model, start.trainable) if start.trainable else model.set_stage(opts.stage)
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    cast_frozen(model, config.frozen_dtype, precision)
    model.set_gradient_checkpointing(config.gradient_checkpointing)
    codec = load_codec(config.codec, start.vae_folder).to(device)
    if codec.channels != model.backbone.config.in_channels:
        raise SystemExit(f"the {config.codec} codec gives {codec.channels}-channel latents; the UNet takes "
                         f"{model.backbone.config.in_channels} (set unet.in_channels and out_channels to match)")
    out.mkdir(parents=True, exist_ok=True)
    assets = save_assets(out, config, start.vae_folder) if accelerator.is_main_process else {}
    optimizer = make_optimizer(config.optimizer, params, config.learning_rate, config.weight_decay)
    if start.resume_from is not None:
        ema = load_file(start.resume_from / "ema.safetensors")
        optimizer_from_tensors(optimizer, names, load_file(start.resume_from / "optimizer.safetensors"),
                               start.meta["optimizer_groups"])
    else:
        ema = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    ema_on = ema_device(config.ema_device, device)
    ema = {k: v.to(ema_on, torch.float32, copy=True) for k, v in ema.items()}
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, params, names, ema, codec, assets


def _meta_base(opts: TrainOptions, start: RunStart, manifest_hash: str, trained_on: list, world_size: int,
               accumulation: int, assets: dict) -> dict:
    """What every checkpoint of this run records in meta.json, beside its step and time."""
    groups = start.trainable
    return {"config": start.config.to_dict(), "stage": opts.stage, "manifest_hash": manifest_hash,
            "parent": start.parent, "seed": opts.seed, "finetune": bool(opts.finetune),
            "trainable": ", ".join(groups or STAGE_GROUPS[opts.stage]),
            "trainable_groups": list(groups) if groups else None, "noise_schedule": noise_schedule(start.config),
            "sources": trained_on, "world_size": world_size, "gradient_accumulation": accumulation, **assets}


def train(opts: TrainOptions) -> Path:
    """Train one stage as `opts` says; returns the last checkpoint written (on object storage: its local copy)."""
    opts, remote, init_uri = _resolve(opts)
    out = remote.staging if remote else Path(opts.out)
    start = start_run(opts, out, init_uri)
    config = start.config
    accelerator, precision = _accelerator(config)
    main_process = accelerator.is_main_process
    model, optimizer, params, names, ema, codec, assets = _prepare(opts, start, accelerator, precision, out)
    manifest_hash = training_hash(ManifestStore(opts.data))  # clips, and the export's splits
    if start.resume_from is not None and start.meta["manifest_hash"] != manifest_hash:
        log.warning("the clips manifest changed since %s was saved", start.resume_from)

    accumulation = max(1, config.gradient_accumulation)
    data = ClipWindows(opts.data, config, opts.stage, opts.seed, first_step=start.start_step,
                       num_steps=max(0, opts.steps - start.start_step), rank=accelerator.process_index,
                       accumulation=accumulation)
    loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=config.num_workers)
    trained_on = training_sources(opts.data, data.clips)  # kept with the weights: see manifests/lineage.py
    if start.resume_from is not None:
        trained_on = merge_sources(start.meta.get("sources") or [], trained_on)
    meta_base = _meta_base(opts, start, manifest_hash, trained_on, accelerator.num_processes, accumulation,
                           {**assets, "face_fraction": data.face_fraction})  # how the sampler crops a portrait
    loss_fh, loss_log = open_loss_log(out / "loss.csv", start.start_step) if main_process else (None, None)
    run = TrainLoop(accelerator, model, optimizer, params, ema, codec, config, accumulation)
    if config.sync_loss_weight and opts.stage > 1:
        from model.sync_expert import expert_for_run

        run.expert = expert_for_run(out, data, codec, config, opts.seed, keep=main_process,
                                    device=accelerator.device).to(accelerator.device)
    saved = start.resume_from
    bar = tqdm(total=opts.steps, initial=start.start_step, desc=f"stage {opts.stage}",
               disable=opts.quiet or not main_process)
    model.train()
    for k, batch in enumerate(loader):
        step = start.start_step + k // accumulation + 1
        row = run.micro_step(batch, step, last=(k + 1) % accumulation == 0, clips=data.clips)
        if row is None:
            continue
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        if main_process:
            loss_log.writerow({"stage": opts.stage, **row, "loss": repr(row["loss"])})
            loss_fh.flush()
        if step % config.save_every == 0 or step == opts.steps:
            saved = run.save(out, step, names, {**meta_base, "created": datetime.now(UTC).isoformat()})
            if remote and main_process:
                remote.push(saved, config.keep_checkpoints)
    bar.close()
    if main_process:
        loss_fh.close()
        log.info("stage %d: %s", opts.stage, saved)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    # accelerate keeps its precision process-wide; the demo and `emo build` train several stages in one.
    AcceleratorState._reset_state(reset_partial_state=False)
    return saved


def _on_object_store(opts: TrainOptions) -> tuple[TrainOptions, RemoteRun | None, str | None]:
    """--out / --init-from on object storage: (options with --init-from's local copy, the run's local
    staging, --init-from's URI); both are then read and written as local folders here, and each saved
    step is uploaded."""
    init_uri = None
    if opts.init_from and is_uri(opts.init_from):
        local, init_uri = local_checkpoint(opts.init_from)
        opts = dataclasses.replace(opts, init_from=str(local))
    return opts, (RemoteRun.open(opts.out, opts.resume) if is_uri(opts.out) else None), init_uri


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


def parse_options(argv: list[str] | None = None) -> TrainOptions:
    """The command line as TrainOptions (argparse's dests are its field names)."""
    return TrainOptions(**vars(build_parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    """The command line: exit status 0 once the last checkpoint is written (`train` returns its path)."""
    opts = parse_options(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    train(opts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
