"""What a GPU user runs into, checked on the CPU: fp16/bf16 sampling, the audio encoder a run
keeps, the feature cache, checkpoint disk use and the memory switches of model/memory.py."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

import model.checkpoint as ckpt
from model.config import load_config
from model.data import AudioFeatureCache
from model.emo import EMOModel
from model.sample import main as sample_main
from model.train import main
from pipeline.demo_corpus import packaged_media


def write(path: Path, **keys) -> Path:
    path.write_text(json.dumps(keys))
    return path


@pytest.fixture(scope="module")
def stage2(clips_out, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("s2") / "s2"
    cfg = write(run.parent / "c.json", batch_size=1, num_frames=4)
    main(["--data", str(clips_out), "--stage", "2", "--out", str(run), "--steps", "2", "--config", str(cfg),
          "--quiet"])
    return run


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_sampler_runs_with_the_model_in_half_precision(stage2, tmp_path, dtype):
    """The dtype path CUDA takes (the speed encoder once crashed on it), on the CPU."""
    wav, sr = sf.read(str(packaged_media()["sample_wav"]), dtype="float32")
    sf.write(tmp_path / "s.wav", wav[: sr // 2], sr)
    out = tmp_path / f"{dtype}.mp4"
    assert sample_main(["--checkpoint", str(stage2), "--image", str(packaged_media()["hanks"]),
                        "--audio", str(tmp_path / "s.wav"), "--out", str(out), "--steps", "2",
                        "--device", "cpu", "--dtype", dtype]) == 0
    record = json.loads(Path(f"{out}.json").read_text())
    assert record["frames"] == 12 and record["params"]["dtype"] == dtype


def test_sd15_without_audio_encoder_says_what_to_pass(clips_out, tmp_path):
    with pytest.raises(ValueError, match="pass --audio-encoder WAV2VEC2_FOLDER") as e:
        main(["--data", str(clips_out), "--stage", "2", "--model", "sd15", "--out", str(tmp_path / "x"),
              "--steps", "1", "--quiet"])
    assert "12x768" in str(e.value) and not (tmp_path / "x").exists()  # before any model is built


def test_cached_features_are_read_without_loading_wav2vec2(clips_out, wav2vec2_folder):
    config = load_config("tiny", audio_encoder=str(wav2vec2_folder), audio_feature_dim=16)
    clip = {"clip_id": "carphone-0", "audio_path": "clips/carphone-0.wav", "n_frames": 60}
    first = AudioFeatureCache(clips_out, config)
    feats = first(clip)
    assert first._featurizer is not None and feats.shape == (60, 2, 16)
    second = AudioFeatureCache(clips_out, config)  # a fresh DataLoader worker
    assert torch.equal(second(clip), feats) and second._featurizer is None


def test_resume_uses_the_runs_own_audio_encoder(clips_out, wav2vec2_folder, tmp_path):
    folder = tmp_path / "w2v"
    shutil.copytree(wav2vec2_folder, folder)
    cfg = write(tmp_path / "c.json", batch_size=1, num_frames=4)
    common = ["--data", str(clips_out), "--stage", "2", "--out", str(tmp_path / "run"), "--config", str(cfg),
              "--quiet"]
    main([*common, "--steps", "1", "--audio-encoder", str(folder)])
    shutil.rmtree(folder)  # only the run's copy is left
    main([*common, "--steps", "2", "--resume"])
    assert ckpt.read_meta(tmp_path / "run")["step"] == 2


def test_saving_never_holds_more_than_keep_checkpoints(monkeypatch, tmp_path):
    model = torch.nn.Linear(2, 2)
    seen = []
    real = ckpt.save_file

    def counting(tensors, path):
        seen.append(len(list(tmp_path.glob("step-*"))) + len(list(tmp_path.glob(".step-*.tmp"))))
        real(tensors, path)

    monkeypatch.setattr(ckpt, "save_file", counting)
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, model.state_dict(), None, None, [], {}, keep_last=2)
    assert max(seen) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["step-0000003", "step-0000004"]


def test_weights_load_tensor_by_tensor_and_refuse_strangers(tmp_path):
    config = load_config("tiny")
    torch.manual_seed(1)
    a, b = EMOModel(config), EMOModel(config)
    ckpt.save_checkpoint(tmp_path, 1, a.state_dict(), None, None, [], {}, keep_last=1)
    ckpt.load_weights(b, tmp_path / "step-0000001" / "model.safetensors")
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in b.state_dict().items())
    from safetensors.torch import save_file

    save_file({"nobody.weight": torch.zeros(1)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(ValueError, match="unknown parameter nobody.weight"):
        ckpt.load_weights(b, tmp_path / "odd.safetensors", strict=False)


def test_memory_switches_train_on_the_cpu(clips_out, stage2, tmp_path, caplog):
    cfg = write(tmp_path / "c.json", batch_size=1, num_frames=4, ema_device="cpu", frozen_dtype="bf16",
                mixed_precision="bf16", gradient_checkpointing=True)
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        main(["--data", str(clips_out), "--stage", "2", "--out", str(run), "--steps", "2", "--config", str(cfg),
              "--init-from", str(stage2), "--quiet"])
    weights = load_file(next(run.glob("step-*")) / "model.safetensors")
    frozen = weights["backbone.conv_in.weight"]
    assert frozen.dtype == torch.bfloat16 and weights["audio_proj.mlp.0.weight"].dtype == torch.float32
    ema = load_file(next(run.glob("step-*")) / "ema.safetensors")
    assert all(v.dtype == torch.float32 and np.isfinite(v.numpy()).all() for v in ema.values())
    assert "untrained" not in caplog.text


def test_eight_bit_adamw_needs_bitsandbytes(clips_out, tmp_path):
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes is installed: the missing-dependency message cannot be seen")
    except ImportError:
        pass
    cfg = write(tmp_path / "c.json", optimizer="adamw8bit")
    with pytest.raises(ValueError, match="pip install bitsandbytes"):
        main(["--data", str(clips_out), "--stage", "1", "--out", str(tmp_path / "r"), "--steps", "1",
              "--config", str(cfg), "--quiet"])
