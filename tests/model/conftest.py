"""Fixtures of the model tests: a tiny clips table of real media (tests/fixtures/tiny_clips.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.tiny_clips import build_clips


@pytest.fixture(scope="module", autouse=True)
def _torch_on_one_thread(one_cpu_thread):
    """Every model test module runs torch on one thread (tests/conftest.py says why)."""
    yield


@pytest.fixture(scope="session")
def clips_out(tmp_path_factory) -> Path:
    """OUT with a clips table of real media (see the module docstring)."""
    return build_clips(tmp_path_factory.mktemp("clips_out"))


@pytest.fixture(scope="module")
def wav2vec2_folder(tmp_path_factory) -> Path:
    """A tiny random wav2vec2 saved in the transformers format, as a user's --audio-encoder folder."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    root = tmp_path_factory.mktemp("w2v") / "wav2vec2"
    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    Wav2Vec2Model(config).save_pretrained(root)
    return root
