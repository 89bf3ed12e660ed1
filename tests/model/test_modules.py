"""Shapes of every EMO module at tiny size, and the zero-init promise: new layers leave the backbone unchanged."""

from __future__ import annotations

import pytest
import torch

from model.audio_attention import AudioProjection
from model.audio_features import MelFeaturizer, audio_windows, load_wav
from model.config import EMO_MODELS
from model.emo import EMOModel
from model.face_locator import FaceLocator
from model.layer_groups import LAYER_GROUPS, STAGE_GROUPS, layer_group
from model.speed import SpeedEncoder, speed_buckets
from model.temporal import TemporalModule
from model.unet import build_unet, temporal_sites, transformer_blocks

B, F, N, C, LAT = 2, 12, 4, 4, 8  # batch, frames, motion frames, latent channels, latent size
CFG = EMO_MODELS["tiny"]


@pytest.fixture(scope="module")
def model() -> EMOModel:
    torch.manual_seed(0)
    return EMOModel(CFG).eval()


def inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    window = 2 * CFG.audio_context + 1
    return {
        "noisy": torch.randn(B, F, C, LAT, LAT, generator=g),
        "timesteps": torch.tensor([10, 900]),
        "ref_latent": torch.randn(B, C, LAT, LAT, generator=g),
        "audio": torch.randn(B, F, window, CFG.audio_feature_layers * CFG.audio_feature_dim, generator=g),
        "face_mask": (torch.rand(B, 1, CFG.image_size, CFG.image_size, generator=g) > 0.5).float(),
        "speed": torch.rand(B, F, generator=g) * 5,
        "motion": torch.randn(B, N, C, LAT, LAT, generator=g),
    }


def test_audio_windows_give_each_frame_two_neighbours_each_side():
    feats = torch.arange(10.0)[:, None, None].expand(10, 2, 3)  # frame i holds the value i
    win = audio_windows(feats, context=2)
    assert win.shape == (10, 5, 6)  # (T, 2m+1, L*D)
    assert win[5, :, 0].tolist() == [3, 4, 5, 6, 7]
    assert win[0, :, 0].tolist() == [0, 0, 0, 1, 2]  # edges repeat the first frame
    assert win[9, :, 0].tolist() == [7, 8, 9, 9, 9]


def test_mel_featurizer_on_real_speech_is_per_frame(clips_out):
    wav = load_wav(clips_out / "clips" / "carphone-0.wav")
    feats = MelFeaturizer(CFG.audio_feature_dim)(wav, n_frames=60)
    assert feats.shape == (60, CFG.audio_feature_layers, CFG.audio_feature_dim)
    assert torch.isfinite(feats).all() and feats.std() > 0.1


def test_audio_projection_shape():
    proj = AudioProjection(64, 48, 32, window=5)
    assert proj(torch.randn(B * F, 5, 64)).shape == (B * F, 5, 32)


def test_the_null_token_lets_one_position_take_the_voice_and_another_nothing():
    """Without it every position mixes the same audio values; with it, a query that matches the null
    key takes (almost) nothing from the voice while another takes it whole. Zeros at first, in the
    audio group (trained in stage 2), and the demo's model has it."""
    from diffusers.models.attention_processor import Attention

    proj = AudioProjection(64, 48, 8, window=5, null_token=True)
    tokens = proj(torch.randn(2, 5, 64))
    assert tokens.shape == (2, 6, 8) and torch.equal(tokens[:, 5], torch.zeros(2, 8))
    assert layer_group("audio_proj.null") == "audio" and "audio" in STAGE_GROUPS[2]
    assert EMO_MODELS["demo"].audio_null_token and not EMO_MODELS["sd15"].audio_null_token  # sd15 keeps Hallo's
    with torch.no_grad():
        proj.null.fill_(3.0)
        tokens = proj(torch.randn(1, 5, 64))  # (1, 6, 8)
        attn = Attention(query_dim=8, cross_attention_dim=8, heads=1, dim_head=8)
        attn.to_q.weight.copy_(torch.eye(8) * 10)
        attn.to_k.weight.copy_(torch.eye(8))
        attn.to_v.weight.copy_(torch.eye(8))
        attn.to_out[0].weight.copy_(torch.eye(8))
        attn.to_out[0].bias.zero_()
        voice, null = tokens[:, :5].mean(1), tokens[:, 5]
        queries = torch.stack([null[0], voice[0]])[None]  # (1, 2, 8): one position like the null, one like the voice
        out = attn(queries, encoder_hidden_states=tokens)[0]
    weights = torch.softmax(queries[0] @ tokens[0].T * 10 / 8 ** 0.5, dim=-1)  # (2, 6)
    assert weights[0, 5] > 0.9 and weights[1, 5] < 0.1  # the first takes the null, the second the voice
    assert not torch.allclose(out[0], out[1], atol=0.5)


