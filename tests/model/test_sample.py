"""The sampler end to end on a tiny checkpoint: a real portrait, 2 s of real speech, a watermarked mp4.

The checkpoint is a few stage-2 steps on the conftest clips (f=12 frames, n=4 motion frames),
sampled with 3 DDIM steps. Window boundaries count as continuous when the mean absolute frame
difference across them is at most BOUNDARY_FACTOR x the mean between neighbours inside a window.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from model import watermark
from model.checkpoint import load_checkpoint
from model.sample import SampleOptions, main, parse_options
from model.train import main as train_main
from pipeline.demo_corpus import packaged_media

FPS, SECONDS, BOUNDARY_FACTOR = 25.0, 2.0, 3.0


@pytest.fixture(scope="module")
def checkpoint(clips_out, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("sample_ckpt") / "s2"
    train_main(["--data", str(clips_out), "--stage", "2", "--out", str(run), "--steps", "3", "--quiet"])
    return run


@pytest.fixture(scope="module")
def sampled(checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("sample")
    wav, sr = sf.read(str(packaged_media()["sample_wav"]), dtype="float32")
    speech = tmp / "speech.wav"
    sf.write(speech, wav[: int(SECONDS * sr)], sr)
    portrait = packaged_media()["hanks"]
    out = tmp / "video.mp4"
    assert main(["--checkpoint", str(checkpoint), "--image", str(portrait), "--audio", str(speech),
                 "--out", str(out), "--fps", str(FPS), "--steps", "3", "--device", "cpu"]) == 0
    return out, checkpoint


def read_video(path: Path) -> tuple[np.ndarray, float]:
    """All frames (N, H, W, 3) and the decoded audio's duration in seconds."""
    frames = np.stack([f for f in iter_video(path)])
    audio, rate = read_audio(path)
    return frames, len(audio) / rate


def iter_video(path: Path):
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            yield f.to_ndarray(format="rgb24")


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """The mp4's audio stream decoded to mono float32, and its rate."""
    with av.open(str(path)) as c:
        assert c.streams.audio, "no audio stream"
        rate = c.streams.audio[0].rate
        chunks = [f.to_ndarray().reshape(f.samples, -1).mean(axis=1) if f.format.is_packed
                  else f.to_ndarray().mean(axis=0) for f in c.decode(audio=0)]
    return np.concatenate(chunks).astype(np.float32), rate


def test_frames_and_audio_match_the_speech(sampled):
    frames, audio_seconds = read_video(sampled[0])
    assert len(frames) == round(SECONDS * FPS)
    assert abs(audio_seconds - SECONDS) <= 0.1, audio_seconds


def test_audio_stream_is_the_input_speech(sampled):
    """The muxed AAC track is the input speech: aligned within a few ms and correlated sample by sample."""
    out, _ = sampled
    audio, rate = read_audio(out)
    speech, sr = sf.read(str(out.parent / "speech.wav"), dtype="float32")
    assert rate == sr
    n = min(len(audio), len(speech))
    lags = range(-200, 201)  # the encoder's priming delay is a few ms at most once trimmed
    corr = [np.corrcoef(audio[max(0, k):n + min(0, k)], speech[max(0, -k):n - max(0, k)])[0, 1] for k in lags]
    best = int(np.argmax(corr))
    print(f"audio vs input: correlation {corr[best]:.3f} at lag {lags[best]} samples")
    assert corr[best] > 0.95 and abs(lags[best]) <= 0.005 * rate


def test_window_boundaries_are_continuous(sampled):
    frames, _ = read_video(sampled[0])
    _, config, _ = load_checkpoint(sampled[1])
    diffs = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))  # diffs[i]: frame i -> i+1
    boundary = np.zeros(len(diffs), bool)
    boundary[config.num_frames - 1 :: config.num_frames] = True  # last frame of a window -> first of the next
    assert boundary.any()
    across, within = diffs[boundary].mean(), diffs[~boundary].mean()
    print(f"mean |frame diff|: across windows {across:.2f}, within {within:.2f}, ratio {across / within:.2f}")
    assert across <= BOUNDARY_FACTOR * within


