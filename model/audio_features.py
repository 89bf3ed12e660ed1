"""Audio features: per-frame features of 16 kHz speech and the ±m frame window around each frame.

A featurizer turns 16 kHz mono audio into features (n_frames, L, D) aligned to the video frames:
`Wav2Vec2Featurizer` takes the last L hidden layers of a wav2vec2 model (transformers, from a
local path), as EMO does; `MelFeaturizer` is the tiny/offline fallback with the same interface
(log-mel and its delta as two "layers"), so the tiny model trains where no wav2vec2 is at hand.
Each frame then sees its m=2 neighbours on each side (`audio_windows`); model/audio_attention.py
turns those windows into the tokens the backbone attends to.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.curation_tools import read_audio

SAMPLE_RATE = 16_000


def load_wav(path: str | Path) -> np.ndarray:
    """A 16 kHz mono wav as float32 samples (stages/media/probe.read_audio); another rate is refused,
    not resampled: the clips table stores 16 kHz, and anything else means a wrong file."""
    wav, sr = read_audio(Path(path))
    if sr != SAMPLE_RATE:
        raise ValueError(f"{path}: {sr} Hz, expected {SAMPLE_RATE} (the clips table stores 16 kHz mono)")
    return wav


def _to_frames(feats: torch.Tensor, n_frames: int) -> torch.Tensor:
    # (T, L, D) at the encoder's rate -> (n_frames, L, D) at the video's, linearly resampled
    t, layers, dim = feats.shape
    x = feats.reshape(t, layers * dim).T[None]  # (T, L, D) -> (1, L*D, T)
    x = F.interpolate(x, size=n_frames, mode="linear", align_corners=False)
    return x[0].T.reshape(n_frames, layers, dim)  # (1, L*D, n) -> (n, L, D)


class MelFeaturizer:
    """Offline fallback: per-clip normalised log-mel and its delta, as two layers of `n_mels`."""

    num_layers = 2

    def __init__(self, n_mels: int = 32):
        import torchaudio

        self.dim = n_mels
        self.cache_key = mel_cache_key(n_mels)
        self._mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=n_mels)
        self._deltas = torchaudio.functional.compute_deltas

    @torch.no_grad()
    def __call__(self, wav: np.ndarray, n_frames: int) -> torch.Tensor:
        mel = torch.log(self._mel(torch.from_numpy(wav).float()) + 1e-6)  # (D, T) at 100 Hz
        mel = (mel - mel.mean()) / (mel.std() + 1e-5)
        feats = torch.stack([mel, self._deltas(mel)], dim=0).permute(2, 0, 1)  # (2, D, T) -> (T, 2, D)
        return _to_frames(feats, n_frames)


class Wav2Vec2Featurizer:
    """The last `num_layers` hidden states of a wav2vec2 model saved in transformers' format."""

    def __init__(self, path: str | Path, num_layers: int, device: str | torch.device = "cpu"):
        from transformers import Wav2Vec2Model

        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(
                f"no wav2vec2 model at {path}: download one in transformers format (e.g. "
                "facebook/wav2vec2-base-960h) and pass its folder to --audio-encoder"
            )
        self.model = Wav2Vec2Model.from_pretrained(path).eval().to(device)
        self.device = device
        total = self.model.config.num_hidden_layers + 1  # + the feature projection's output
        if num_layers > total:
            raise ValueError(f"{path} has {total} hidden states; asked for the last {num_layers}")
        self.num_layers, self.dim = num_layers, self.model.config.hidden_size
        self.cache_key = wav2vec2_cache_key(path, num_layers)

    @torch.no_grad()
    def __call__(self, wav: np.ndarray, n_frames: int) -> torch.Tensor:
        # Zero mean, unit variance: what Wav2Vec2FeatureExtractor(do_normalize=True) does.
        x = torch.from_numpy((wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)).float()[None].to(self.device)
        states = self.model(x, output_hidden_states=True).hidden_states  # each (1, T, D) at 50 Hz
        feats = torch.stack(states[-self.num_layers :], dim=2)[0]  # -> (1, T, L, D) -> (T, L, D)
        return _to_frames(feats.float().cpu(), n_frames)


def mel_cache_key(n_mels: int) -> str:
    return f"mel{n_mels}"


def wav2vec2_cache_key(path: str | Path, num_layers: int) -> str:
    """Names the features of this wav2vec2 folder and layer count, from its files alone (no model load)."""
    ident = (Path(path) / "config.json").read_bytes() + str(num_layers).encode()
    for weights in sorted(Path(path).glob("*.safetensors")):
        ident += f"{weights.name}:{weights.stat().st_size}".encode()
    return "w2v2-" + hashlib.sha256(ident).hexdigest()[:12]


def featurizer_cache_key(config) -> str:
    """The cache folder name of a config's audio features, without building the featurizer.

    A DataLoader worker reads cached features under this key and loads wav2vec2 (about 1 GB) only
    on a miss.
    """
    check_featurizer(config)
    if config.audio_encoder:
        return wav2vec2_cache_key(config.audio_encoder, config.audio_feature_layers)
    return mel_cache_key(config.audio_feature_dim)


# The mel stand-in: two layers (log-mel and its delta) of at most this many bands (400-point FFT).
MEL_LAYERS, MEL_MAX_BANDS = 2, 128


def check_featurizer(config) -> None:
    """A ValueError that says what to pass when no featurizer gives the config's feature shape."""
    if config.audio_encoder:
        if not (Path(config.audio_encoder) / "config.json").is_file():
            raise FileNotFoundError(
                f"no wav2vec2 model at {config.audio_encoder}: download one in transformers format (e.g. "
                "facebook/wav2vec2-base-960h) and pass its folder to --audio-encoder")
        return
    if config.audio_feature_layers != MEL_LAYERS or config.audio_feature_dim > MEL_MAX_BANDS:
        raise ValueError(
            f"the {config.name} model expects {config.audio_feature_layers}x{config.audio_feature_dim} audio "
            f"features (wav2vec2's hidden states): pass --audio-encoder WAV2VEC2_FOLDER (transformers format, "
            f"e.g. facebook/wav2vec2-base-960h); or, for the offline mel stand-in, a --config with "
            f"audio_feature_layers: {MEL_LAYERS} and audio_feature_dim: {MEL_MAX_BANDS} (or fewer bands)")


def build_featurizer(config, device: str | torch.device = "cpu"):
    """The featurizer a config names; its (layers, dim) must match the config's."""
    check_featurizer(config)
    if config.audio_encoder:
        feat = Wav2Vec2Featurizer(config.audio_encoder, config.audio_feature_layers, device)
    else:
        feat = MelFeaturizer(config.audio_feature_dim)
    if (feat.num_layers, feat.dim) != (config.audio_feature_layers, config.audio_feature_dim):
        raise ValueError(
            f"featurizer gives {feat.num_layers}x{feat.dim} features; config expects "
            f"{config.audio_feature_layers}x{config.audio_feature_dim}"
        )
    return feat


def audio_windows(features: torch.Tensor, context: int) -> torch.Tensor:
    """(T, L, D) per-frame features -> (T, 2m+1, L*D): each frame with m neighbours each side.

    Edges repeat the first/last frame, so every frame has a full window.
    """
    t = features.shape[0]
    flat = features.flatten(1)  # (T, L, D) -> (T, L*D)
    index = torch.arange(t)[:, None] + torch.arange(-context, context + 1)[None]  # (T, 2m+1)
    return flat[index.clamp(0, t - 1)]  # (T, 2m+1, L*D)
