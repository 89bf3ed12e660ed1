"""Does a checkpoint use the audio, and its timing? The denoising loss on training windows, three ways.

    python -m benchmarks.audio_use --checkpoint RUN --data OUT [--windows 30] [--timesteps 100,250,400]

For the same windows, noise and timesteps, the stage-2 loss with
    own      each frame's own audio features (what it trained on)
    shifted  the window's audio rolled by half the window: the same voice and words, each at the wrong frame
    none     the audio dropped (as classifier-free guidance drops it)
A model that takes the mouth from the voice has own < shifted; one that only knows that someone is
speaking has own = shifted < none. This is far less noisy than the sync measure of a generated
video (benchmarks/bench_learn.py), whose spread on a still picture is already about 2, and it needs
no sampling. It reads the checkpoint's EMA weights, as the sampler does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def audio_use(checkpoint: str | Path, data: str | Path, windows: int = 30,
              timesteps: tuple[int, ...] = (100, 250, 400), seed: int = 123) -> dict[str, float]:
    """Mean loss over `windows` x `timesteps` for own, shifted and no audio: plain MSE on what the
    model predicts (the noise, or v) over the whole frame, and (keys `mouth_*`) inside the clips' lip masks only, where the voice
    should matter most (absent when the clips have no lip masks)."""
    import dataclasses

    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from model.checkpoint import load_checkpoint
    from model.data import ClipWindows
    from model.latents import load_codec
    from model.train_loop import encode_batch, noise_schedule

    model, config, meta = load_checkpoint(checkpoint, ema=True)
    model.eval()
    codec = load_codec(config.codec, meta.get("vae_path"))
    scheduler = DDPMScheduler(**noise_schedule(config))
    # Any mouth weight makes the windows carry the lip mask; the model's own config is left as it is.
    data = ClipWindows(data, dataclasses.replace(config, mouth_loss_weight=1.0), stage=2, seed=seed,
                       num_steps=windows)
    losses: dict[str, list[float]] = {"own": [], "shifted": [], "none": []}
    mouth: dict[str, list[float]] = {way: [] for way in losses}
    b = config.batch_size
    for k in range(windows):
        batch = data[k]
        with torch.no_grad():
            inputs = encode_batch(codec, batch, "cpu", config)
            for t in timesteps:
                step = torch.full((b,), t)
                noisy = scheduler.add_noise(inputs["latents"], batch["noise"], step)
                target = batch["noise"] if config.prediction_type == "epsilon" else \
                    scheduler.get_velocity(inputs["latents"], batch["noise"], step)  # what it was trained to predict
                for way in losses:
                    audio = batch["audio"]  # (B, F, 2m+1, L*D)
                    if way == "shifted":
                        audio = torch.roll(audio, audio.shape[1] // 2, dims=1)
                    keep = torch.zeros(b) if way == "none" else torch.ones(b)
                    pred = model(noisy, step, inputs["ref_latent"], audio=audio, face_mask=batch["face_mask"],
                                 motion=inputs.get("motion"), reference_keep=torch.ones(b), audio_keep=keep,
                                 audio_region=batch.get("audio_region"))
                    err = (pred - target) ** 2  # (B, F, C, h, w)
                    losses[way].append(float(err.mean()))
                    lips = F.adaptive_avg_pool2d(batch["lip_mask"], err.shape[-2:])[:, None].expand_as(err)
                    if lips.sum() > 0:
                        mouth[way].append(float((err * lips).sum() / lips.sum()))
    out = {way: float(np.mean(v)) for way, v in losses.items()}
    out.update({f"mouth_{way}": float(np.mean(v)) for way, v in mouth.items() if v})
    return out


def render(loss: dict[str, float]) -> str:
    lines = []
    for where, p in (("whole frame", ""), ("inside the lip masks", "mouth_")):
        if f"{p}own" not in loss:
            continue
        own, shifted, none = loss[f"{p}own"], loss[f"{p}shifted"], loss[f"{p}none"]
        lines += [f"{where}: loss with its own audio {own:.5f}, shifted by half the window {shifted:.5f}, none {none:.5f}",
                  f"  the audio's presence lowers it by {100 * (none - own) / none:.2f}%; its timing by "
                  f"{100 * (shifted - own) / shifted:.2f}% (0: the mouth does not follow the voice)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.audio_use", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a stage-2 or stage-3 run or step folder")
    p.add_argument("--data", required=True, help="the curated and exported OUT it trained on (or another)")
    p.add_argument("--windows", type=int, default=30)
    p.add_argument("--timesteps", default="100,250,400")
    args = p.parse_args(argv)
    loss = audio_use(args.checkpoint, args.data, args.windows, tuple(int(t) for t in args.timesteps.split(",")))
    print(render(loss))
    return loss


if __name__ == "__main__":
    main()
