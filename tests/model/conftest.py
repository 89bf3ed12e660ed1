"""Fixtures of the model tests: a tiny clips table of real media (pipeline/tiny_clips.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.tiny_clips import build_clips


@pytest.fixture(scope="module", autouse=True)
def _torch_on_one_thread(one_cpu_thread):
    """Every model test module runs torch on one thread (tests/conftest.py says why)."""
    yield


@pytest.fixture(scope="session")
def clips_out(tmp_path_factory) -> Path:
    """OUT with a clips table of real media (see the module docstring)."""
    return build_clips(tmp_path_factory.mktemp("clips_out"))