def test_watermark_and_provenance(sampled):
    out, checkpoint = sampled
    record = json.loads(Path(f"{out}.json").read_text())
    _, _, meta = load_checkpoint(checkpoint)
    assert record["checkpoint_sha256"] == meta["model_sha256"]
    assert record["manifest_hash"] == meta["manifest_hash"]
    found = watermark.detect_video(str(out))
    assert found.present, found
    assert found.checkpoint_id == f"{watermark.checkpoint_id(meta['model_sha256']):08x}"
    with av.open(str(out)) as c:
        assert json.loads(c.metadata["comment"])["checkpoint_sha256"] == meta["model_sha256"]


def test_options_built_directly_are_what_the_command_line_parses():
    """`emo build` passes a build file's numbers as YAML gives them (fps: 25): recorded as the command line's 25.0."""
    argv = ["--checkpoint", "c", "--image", "i.png", "--audio", "a.wav", "--out", "v.mp4", "--fps", "25", "--speed", "1"]
    direct = SampleOptions(checkpoint=Path("c"), image=Path("i.png"), audio="a.wav", out="v.mp4", fps=25, speed=1)
    assert parse_options(argv) == direct
    assert json.dumps(vars(direct), sort_keys=True) == json.dumps(vars(parse_options(argv)), sort_keys=True)
    assert isinstance(direct.fps, float) and direct.image == "i.png"


@pytest.mark.parametrize("name", ["ddim", "dpm++", "euler", "unipc"])
def test_every_scheduler_recovers_the_data_under_a_perfect_denoiser(name):
    """With the exact noise prediction for a one-point dataset (x0 known), each scheduler offered by
    --scheduler must land on x0: this checks the loop's scaling, timesteps and noise level."""
    import torch

    from model.sample import denoise, make_scheduler
    from model.train_loop import NOISE_SCHEDULE

    scheduler = make_scheduler(name, NOISE_SCHEDULE)
    alphas = scheduler.alphas_cumprod
    x0 = torch.linspace(-1, 1, 2 * 12 * 4 * 8 * 8).reshape(2, 12, 4, 8, 8)

    def eps(x, t):  # x is the scaled model input, i.e. sqrt(a) x0 + sqrt(1 - a) eps at timestep t
        a = alphas[int(round(float(t)))]
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    out = denoise(scheduler, 20, tuple(x0.shape), eps, torch.Generator().manual_seed(0), torch.device("cpu"),
                  torch.float32)
    assert (out - x0).abs().max() < 0.05, (name, float((out - x0).abs().max()))


