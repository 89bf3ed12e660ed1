"""Pretrained parts load through the same flags a user passes, from tiny models saved by the libraries themselves.

What this proves: a diffusers-format SD folder (unet/ + vae/ written by save_pretrained) feeds
--pretrained, and both the backbone and ReferenceNet start from it with EMO's new layers silent;
a transformers Wav2Vec2Model folder feeds --audio-encoder; a diffusers MotionAdapter folder feeds
--motion-module and computes what diffusers' own AnimateDiff module computes; missing or unsafe
weights fail with a message that says what to download.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from safetensors.torch import load_file

from model.checkpoint import load_checkpoint, read_meta
from model.config import EMO_MODELS, TINY_UNET
from model.emo import EMOModel
from model.temporal import load_motion_module, temporal_modules
from model.train import main


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    """A tiny SD-shaped unet/ and vae/ (cross-attention width 24, unlike the tiny config's 32)."""
    root = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    UNet2DConditionModel(**{**TINY_UNET, "cross_attention_dim": 24}).save_pretrained(root / "unet")
    AutoencoderKL(block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4).save_pretrained(root / "vae")
    return root


@pytest.fixture(scope="module")
def motion_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mm") / "adapter"
    torch.manual_seed(0)
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                            motion_norm_num_groups=32, use_motion_mid_block=True)
    with torch.no_grad():  # trained-looking weights, so the equivalence check is not trivially zero
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    adapter.save_pretrained(root)
    return root


def test_pretrained_unet_starts_backbone_and_reference_net_unchanged(sd_folder):
    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet")
    model = EMOModel(EMO_MODELS["tiny"], UNet2DConditionModel.from_pretrained(sd_folder / "unet")).eval()
    plain = unet.state_dict()
    assert all(torch.equal(v, plain[k]) for k, v in model.reference_net.unet.state_dict().items())
    x, t = torch.randn(1, 3, 4, 8, 8), torch.tensor([400])
    with torch.no_grad():
        out = model(x, t, torch.randn(1, 4, 8, 8), audio=torch.randn(1, 3, 5, 64), face_mask=torch.ones(1, 1, 64, 64),
                    speed=torch.ones(1, 3), motion=torch.randn(1, 4, 4, 8, 8))
        bare = unet(x[0], t.repeat(3), encoder_hidden_states=torch.zeros(3, 1, 24)).sample
    assert torch.equal(out[0], bare)


def test_train_through_pretrained_audio_encoder_and_motion_module(sd_folder, wav2vec2_folder, motion_folder,
                                                                   clips_out, tmp_path):
    frozen = tmp_path / "lr0.json"
    frozen.write_text(json.dumps({"learning_rate": 0.0, "batch_size": 1, "num_frames": 4}))
    s1 = tmp_path / "s1"
    main(["--data", str(clips_out), "--stage", "1", "--out", str(s1), "--steps", "1",
          "--pretrained", str(sd_folder), "--config", str(frozen), "--quiet"])
    weights = load_file(next(s1.glob("step-*")) / "model.safetensors")
    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet").state_dict()
    assert all(torch.equal(weights[f"backbone.{k}"], v) for k, v in unet.items())
    assert all(torch.equal(weights[f"reference_net.unet.{k}"], v) for k, v in unet.items())
    assert read_meta(s1)["config"]["unet"]["cross_attention_dim"] == 24 and (s1 / "vae" / "config.json").is_file()

    s2 = tmp_path / "s2"
    main(["--data", str(clips_out), "--stage", "2", "--out", str(s2), "--steps", "2", "--init-from", str(s1),
          "--audio-encoder", str(wav2vec2_folder), "--motion-module", str(motion_folder), "--config", str(frozen),
          "--quiet"])
    model, config, meta = load_checkpoint(s2)
    assert (config.audio_feature_layers, config.audio_feature_dim) == (2, 16)  # the last 2 of 3 hidden states
    assert meta["audio_encoder_path"] == str(s2 / "audio_encoder") and meta["vae_path"] == str(s2 / "vae")
    assert any(p.name.startswith("w2v2-") for p in (clips_out / "cache" / "audio").iterdir())
    adapter = load_file(motion_folder / "diffusion_pytorch_model.safetensors")
    assert torch.equal(model.temporal[0].proj_out.weight, adapter["down_blocks.0.motion_modules.0.proj_out.weight"])


def test_motion_module_computes_what_diffusers_animatediff_computes(motion_folder):
    adapter = MotionAdapter.from_pretrained(motion_folder).eval()
    model = EMOModel(EMO_MODELS["tiny"])
    load_motion_module(motion_folder, model.temporal, model.temporal_site_names)
    index = model.temporal_site_names.index("up_blocks.1.1")
    x = torch.randn(2 * 6, 32, 8, 8)  # (B*F, C, H, W)
    with torch.no_grad():
        ours = model.temporal[index].eval()(x, num_frames=6)
        theirs = adapter.up_blocks[1].motion_modules[1](x, num_frames=6)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_missing_or_unsafe_weights_fail_clearly(clips_out, tmp_path, motion_folder):
    with pytest.raises(SystemExit, match="runwayml/stable-diffusion-v1-5"):
        main(["--data", str(clips_out), "--stage", "1", "--model", "sd15", "--out", str(tmp_path / "x"),
              "--steps", "1", "--quiet"])
    with pytest.raises(FileNotFoundError, match="runwayml/stable-diffusion-v1-5"):
        main(["--data", str(clips_out), "--stage", "1", "--out", str(tmp_path / "y"), "--steps", "1",
              "--pretrained", str(tmp_path / "nowhere"), "--quiet"])
    modules, names = temporal_modules(UNet2DConditionModel(**TINY_UNET), EMO_MODELS["tiny"])
    (tmp_path / "mm.ckpt").write_bytes(b"not opened")
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_motion_module(tmp_path / "mm.ckpt", modules, names)
    with pytest.raises(ValueError, match="sites this UNet lacks"):
        load_motion_module(motion_folder, modules[:2], names[:2])
