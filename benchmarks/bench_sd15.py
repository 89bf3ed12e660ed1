"""The full-size path, smoke-tested: SD 1.5-shaped random weights, one stage-2 step, one sampling window.

    python -m benchmarks.bench_sd15                 # CPU: 64 px; CUDA: 512 px
    python -m benchmarks.bench_sd15 --width 0.5     # every UNet width halved (about 1/4 of the weights)

Built locally, nothing downloaded: SD 1.5's UNet config (model/config.py) with random weights, a
VAE with SD's AutoencoderKL config, and a wav2vec2-base-shaped audio encoder saved to a temporary
folder (so the cached-feature path is the real one). One stage-2 step runs as train.py runs it
(model/train_loop.py: VAE encode, motion frames, audio, EMA, AdamW) on the tiny clips table of
real media; one window of f=12 frames is sampled (model/sample.py's generate, 2 DDIM steps with
the three-way guidance batch). Prints parameter counts per part, seconds, and peak RSS (and peak
CUDA memory). On CUDA: steps/s and s/frame next to Hallo's published 1.63 s/frame (its paper's
512x512 inference, on an A100). Needs about 20 GB of host RAM at full width on the CPU.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

HALLO_S_PER_FRAME = 1.63


def parts(model) -> dict[str, float]:
    """Millions of parameters per part of the model."""
    groups = {"backbone": "backbone.", "reference_net": "reference_net.", "temporal": "temporal.",
              "audio": ("audio_proj.", "audio_attention."), "speed": "speed_encoder.", "face_locator": "face_locator."}
    out = {k: 0 for k in groups}
    for name, p in model.named_parameters():
        for k, prefix in groups.items():
            if name.startswith(prefix) and (k != "temporal" or ".speed_" not in name):
                out[k] += p.numel()
        if ".speed_" in name:
            out["speed"] += p.numel()
    out["total"] = sum(p.numel() for p in model.parameters())
    return {k: round(v / 1e6, 1) for k, v in out.items()}


def build_assets(root: Path, width: float):
    """A random SD-config VAE and a wav2vec2-base-shaped encoder on disk; the sd15 config at that width."""
    from diffusers import AutoencoderKL
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from model.config import load_config

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  sample_size=512, scaling_factor=0.18215).save_pretrained(root / "vae")
    Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(root / "wav2vec2")  # base: 12 layers of 768
    config = load_config("sd15", audio_encoder=str(root / "wav2vec2"), num_workers=0, batch_size=1)
    if width != 1.0:
        config.unet["block_out_channels"] = [int(c * width) // 32 * 32 for c in config.unet["block_out_channels"]]
    return config


def train_step(config, clips: Path, vae: Path, model) -> float:
    """Seconds of one stage-2 step as train.py takes it."""
    from accelerate import Accelerator

    from model.data import ClipWindows
    from model.latents import load_codec
    from model.memory import mixed_precision
    from model.train_loop import TrainLoop

    acc = Accelerator(mixed_precision=mixed_precision("auto"), cpu=not torch.cuda.is_available())
    names = model.set_stage(2)
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    model.set_gradient_checkpointing(True)
    codec = load_codec("autoencoder_kl", vae).to(acc.device)
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    ema = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
    model, optimizer = acc.prepare(model, optimizer)
    batch = ClipWindows(clips, config, 2, seed=0)[0]
    loop = TrainLoop(acc, model, optimizer, params, ema, codec, config, 1)
    start = time.perf_counter()
    loop.micro_step(batch, 1, last=True, clips=ClipWindows(clips, config, 2, seed=0).clips)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    del names
    return time.perf_counter() - start


def sample_window(config, vae: Path, model) -> float:
    """Seconds to generate (and decode) one window of f frames with 2 DDIM steps."""
    import numpy as np

    from model.audio_features import audio_windows, build_featurizer
    from model.latents import load_codec
    from model.sample import generate, make_scheduler, model_dtype
    from model.train_loop import NOISE_SCHEDULE

    device = next(model.parameters()).device
    dtype = model_dtype("auto", device)
    model = model.eval().to(dtype)
    codec = load_codec("autoencoder_kl", vae).to(device)
    size, f = config.image_size, config.num_frames
    wav = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    audio = audio_windows(build_featurizer(config, device)(wav, f), config.audio_context)
    ref = torch.rand(1, 3, size, size) * 2 - 1
    start = time.perf_counter()
    frames = list(generate(model, codec, config, make_scheduler("ddim", NOISE_SCHEDULE), ref,
                           torch.ones(1, 1, size, size), audio, 0.0, 2, 2.0, 3.5, torch.Generator().manual_seed(0),
                           device, dtype, 0x1234))
    assert len(frames) == f
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    from model.emo import EMOModel
    from tests.fixtures.tiny_clips import build_clips

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=float, default=1.0, help="scale every UNet width (1.0: SD 1.5's)")
    p.add_argument("--size", type=int, help="pixels (default 512 on CUDA, 64 on the CPU)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="bench_sd15-") as tmp:
        root = Path(tmp)
        config = build_assets(root, args.width)
        config.image_size = args.size or (512 if cuda else 64)
        clips = build_clips(root / "clips")
        torch.manual_seed(0)
        model = EMOModel(config)
        counts = parts(model)
        print(f"sd15 at width {args.width}, {config.image_size} px, {'CUDA' if cuda else 'CPU'}")
        print("parameters (M): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        model = model.to("cuda" if cuda else "cpu")
        step_s = train_step(config, clips, root / "vae", model)
        window_s = sample_window(config, root / "vae", model)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"stage-2 step: {step_s:.1f} s ({1 / step_s:.3f} steps/s), f={config.num_frames} frames + "
          f"{config.num_motion_frames} motion frames, batch 1, gradient checkpointing")
    print(f"sampling: one window of {config.num_frames} frames, 2 DDIM steps x 3 guidance passes: {window_s:.1f} s, "
          f"{window_s / config.num_frames:.2f} s/frame")
    if cuda:
        per_frame_20 = window_s / config.num_frames * 10  # EMO-style 20 steps (2 measured)
        print(f"  at 20 DDIM steps about {per_frame_20:.2f} s/frame; Hallo publishes {HALLO_S_PER_FRAME} s/frame "
              f"(ratio {per_frame_20 / HALLO_S_PER_FRAME:.2f})")
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"peak RSS: {rss_gb:.1f} GiB")


if __name__ == "__main__":
    main()
