"""The trainer on real clips: each stage overfits a fixed batch, resume is bit-for-bit, checkpoints record lineage.

Overfitting uses `overfit_batch` (step 0's clip window, noise and timestep every step), the
classic check that gradients reach the layers a stage trains and that they can fit. Measured on
one CPU thread (tiny, f=12 + 4 motion frames, batch 1, lr 3e-3), first loss over the mean of the
last five: stage 1 1.161 -> 0.0018 (~640x) in 30 steps, stage 2 0.604 -> 0.181 (3.3x) in 40,
stage 3 0.164 -> 0.077 (2.1x) in 40 (it starts where stage 2 ended, on the same batch).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from manifests import ManifestStore
from manifests.lineage import learned_from
from model.checkpoint import load_checkpoint, read_meta
from model.train import TrainOptions, main, parse_options, train

STEPS = {1: 30, 2: 40, 3: 40}
FACTOR = {1: 50.0, 2: 2.5, 3: 1.6}


def losses(run: Path) -> list[float]:
    with open(run / "loss.csv", newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def write_config(path: Path, **keys) -> Path:
    path.write_text(json.dumps(keys))
    return path


@pytest.fixture(scope="module")
def stage_runs(clips_out, tmp_path_factory) -> dict[int, Path]:
    """Stages 1 -> 2 -> 3 on one fixed batch, each from the previous stage's checkpoint."""
    root = tmp_path_factory.mktemp("stages")
    cfg = write_config(root / "overfit.json", overfit_batch=True, batch_size=1, learning_rate=3e-3,
                       cond_drop_prob=0.0)
    runs = {}
    for stage in (1, 2, 3):
        runs[stage] = root / f"s{stage}"
        argv = ["--data", str(clips_out), "--stage", str(stage), "--out", str(runs[stage]),
                "--steps", str(STEPS[stage]), "--config", str(cfg), "--quiet"]
        if stage > 1:
            argv += ["--init-from", str(runs[stage - 1])]
        main(argv)
    return runs


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_overfits_a_real_clip(stage_runs, stage):
    curve = losses(stage_runs[stage])
    assert len(curve) == STEPS[stage]
    final = sum(curve[-5:]) / 5
    assert curve[0] / final >= FACTOR[stage], f"stage {stage}: {curve[0]:.4f} -> {final:.4f}"


def test_later_stages_leave_frozen_layers_alone(stage_runs):
    w = {s: load_file(next(stage_runs[s].glob("step-*")) / "model.safetensors") for s in (1, 2, 3)}
    ema1 = load_file(next(stage_runs[1].glob("step-*")) / "ema.safetensors")
    key = "backbone.conv_in.weight"
    # --init-from starts from the parent's EMA (what it samples with), then leaves the layer alone.
    assert not torch.equal(w[1][key], ema1[key])
    assert torch.equal(ema1[key], w[2][key]) and torch.equal(w[2][key], w[3][key])
    audio = "audio_proj.mlp.0.weight"
    ema2 = load_file(next(stage_runs[2].glob("step-*")) / "ema.safetensors")
    assert not torch.equal(w[1][audio], w[2][audio]) and torch.equal(ema2[audio], w[3][audio])
    speed = "speed_encoder.mlp.0.weight"
    assert torch.equal(w[1][speed], w[2][speed]) and not torch.equal(w[2][speed], w[3][speed])