def test_speech_in_any_format_and_bad_inputs_are_named(checkpoint, tmp_path, capsys):
    from scipy.signal import resample_poly

    from pipeline.cli import main as cli_main

    wav, sr = sf.read(str(packaged_media()["sample_wav"]), dtype="float32")
    one_s = wav[int(11 * sr): int(12 * sr)]
    stereo = tmp_path / "cd.wav"  # 44.1 kHz stereo, as a user's recording comes
    sf.write(stereo, np.stack([resample_poly(one_s, 441, 160)] * 2, axis=1), 44100)
    portrait = packaged_media()["hanks"]
    out = tmp_path / "a.mp4"
    base = ["--checkpoint", str(checkpoint), "--image", str(portrait), "--fps", str(FPS), "--steps", "1",
            "--device", "cpu"]
    assert main([*base, "--audio", str(stereo), "--out", str(out)]) == 0
    frames, audio_seconds = read_video(out)
    assert len(frames) == FPS and abs(audio_seconds - 1.0) <= 0.1
    # A video's sound track is speech too: here, the one just written.
    assert main([*base, "--audio", str(out), "--out", str(tmp_path / "b.mp4")]) == 0
    assert abs(len(list(iter_video(tmp_path / "b.mp4"))) - FPS) <= 1
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    for bad, says in ((["--audio", str(text)], "audio_undecodable"), (["--audio", str(portrait)], "no audio stream"),
                      (["--audio", str(tmp_path / "missing.wav")], "no such audio file")):
        capsys.readouterr()
        assert cli_main(["sample", *base, *bad, "--out", str(tmp_path / "x.mp4")]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    assert cli_main(["sample", *base[:2], "--image", str(text), "--audio", str(stereo), "--out", str(out)]) == 2
    assert "not an image that can be read" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_colour_match_takes_out_each_frames_cast_and_keeps_what_moves():
    """Frames that each carry their own colour cast (what a small model sampled in few steps gives)
    come out with the reference's per-channel mean; a square moving across them is still there."""
    from model.colour import ColourMatch

    rng = np.random.default_rng(0)
    ref = rng.integers(60, 200, (64, 64, 3)).astype(np.uint8)
    frames = np.repeat(ref[None], 8, 0).astype(np.int16)
    for i in range(8):
        frames[i, 20:30, 4 + 6 * i:14 + 6 * i] = 250  # the moving part
        frames[i] += rng.integers(-25, 25, 3).astype(np.int16)  # this frame's cast
    frames = np.clip(frames, 0, 255).astype(np.uint8)
    out = ColourMatch(ref)(frames)
    means = out.reshape(8, -1, 3).mean(1)
    assert np.abs(means - ref.reshape(-1, 3).mean(0)).max() < 1.0
    assert np.abs(frames.reshape(8, -1, 3).mean(1) - ref.reshape(-1, 3).mean(0)).max() > 5  # there was a cast
    for i in range(8):
        square = out[i, 20:30, 4 + 6 * i:14 + 6 * i].astype(float).mean()
        assert square > out[i].astype(float).mean() + 40  # still far brighter than the frame around it
    argv = ["--checkpoint", "c", "--image", "i.png", "--audio", "a.wav", "--out", "v.mp4", "--no-colour-match"]
    assert parse_options(argv).colour_match is False and parse_options(argv[:-1]).colour_match is True


def test_a_portrait_is_framed_as_the_training_crops_and_a_too_tight_one_says_so(caplog):
    """The face gets the training crops' share of the crop where the photo has room for it (the
    astronaut); Tom Hanks' 112-px photo is mostly face, so it gives the largest square it holds and a
    warning that says why the face is larger than in training."""
    import logging

    from model.sample import crop_reference, largest_face, read_portrait
    from pipeline.demo_corpus import astronaut

    def share(crop):
        box = largest_face(crop)
        return max(box[2] - box[0], box[3] - box[1]) / crop.shape[0]

    roomy, _ = crop_reference(astronaut(), 128, 0.45)
    assert share(roomy) == pytest.approx(0.45, rel=0.15)
    assert share(crop_reference(astronaut(), 128)[0]) > 0.55  # older checkpoints: the fixed margin
    with caplog.at_level(logging.WARNING, logger="emo.sample"):
        tight, _ = crop_reference(read_portrait(packaged_media()["hanks"]), 128, 0.45)
    assert share(tight) > 0.6 and "cropped too tightly" in caplog.text


def test_the_voice_acts_on_the_portraits_lips_and_on_the_whole_frame_when_it_has_none(caplog):
    """config.audio_region "lips": the region is the mesh's outer lip contour of the crop, grown, in
    the lower middle of the face; a crop with no face gives the whole frame, with a warning."""
    import logging

    from model.sample import crop_reference, largest_face, lip_region
    from pipeline.demo_corpus import astronaut

    crop, _ = crop_reference(astronaut(), 128, 0.45)
    lips = lip_region(crop)
    face = largest_face(crop)
    ys, xs = np.nonzero(lips)
    assert lips.shape == (128, 128) and 0.005 < lips.mean() < 0.15
    assert face[0] < xs.mean() < face[2] and (face[1] + face[3]) / 2 < ys.mean() < face[3]  # below the face's middle
    with caplog.at_level(logging.WARNING, logger="emo.sample"):
        blank = lip_region(np.full((128, 128, 3), 90, np.uint8))
    assert blank.all() and "no lips" in caplog.text
