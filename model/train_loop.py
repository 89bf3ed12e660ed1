"""One optimizer step of EMO training: latents, noise, the loss, accumulation, EMA and saving.

model/train.py sets a run up (stage, weights, data, processes) and drives this loop. Under
torchrun or `accelerate launch` every process runs it on its own micro-batches; gradients are
all-reduced on the last micro-batch of a step; rank 0 writes the checkpoint.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from model.checkpoint import save_checkpoint, step_dir
from model.config import EMOConfig
from model.emo import EMOModel
from model.reference_skip import to_residual
from model.sync_expert import lip_centres, sync_loss

# Stable Diffusion 1.5's noise schedule; the sampler builds its scheduler from the same numbers.
NOISE_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}


def noise_schedule(config: EMOConfig) -> dict:
    """SD 1.5's schedule with the config's prediction target (epsilon, as SD 1.5; or v_prediction)."""
    return {**NOISE_SCHEDULE, "prediction_type": config.prediction_type}


def encode_batch(codec, batch: dict, device, config: EMOConfig | None = None) -> dict:
    """Pixels to latents for the window, the reference and the motion frames (one codec call);
    with the config's reference skip, the window and motion latents are changes from the reference."""
    frames = batch["frames"].to(device)  # (B, F, 3, H, W)
    b, f = frames.shape[:2]
    images = [frames.flatten(0, 1), batch["reference"].to(device)]  # (B*F, 3, H, W), (B, 3, H, W)
    if "motion" in batch:
        images.append(batch["motion"].to(device).flatten(0, 1))  # (B, n, 3, H, W) -> (B*n, 3, H, W)
    latents = codec.encode(torch.cat(images))  # (B*F + B [+ B*n], C, h, w)
    out = {"latents": latents[: b * f].unflatten(0, (b, f)), "ref_latent": latents[b * f: b * f + b]}
    if "motion" in batch:
        valid = batch["motion_valid"].to(device)[..., None, None, None]  # (B, n) -> (B, n, 1, 1, 1)
        out["motion"] = latents[b * f + b:].unflatten(0, (b, -1))
    if config is not None and config.reference_skip:
        out["latents"] = to_residual(out["latents"], out["ref_latent"], config.residual_scale)
        if "motion" in out:
            out["motion"] = to_residual(out["motion"], out["ref_latent"], config.residual_scale)
    if "motion" in out:
        out["motion"] = out["motion"] * valid  # zeros before the clip starts, as the sampler's first window
    return out