def test_checkpoint_records_lineage_and_rebuilds_the_model(stage_runs, clips_out):
    meta = read_meta(stage_runs[3])
    assert meta["stage"] == 3 and meta["step"] == STEPS[3]
    assert meta["manifest_hash"] == ManifestStore(clips_out).content_hash(["clips"])
    assert meta["parent"]["stage"] == 2 and meta["parent"]["path"].startswith(str(stage_runs[2]))
    # What it learned from: the source of the two train-split clips (the val clip is not counted).
    (src,) = meta["sources"]
    assert src["source_id"] == "carphone" and src["clips"] == 2 and src["seconds"] == 2 * 60 / 25.0
    found = learned_from([stage_runs[1].parent], {"carphone"})
    assert sorted(a["stage"] for a in found["affected"]) == [1, 2, 3] and not found["unknown"]
    assert {p.name for p in next(stage_runs[3].glob("step-*")).iterdir()} == {
        "model.safetensors", "ema.safetensors", "optimizer.safetensors", "meta.json"}
    model, config, meta = load_checkpoint(stage_runs[3], ema=False)
    raw = load_file(Path(meta["dir"]) / "model.safetensors")
    assert all(torch.equal(v, raw[k]) for k, v in model.state_dict().items())
    assert config.num_frames == 12 and not model.training


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(stage_runs, clips_out, tmp_path):
    """Stage 2 (motion frames, audio, EMA, condition dropout, a new batch every step)."""
    cfg = write_config(tmp_path / "c.json", num_frames=6, batch_size=1)
    common = ["--data", str(clips_out), "--stage", "2", "--config", str(cfg), "--init-from", str(stage_runs[1]),
              "--seed", "7", "--quiet"]
    main([*common, "--out", str(tmp_path / "straight"), "--steps", "4"])
    main([*common, "--out", str(tmp_path / "cut"), "--steps", "2"])
    main([*common, "--out", str(tmp_path / "cut"), "--steps", "4", "--resume"])
    straight, cut = losses(tmp_path / "straight"), losses(tmp_path / "cut")
    assert len(straight) == 4 and straight == cut
    assert len(set(straight)) == 4  # the batches did change from step to step
    a, b = (read_meta(tmp_path / d) for d in ("straight", "cut"))
    assert a["model_sha256"] == b["model_sha256"]
    for name in ("ema.safetensors", "optimizer.safetensors"):
        sa, sb = (load_file(Path(tmp_path / d / "step-0000004" / name)) for d in ("straight", "cut"))
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_options_built_directly_train_what_the_command_line_trains(stage_runs, clips_out, tmp_path):
    """`emo build` and `emo demo` construct TrainOptions; the command line parses into the same object."""
    cfg = write_config(tmp_path / "c.json", num_frames=6, batch_size=1)
    argv = ["--data", str(clips_out), "--stage", "3", "--config", str(cfg), "--init-from", str(stage_runs[2]),
            "--finetune", "--trainable", "audio,speed", "--steps", "2", "--out", str(tmp_path / "cli"), "--quiet"]
    direct = TrainOptions(data=clips_out, stage=3, config=cfg, init_from=stage_runs[2], finetune=True,
                          trainable=["audio", "speed"], steps=2, out=tmp_path / "direct", quiet=True)
    assert parse_options(argv) == TrainOptions(**{**vars(direct), "out": str(tmp_path / "cli")})
    main(argv)
    train(direct)
    a, b = (read_meta(tmp_path / d) for d in ("cli", "direct"))
    assert a["model_sha256"] == b["model_sha256"] and losses(tmp_path / "cli") == losses(tmp_path / "direct")
    assert a["trainable_groups"] == ["audio", "speed"] and a["config"]["learning_rate"] < read_meta(
        stage_runs[2])["config"]["learning_rate"]  # a fine-tune's tenth
    with pytest.raises(ValueError, match="unknown layer groups"):
        TrainOptions(data=clips_out, stage=3, out=tmp_path / "x", trainable=("audoi",))


def test_stage_curves_for_the_report(stage_runs):
    for stage in (1, 2, 3):
        curve = losses(stage_runs[stage])
        print(f"stage {stage}: first {curve[0]:.4f}, last-5 mean {sum(curve[-5:]) / 5:.5f}")


def test_the_mouth_weighs_more_in_the_loss_and_a_plain_error_keeps_its_scale():
    from model.train_loop import diffusion_loss

    b, f, c, s = 2, 3, 4, 8
    lips = torch.zeros(b, 1, 64, 64)
    lips[:, :, 40:56, 16:48] = 1  # 4 x 2 latents of 8 x 8 hold the mouth
    inside = torch.zeros(b, f, c, s, s)
    inside[..., 5:7, 2:6] = 1.0  # an error only on the mouth's latents
    outside = torch.zeros(b, f, c, s, s)
    outside[..., 0:2, 2:6] = 1.0  # the same error as far from it
    zero = torch.zeros_like(inside)
    plain = F.mse_loss(inside, zero)
    assert diffusion_loss(inside, zero, lips, 0.0) == plain == diffusion_loss(inside, zero, None, 4.0)
    assert diffusion_loss(inside, zero, lips, 4.0) > 3 * plain  # the mouth's share grew (1 + 4 on 1/8 of it)
    assert diffusion_loss(outside, zero, lips, 4.0) < plain
    even = torch.full_like(inside, 0.5)
    assert torch.isclose(diffusion_loss(even, zero, lips, 4.0), F.mse_loss(even, zero))  # normalised


