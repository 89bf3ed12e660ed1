"""The lip-sync expert (model/sync_expert.py): it learns to tell a mouth under its own audio from the
same mouth under audio from elsewhere in the clip, its loss reaches only the mouth, and a stage-2
run fits it once and keeps it for its resume."""

from __future__ import annotations

import json

import numpy as np
import torch

from model.sync_expert import fit, lip_centres, mouth_box, sync_loss
from tests.model.test_train import losses


def _envelope(rng: np.random.Generator, n: int) -> np.ndarray:
    """A speech-like loudness: random bursts smoothed over a few frames, in [0, 1]."""
    bursts = (rng.random(n) < 0.3).astype(float)
    smooth = np.convolve(bursts, np.ones(4) / 4, mode="same")
    return smooth / max(smooth.max(), 1e-6)


def _clips(seed: int, tied: bool, n: int = 240) -> list:
    """Four clips of 8x8 latents whose mouth box (rows 4-6, columns 2-6) darkens with a loudness
    envelope; the audio features carry that envelope (`tied`) or another one of the same kind."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(4):
        heard = _envelope(rng, n)
        seen = heard if tied else _envelope(rng, n)
        latents = 0.1 * rng.standard_normal((n, 4, 8, 8))
        latents[:, :, 4:7, 2:7] -= seen[:, None, None, None]
        audio = np.concatenate([heard[:, None] + 0.05 * rng.standard_normal((n, 1)),
                                rng.standard_normal((n, 7))], axis=1)
        centre = torch.tensor([5.0, 4.0])
        clips.append((torch.tensor(latents, dtype=torch.float32), torch.tensor(audio, dtype=torch.float32), centre))
    return clips


def test_the_expert_tells_a_mouth_under_its_own_audio_from_the_same_mouth_under_other_audio():
    expert, accuracy = fit(_clips(0, tied=True), seed=0)
    assert accuracy > 0.75, accuracy  # on the last fifth of each clip, never trained on (0.84 when written)
    _, chance = fit(_clips(0, tied=False), seed=0)
    assert chance < 0.62, chance  # a mouth that does not follow its audio leaves nothing to learn
    assert not any(p.requires_grad for p in expert.parameters())  # frozen: stage 2 does not train it


def test_the_sync_loss_reaches_only_the_mouth_and_is_lower_when_the_mouth_follows_the_audio():
    clips = _clips(1, tied=True)
    expert, _ = fit(clips, seed=0, steps=600)
    latents, audio, centre = clips[0]
    window = latents[None, 20:32].clone().requires_grad_(True)  # (1, F=12, C, 8, 8)
    centres = centre[None]
    heard = audio[None, 20:32]
    loss = sync_loss(expert, window, heard, centres, torch.ones(1))
    loss.backward()
    moved = window.grad.abs().sum((0, 1, 2)) > 0  # (8, 8): which latents the loss pushes
    rows, cols = mouth_box(8, 8)
    top, left = 5, 3  # the 2 x 3 box whose middle is nearest the centre (5, 4), ties downwards: rows 5-6, columns 3-5
    box = torch.zeros(8, 8, dtype=torch.bool)
    box[top:top + rows, left:left + cols] = True
    assert moved.any() and not (moved & ~box).any()
    other = audio[None, 120:132]  # the same voice, other frames
    with torch.no_grad():
        assert sync_loss(expert, latents[None, 20:32], other, centres, torch.ones(1)) > loss.detach()
    # a weight of 0 (an example whose audio was dropped) does not count
    both = sync_loss(expert, latents[None, 20:32].repeat(2, 1, 1, 1, 1), torch.cat([heard, other]),
                     centres.repeat(2, 1), torch.tensor([1.0, 0.0]))
    assert torch.isclose(both, loss.detach())


def test_lip_centres_find_the_mask_on_the_latent_grid_and_default_to_its_middle():
    masks = torch.zeros(2, 1, 64, 64)
    masks[0, :, 40:48, 16:32] = 1  # rows 5, columns 2-3 of an 8x8 grid
    centres = lip_centres(masks, (8, 8))
    assert torch.allclose(centres[0], torch.tensor([5.0, 2.5])) and torch.allclose(centres[1], torch.tensor([3.5, 3.5]))


def test_a_stage_2_run_fits_the_expert_once_and_its_resume_reads_it(clips_out, tmp_path):
    from safetensors.torch import load_file

    from model.train import main

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"num_frames": 6, "batch_size": 1}))
    stage1 = tmp_path / "s1"
    main(["--data", str(clips_out), "--stage", "1", "--out", str(stage1), "--steps", "1", "--quiet"])
    sync = tmp_path / "sync.json"
    sync.write_text(json.dumps({"num_frames": 6, "batch_size": 1, "sync_loss_weight": 1.0}))
    common = ["--data", str(clips_out), "--stage", "2", "--init-from", str(stage1), "--quiet", "--seed", "3"]
    main([*common, "--config", str(cfg), "--out", str(tmp_path / "plain"), "--steps", "2"])
    main([*common, "--config", str(sync), "--out", str(tmp_path / "sync"), "--steps", "1"])
    kept = tmp_path / "sync" / "sync_expert.safetensors"
    assert kept.is_file() and not (tmp_path / "plain" / "sync_expert.safetensors").exists()
    before = load_file(kept)
    stamp = kept.stat().st_mtime_ns
    main([*common, "--config", str(sync), "--out", str(tmp_path / "sync"), "--steps", "2", "--resume"])
    assert kept.stat().st_mtime_ns == stamp and all(torch.equal(before[k], v) for k, v in load_file(kept).items())
    plain, synced = (losses(tmp_path / run) for run in ("plain", "sync"))
    assert len(synced) == 2 and synced[0] > plain[0]  # the same first batch, with the expert's term added
