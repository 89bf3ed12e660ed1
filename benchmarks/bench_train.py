"""Training throughput and peak memory of the EMO model: tiny on CPU; sd15 at 512x512 when CUDA is present.

    .venv/bin/python -m benchmarks.bench_train [--steps 10] [--sizes tiny sd15]

Times the model's training step as train.py runs it (forward with every condition, MSE loss,
backward, AdamW step) on synthetic latents and audio features, so it needs no data, VAE or
pretrained weights: weights are random, which does not change the cost. Stage 1 is single frames
(backbone, ReferenceNet, face locator trained); stage 2 is f frames + 4 motion frames with the
temporal and audio layers trained. sd15 runs with and without gradient checkpointing, in bf16.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
import torch.nn.functional as F

from model.config import EMO_MODELS
from model.emo import EMOModel


def synthetic_batch(config, stage: int, device) -> dict:
    f = 1 if stage == 1 else config.num_frames
    lat, ch = config.latent_size, config.unet.get("in_channels", 4)
    batch = {
        "noisy": torch.randn(1, f, ch, lat, lat, device=device),
        "timesteps": torch.randint(0, 1000, (1,), device=device),
        "ref_latent": torch.randn(1, ch, lat, lat, device=device),
        "face_mask": torch.ones(1, 1, config.image_size, config.image_size, device=device),
    }
    if stage > 1:
        window, width = 2 * config.audio_context + 1, config.audio_feature_layers * config.audio_feature_dim
        batch["audio"] = torch.randn(1, f, window, width, device=device)
        batch["motion"] = torch.randn(1, config.num_motion_frames, ch, lat, lat, device=device)
        batch["speed"] = torch.rand(1, f, device=device) * 4
    return batch


def bench(size: str, stage: int, steps: int, checkpointing: bool, device: torch.device) -> dict:
    config = EMO_MODELS[size]
    torch.manual_seed(0)
    model = EMOModel(config).to(device)
    params = [p for n, p in model.named_parameters() if n in set(model.set_stage(stage))]
    model.set_gradient_checkpointing(checkpointing)
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    batch = synthetic_batch(config, stage, device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            pred = model(**batch)
        loss = F.mse_loss(pred.float(), torch.randn_like(pred, dtype=torch.float32))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocations, kernels, optimizer state
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, process-wide
    seconds = time.perf_counter() - start
    return {"size": size, "stage": stage, "frames": batch["noisy"].shape[1], "checkpointing": checkpointing,
            "device": device.type, "steps_per_s": steps / seconds, "peak_gib": peak,
            "trainable_m": sum(p.numel() for p in params) / 1e6}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sizes", nargs="+", default=["tiny", "sd15"])
    p.add_argument("--threads", type=int, help="CPU threads (1 is fastest on a busy 2-core machine)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CUDA: {torch.cuda.is_available()}")
    cuda = torch.cuda.is_available()
    runs = []
    if "tiny" in args.sizes:
        runs += [("tiny", s, False, torch.device("cpu")) for s in (1, 2)]
    if "sd15" in args.sizes:
        if cuda:
            runs += [("sd15", s, ckpt, torch.device("cuda")) for s in (1, 2) for ckpt in (False, True)]
        else:
            print("sd15: skipped, no CUDA device (it needs a GPU: about 2x860M UNet parameters)")
    results = []
    print(f"{'size':6} {'stage':>5} {'frames':>6} {'ckpt':>5} {'device':>6} {'steps/s':>8} {'peak GiB':>9} {'trainable M':>12}")
    for size, stage, ckpt, device in runs:
        try:
            r = bench(size, stage, args.steps, ckpt, device)
        except torch.OutOfMemoryError:
            print(f"{size:6} {stage:>5} {'':>6} {ckpt!s:>5} {device.type:>6} out of memory")
            torch.cuda.empty_cache()
            continue
        results.append(r)
        print(f"{r['size']:6} {r['stage']:>5} {r['frames']:>6} {r['checkpointing']!s:>5} {r['device']:>6} "
              f"{r['steps_per_s']:>8.2f} {r['peak_gib']:>9.2f} {r['trainable_m']:>12.1f}")
    return results


if __name__ == "__main__":
    main()