def update_ema(ema: dict[str, torch.Tensor], model: EMOModel, step: int, decay: float) -> None:
    """EMA with warm-up (as diffusers' EMAModel): short runs still get a usable average."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in ema:
                average = ema[name]  # on the CPU with ema_device: cpu
                average.mul_(d).add_(param.detach().to(average.device, torch.float32), alpha=1 - d)


def windows_seen(accelerator, batch: dict, clips: list[dict]) -> str:
    """'rank:clip_id@start' of every example of every process this micro-batch (a collective call)."""
    pairs = torch.stack([batch["clip_index"], batch["window_start"]], dim=1).to(accelerator.device)  # (B, 2)
    everyone = accelerator.gather(pairs).view(accelerator.num_processes, -1, 2).cpu()  # (ranks, B, 2)
    return " ".join(f"{r}:{clips[int(i)]['clip_id']}@{int(s)}"
                    for r, rank_pairs in enumerate(everyone) for i, s in rank_pairs)


class TrainLoop:
    """One optimizer step from `accumulation` micro-batches per process, the EMA, and saving."""

    def __init__(self, accelerator, model, optimizer, params, ema, codec, config, accumulation):
        from diffusers import DDPMScheduler

        self.acc, self.model, self.optimizer, self.params = accelerator, model, optimizer, params
        self.ema, self.codec, self.config, self.accumulation = ema, codec, config, accumulation
        self.scheduler = DDPMScheduler(**noise_schedule(config))
        self.expert = None  # the lip-sync expert, on the device, when config.sync_loss_weight (model/sync_expert.py)
        self.losses: list[torch.Tensor] = []
        self.windows: list[str] = []

    def micro_step(self, batch: dict, step: int, last: bool, clips: list[dict]) -> dict | None:
        """Forward and backward one micro-batch; on the last of a step, the optimizer step and its log row."""
        acc, device = self.acc, self.acc.device
        with torch.no_grad():
            inputs = encode_batch(self.codec, batch, device, self.config)
        noise = batch["noise"].to(device)
        t = batch["timesteps"].to(device)
        noisy = self.scheduler.add_noise(inputs["latents"], noise, t)
        target = noise if self.scheduler.config.prediction_type == "epsilon" else \
            self.scheduler.get_velocity(inputs["latents"], noise, t)
        # Gradients are all-reduced across processes only on the step's last micro-batch.
        sync = contextlib.nullcontext() if last else acc.no_sync(self.model)
        with sync:
            with acc.autocast():
                pred = self.model(noisy, t, inputs["ref_latent"], audio=_get(batch, "audio", device),
                                  face_mask=batch["face_mask"].to(device), speed=_get(batch, "speed", device),
                                  motion=inputs.get("motion"), reference_keep=batch["reference_keep"].to(device),
                                  audio_keep=batch["audio_keep"].to(device),
                                  audio_region=_get(batch, "audio_region", device))
            loss = diffusion_loss(pred.float(), target, batch.get("lip_mask"), self.config.mouth_loss_weight)
            if self.expert is not None:
                loss = loss + self.config.sync_loss_weight * self._sync_loss(batch, noisy, pred.float(), t)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}")
            acc.backward(loss / self.accumulation)
        self.losses.append(loss.detach())
        self.windows.append(windows_seen(acc, batch, clips))
        if not last:
            return None
        if self.config.grad_clip:
            acc.clip_grad_norm_(self.params, self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        update_ema(self.ema, acc.unwrap_model(self.model), step, self.config.ema_decay)
        mean = acc.reduce(torch.stack(self.losses).mean(), reduction="mean")  # over micro-batches and processes
        row = {"step": step, "loss": mean.item(), "windows": " ".join(self.windows)}
        self.losses, self.windows = [], []
        return row

    def _sync_loss(self, batch: dict, noisy: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The expert's loss on the clean latents the prediction implies, weighted per example by the
        signal left at its timestep; examples whose audio was dropped do not count."""
        device = noisy.device
        signal = self.scheduler.alphas_cumprod.to(device)[t].view(-1, 1, 1, 1, 1)  # (B, 1, 1, 1, 1)
        if self.scheduler.config.prediction_type == "epsilon":
            clean = (noisy - (1 - signal).sqrt() * pred) / signal.sqrt()
        else:  # v_prediction
            clean = signal.sqrt() * noisy - (1 - signal).sqrt() * pred
        audio = batch["audio"].to(device)  # (B, F, 2m+1, L*D): each frame's own features, the window's centre
        audio = audio[:, :, audio.shape[2] // 2]
        centres = lip_centres(batch["lip_mask"], clean.shape[-2:])
        weight = signal.view(-1) * batch["audio_keep"].to(device)
        return sync_loss(self.expert, clean, audio, centres, weight)

    def save(self, out: Path, step: int, names: list[str], meta: dict) -> Path:
        """Every process gathers the weights (FSDP and ZeRO need all); the main process writes them."""
        acc = self.acc
        weights = acc.get_state_dict(self.model)
        path = step_dir(out, step)
        if acc.is_main_process:
            # A sharded optimizer (FSDP, ZeRO) is not gathered: such a run resumes with fresh moments.
            optimizer = self.optimizer if acc.distributed_type.value in ("NO", "MULTI_GPU", "MULTI_CPU") else None
            path = save_checkpoint(out, step, weights, self.ema, optimizer, names, meta,
                                   keep_last=self.config.keep_checkpoints)
        acc.wait_for_everyone()
        return path


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, lip_mask: torch.Tensor | None,
                   mouth_weight: float) -> torch.Tensor:
    """MSE over (B, F, C, h, w), weighing 1 + mouth_weight inside the lip mask (B, 1, H, W, at image
    size; averaged down to the latents' h x w), normalised so its scale stays plain MSE's."""
    if lip_mask is None or not mouth_weight:
        return F.mse_loss(pred, target)
    lips = F.adaptive_avg_pool2d(lip_mask.to(pred.device, pred.dtype), pred.shape[-2:])  # (B, 1, h, w)
    weight = 1 + mouth_weight * lips[:, None]  # (B, 1, 1, h, w): every frame and channel alike
    weight = weight.expand_as(pred)
    return (weight * (pred - target) ** 2).sum() / weight.sum()


def _get(batch: dict, key: str, device) -> torch.Tensor | None:
    return batch[key].to(device) if key in batch else None
