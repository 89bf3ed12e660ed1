"""The reference skip path (model/reference_skip.py): appearance reaches the video through it.

A frame equal to the reference is a zero change and decodes to the reference at full resolution
(the pixel codec alone would blur it to 1/8); and a tiny checkpoint trained two steps with the skip
samples frames that look like the portrait's crop, where the same checkpoint without the skip
cannot (its denoiser has not learned a face yet).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model.latents import PixelCodec
from model.reference_skip import decode_residual, to_residual
from model.sample import crop_reference, read_portrait
from model.sample import main as sample_main
from model.train import main as train_main
from pipeline.demo_corpus import packaged_media
from tests.model.test_sample import iter_video


def test_zero_change_is_the_sharp_reference_and_changes_add_on_it():
    codec = PixelCodec()
    torch.manual_seed(0)
    ref = torch.rand(1, 3, 64, 64) * 2 - 1  # full of detail the 8x codec cannot hold
    frame = ref.clone()
    frame[:, :, 40:56, 16:48] -= 0.5  # a mouth opening: a darker patch
    ref_latent = codec.encode(ref)
    z = to_residual(codec.encode(torch.cat([ref, frame]))[None], ref_latent, scale=4.0)  # (1, 2, C, h, w)
    assert z[0, 0].abs().max() < 1e-6  # the reference itself: no change
    out = decode_residual(codec, z[0], ref, ref_latent, scale=4.0)
    assert torch.allclose(out[0], ref.clamp(-1, 1), atol=1e-6)
    skip_error = (out[1] - frame.clamp(-1, 1)).abs().mean()
    codec_error = (codec.decode(codec.encode(frame)) - frame.clamp(-1, 1)).abs().mean()
    assert skip_error < codec_error / 3, (float(skip_error), float(codec_error))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


@pytest.mark.parametrize("skip", [True, False])
def test_sampled_frames_carry_the_portrait_only_through_the_skip(skip, clips_out, tmp_path: Path):
    import cv2

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"reference_skip": skip, "residual_scale": 4.0}))
    run = tmp_path / "run"
    train_main(["--data", str(clips_out), "--stage", "2", "--config", str(config), "--out", str(run),
                "--steps", "2", "--quiet"])
    wav, sr = sf.read(str(packaged_media()["sample_wav"]), dtype="float32")
    speech = tmp_path / "speech.wav"
    sf.write(speech, wav[: int(0.5 * sr)], sr)
    portrait, video = packaged_media()["hanks"], tmp_path / "video.mp4"
    assert sample_main(["--checkpoint", str(run), "--image", str(portrait), "--audio", str(speech),
                        "--out", str(video), "--steps", "2", "--device", "cpu"]) == 0
    crop, _ = crop_reference(read_portrait(portrait), 64)
    frames = list(iter_video(video))
    ref = cv2.resize(crop, frames[0].shape[:2][::-1], interpolation=cv2.INTER_CUBIC)
    r = np.mean([_correlation(f, ref) for f in frames])
    assert (r > 0.8) if skip else (r < 0.5), r


def test_a_parted_lip_survives_the_patch_codec_and_fades_in_the_pixel_codec():
    """The "pixel_patches" codec (48 channels: each 8x8 patch as 4x4 RGB means) keeps a 3-px dark gap
    between the lips at most of its depth through the reference skip; the 4-channel pixel codec
    spreads it over its 8x8 patch (model/latents.py says when that is too faint for the face mesh)."""
    from model.latents import PatchCodec, load_codec

    torch.manual_seed(0)
    ref = torch.rand(1, 3, 128, 128) * 0.2  # a plain face of skin-ish grey
    frame = ref.clone()
    frame[:, :, 82:85, 52:76] = -0.8  # the mouth opens: a dark gap 3 px tall
    depth = {}
    for name, codec in (("pixel", PixelCodec()), ("patches", load_codec("pixel_patches", None))):
        ref_latent = codec.encode(ref)
        assert ref_latent.shape == (1, codec.channels, 16, 16)
        z = to_residual(codec.encode(frame)[None], ref_latent, scale=4.0)[0]
        out = decode_residual(codec, z, ref, ref_latent, scale=4.0)
        depth[name] = float((ref - out)[:, :, 82:85, 52:76].mean() / (ref - frame)[:, :, 82:85, 52:76].mean())
    assert isinstance(load_codec("pixel_patches", None), PatchCodec)
    assert depth["patches"] > 0.6 and depth["pixel"] < 0.45, depth
    with pytest.raises(ValueError, match="divide"):
        PatchCodec(detail=3)