def test_training_windows_carry_the_clips_lip_mask_only_when_the_mouth_weighs(clips_out):
    from model.config import load_config
    from model.data import ClipWindows

    plain = ClipWindows(clips_out, load_config("tiny"), stage=2, seed=0)[0]
    assert "lip_mask" not in plain
    batch = ClipWindows(clips_out, load_config("tiny", mouth_loss_weight=3.0), stage=2, seed=0)[0]
    lips = batch["lip_mask"]  # (B, 1, H, W), the fixture's lower-middle box
    assert lips.shape == (2, 1, 64, 64) and set(lips.unique().tolist()) == {0.0, 1.0}
    assert lips[:, :, 45, 32].eq(1).all() and lips[:, :, 10, 32].eq(0).all()
    assert torch.equal(batch["frames"], plain["frames"])  # the same windows either way


def test_training_windows_carry_the_voices_region_when_it_is_the_lips(clips_out):
    from model.config import load_config
    from model.data import ClipWindows

    batch = ClipWindows(clips_out, load_config("tiny", audio_region="lips"), stage=2, seed=0)[0]
    region = batch["audio_region"]  # (B, 1, H, W): the clip's lip mask, where audio attention writes
    assert region.shape == (2, 1, 64, 64) and region[:, :, 45, 32].eq(1).all() and region[:, :, 10, 32].eq(0).all()
    assert "audio_region" not in ClipWindows(clips_out, load_config("tiny", audio_region="lips"), stage=1, seed=0)[0]


def test_train_timestep_max_bounds_the_drawn_timesteps_and_leaves_the_default_draws_alone(clips_out):
    from model.config import load_config
    from model.data import ClipWindows

    def drawn(**kw):
        windows = ClipWindows(clips_out, load_config("tiny", **kw), stage=2, seed=0, num_steps=40)
        return torch.cat([windows[k]["timesteps"] for k in range(40)])

    plain, full, low = drawn(), drawn(train_timestep_max=1000), drawn(train_timestep_max=300)
    assert torch.equal(plain, full) and plain.max() >= 300  # unset = every timestep, drawn as before
    assert low.max() < 300 and low.min() >= 0 and len(low.unique()) > 20
    with pytest.raises(ValueError, match="train_timestep_max"):
        load_config("tiny", train_timestep_max=0)


def test_a_later_stage_says_which_config_keys_its_parent_fixes(stage_runs, clips_out, tmp_path, caplog):
    """--config of a stage started from a parent: training keys (and where the voice acts) apply; an
    architecture key is the parent's, and the run says it ignored it instead of dropping it silently."""
    import logging

    cfg = write_config(tmp_path / "c.json", num_frames=6, batch_size=1, audio_region="lips", audio_dim=48)
    with caplog.at_level(logging.WARNING, logger="emo.train"):
        main(["--data", str(clips_out), "--stage", "2", "--config", str(cfg), "--init-from", str(stage_runs[1]),
              "--steps", "1", "--out", str(tmp_path / "run"), "--quiet"])
    config = read_meta(tmp_path / "run")["config"]
    assert config["audio_region"] == "lips" and config["audio_dim"] == read_meta(stage_runs[1])["config"]["audio_dim"]
    assert "audio_dim" in caplog.text and "ignored" in caplog.text and "audio_region" not in caplog.text.split("ignored")[0]


def test_audio_use_tells_a_model_deaf_to_the_audio_from_one_that_hears_it(stage_runs, clips_out, capsys):
    """benchmarks/audio_use.py: a stage-1 model's audio layers are still zero (own = shifted = none,
    exactly); stage 2 trained them, and dropping the audio changes its loss."""
    from benchmarks.audio_use import audio_use
    from benchmarks.audio_use import main as audio_use_main

    deaf = audio_use(stage_runs[1], clips_out, windows=2, timesteps=(250,))
    assert deaf["own"] == deaf["shifted"] == deaf["none"]
    hears = audio_use_main(["--checkpoint", str(stage_runs[2]), "--data", str(clips_out), "--windows", "2",
                            "--timesteps", "250"])
    assert hears["none"] != hears["own"] and "its timing by" in capsys.readouterr().out