def test_face_locator_maps_mask_to_latent_grid():
    assert FaceLocator(C)(torch.rand(B, 1, 64, 64)).shape == (B, C, LAT, LAT)


def test_speed_buckets_are_soft_and_ordered():
    centers, radii = torch.linspace(0, 8, 9), torch.ones(9)
    codes = speed_buckets(torch.tensor([[0.0, 4.0, 4.2, 8.0]]), centers, radii)
    assert codes.shape == (1, 4, 9) and codes.abs().max() <= 1
    assert codes[0, 1, 4] == 0  # exactly at a centre
    assert 0 < codes[0, 2, 4] < 1  # just above it: graded, not a hard bucket
    assert SpeedEncoder(9, 8.0, 16)(torch.rand(B, F)).shape == (B, F, 16)


def test_temporal_module_with_motion_frames_and_speed():
    mod = TemporalModule(32, heads=2, speed_dim=16, max_frames=32, norm_groups=32)
    x = torch.randn(B * F, 32, 4, 4)
    out = mod(x, F, motion=torch.randn(B, N, 32, 4, 4), speed=torch.randn(B, F, 16))
    assert out.shape == x.shape  # motion frames join the frame axis, then are cut off
    torch.nn.init.normal_(mod.proj_out.weight)
    moved = mod(x, F, motion=torch.randn(B, N, 32, 4, 4))
    assert not torch.allclose(moved, mod(x, F, motion=torch.zeros(B, N, 32, 4, 4)))  # motion frames matter


def test_reference_net_features_cover_every_block_and_site(model):
    with torch.no_grad():
        ref = model.encode_reference(torch.randn(B, C, LAT, LAT), torch.randn(B, N, C, LAT, LAT))
    blocks, sites = transformer_blocks(model.backbone), temporal_sites(model.backbone)
    assert set(ref.attn) == {name for name, _ in blocks}
    assert set(ref.motion) == {s.name for s in sites}
    for s in sites:
        assert ref.motion[s.name].shape[:3] == (B, N, s.channels)
    for name, block in blocks:
        assert ref.attn[name].shape[0] == B and ref.attn[name].shape[2] == block.attn1.query_dim


def test_full_forward_shape_with_every_condition(model):
    with torch.no_grad():
        out = model(**inputs())
    assert out.shape == (B, F, C, LAT, LAT)
    with torch.no_grad():  # stage 1: single frames, reference and mask only
        single = model(inputs()["noisy"][:, :1], torch.tensor([5, 5]), inputs()["ref_latent"])
    assert single.shape == (B, 1, C, LAT, LAT)


def test_new_layers_start_at_zero_so_the_backbone_is_unchanged(model):
    """With every condition given, EMO at init computes exactly what the bare UNet computes."""
    x = inputs()
    plain = build_unet(CFG.unet).eval()
    plain.load_state_dict(model.backbone.state_dict())
    with torch.no_grad():
        emo = model(**x)
        # (B, F, C, h, w) -> (B*F, C, h, w); the same null context the backbone gets
        bare = plain(x["noisy"].flatten(0, 1), x["timesteps"].repeat_interleave(F),
                     encoder_hidden_states=torch.zeros(B * F, 1, CFG.unet["cross_attention_dim"])).sample
    assert torch.equal(emo, bare.view(B, F, C, LAT, LAT))


def test_new_layers_do_act_once_trained(model):
    x = inputs()
    trained = EMOModel(CFG).eval()
    trained.load_state_dict(model.state_dict())
    with torch.no_grad():
        trained.reference_gates.fill_(0.5)
        for layer in trained.audio_attention:
            torch.nn.init.normal_(layer.to_out[0].weight, std=0.1)
        base = trained(**x)
        assert not torch.allclose(base, model(**x))
        dropped = trained(**x, reference_keep=torch.tensor([1.0, 0.0]), audio_keep=torch.tensor([1.0, 0.0]))
    assert torch.equal(dropped[0], base[0]) and not torch.allclose(dropped[1], base[1])


def test_stages_train_disjoint_parts():
    model = EMOModel(CFG)
    names = [n for n, _ in model.named_parameters()]
    s1, s2, s3 = (set(model.set_stage(s)) for s in (1, 2, 3))
    assert any(n.startswith("reference_net.") for n in s1) and any(n.startswith("face_locator.") for n in s1)
    assert all(n.startswith(("temporal.", "audio_")) for n in s2) and not any(".speed_" in n for n in s2)
    assert any(n.startswith("speed_encoder.") for n in s3) and not any(n.startswith("audio_") for n in s3)
    assert not s1 & (s2 | s3)
    # --trainable and the stages share one table: every parameter is in a group, every group in a stage.
    assert all(layer_group(n) is not None for n in names)
    assert set(LAYER_GROUPS) == {g for groups in STAGE_GROUPS.values() for g in groups}


@pytest.mark.parametrize("stage", [1, 2])
def test_gradient_checkpointing_gives_the_same_gradients(stage):
    torch.manual_seed(0)
    model = EMOModel(CFG)
    with torch.no_grad():  # trained-looking new layers, so every path carries gradient
        for module in model.temporal:
            torch.nn.init.normal_(module.proj_out.weight, std=0.1)
    names = model.set_stage(stage)
    x = inputs()
    if stage == 1:
        x = {k: x[k] for k in ("timesteps", "ref_latent", "face_mask")} | {"noisy": x["noisy"][:, :1]}
    grads = []
    for enabled in (False, True):
        model.set_gradient_checkpointing(enabled)
        model.zero_grad()
        model(**x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if n in names and p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


def test_sd15_layout_matches_animatediff_and_runs_on_the_meta_device():
    """The real size, built without memory: AnimateDiff's 21 motion-module sites, 512x512 f=12 shapes."""
    cfg = EMO_MODELS["sd15"]
    with torch.device("meta"):
        model = EMOModel(cfg)
        x = {"noisy": torch.randn(1, 12, 4, 64, 64), "timesteps": torch.tensor([3]),
             "ref_latent": torch.randn(1, 4, 64, 64), "face_mask": torch.ones(1, 1, 512, 512),
             "audio": torch.randn(1, 12, 5, cfg.audio_feature_layers * cfg.audio_feature_dim),
             "speed": torch.ones(1, 12), "motion": torch.randn(1, 4, 4, 64, 64)}
        out = model(**x)
    assert len(model.temporal_site_names) == 21 and out.shape == (1, 12, 4, 64, 64)


def test_the_audio_attention_writes_only_inside_its_region():
    """With config.audio_region "lips", each block's audio attention adds to the positions its
    region covers and to no other (what the layers after it do with that is learned); without a
    region, everywhere. A region at image size is max-pooled to each block's grid."""
    from model.config import load_config

    torch.manual_seed(0)
    model = EMOModel(load_config("tiny", audio_region="lips")).eval()
    for layer in model.audio_attention:
        torch.nn.init.normal_(layer.to_out[0].weight)  # trained weights: the audio acts
    first_attn2 = transformer_blocks(model.backbone)[0][1].attn2  # its input does not depend on the audio
    seen = []
    hook = first_attn2.register_forward_hook(lambda m, args, out: seen.append(out.detach()))
    x = inputs()
    region = torch.zeros(B, 1, CFG.image_size, CFG.image_size)
    region[:, :, 40:52, 20:44] = 1  # pixels 40-51 x 20-43: latent rows 5-6, columns 2-5 of 8x8
    try:
        with torch.no_grad():
            for audio in (x["audio"], x["audio"] * 3):
                model(x["noisy"], x["timesteps"], x["ref_latent"], audio=audio, audio_region=region)
            for audio in (x["audio"], x["audio"] * 3):
                model(x["noisy"], x["timesteps"], x["ref_latent"], audio=audio)
    finally:
        hook.remove()
    moved = (seen[0] - seen[1]).abs().sum(-1).view(B * F, LAT, LAT)[0] > 1e-6  # positions the voice changed
    inside = torch.zeros(LAT, LAT, dtype=torch.bool)
    inside[5:7, 2:6] = True
    assert torch.equal(moved, inside)
    assert ((seen[2] - seen[3]).abs().sum(-1) > 1e-6).all()  # no region: every position
    with pytest.raises(ValueError, match="audio_region"):
        load_config("tiny", audio_region="mouth")
