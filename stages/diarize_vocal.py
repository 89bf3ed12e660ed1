"""Vocal type of a stretch of audio: speech, singing, music without voice, or silence.

Singing holds notes: its voiced stretches are long and its pitch is steady within them, while
speech glides through short voiced syllables. Pitch and voicing come from a normalised
autocorrelation at 8 kHz (a few milliseconds per second of audio; pyin is ~100x slower).
Whether a stretch has a voice at all is the VAD's call: voice -> speech or singing, loud
non-voice -> music, quiet -> silence. The source's category only shifts the thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SR = 16000
PITCH_SR = 8000
FRAME, HOP = 320, 160  # 40 ms frames, 20 ms hop at 8 kHz
FMIN, FMAX = 70.0, 1000.0


@dataclass
class VoicingStats:
    voiced_frac: float
    run_median_s: float  # median length of voiced stretches
    steady_frac: float  # voiced frame pairs whose pitch moves less than 30 cents in 20 ms


def pitch_track(wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(f0_hz, voiced) per 20 ms frame from the normalised autocorrelation peak."""
    from scipy.signal import resample_poly

    x = resample_poly(wav.astype(np.float64), PITCH_SR, SR)
    if len(x) < FRAME:
        return np.zeros(0), np.zeros(0, bool)
    n = 1 + (len(x) - FRAME) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME)[::HOP][:n]  # (n, FRAME)
    frames = frames - frames.mean(1, keepdims=True)
    spec = np.fft.rfft(frames * np.hanning(FRAME), 2 * FRAME)
    ac = np.fft.irfft(np.abs(spec) ** 2)[:, :FRAME]  # (n, FRAME) autocorrelation by lag
    ac = ac / np.maximum(ac[:, :1], 1e-12)
    lo, hi = int(PITCH_SR / FMAX), int(PITCH_SR / FMIN)
    lag = lo + ac[:, lo:hi].argmax(1)
    peak = ac[np.arange(n), lag]
    rms = np.sqrt((frames ** 2).mean(1))
    loud = rms > max(1e-3, 0.05 * np.percentile(rms, 95))
    return PITCH_SR / lag, (peak > 0.45) & loud


def voicing_stats(wav: np.ndarray) -> VoicingStats:
    f0, voiced = pitch_track(wav)
    if not voiced.any():
        return VoicingStats(0.0, 0.0, 0.0)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], voiced.astype(int), [0]])))
    runs = (edges[1::2] - edges[::2]) * HOP / PITCH_SR
    cents = 1200 * np.log2(f0 / 100.0)
    both = voiced[1:] & voiced[:-1]
    steady = float((np.abs(np.diff(cents))[both] < 30).mean()) if both.any() else 0.0
    return VoicingStats(float(voiced.mean()), float(np.median(runs)), steady)


def is_silent(wav: np.ndarray, silence_dbfs: float) -> bool:
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) if len(wav) else 0.0
    return 20 * np.log10(rms + 1e-12) < silence_dbfs


class VocalTyper:
    """speech / singing for voiced stretches; music / silence for the rest."""

    def __init__(self, min_run_s: float = 0.3, min_steady: float = 0.6, silence_dbfs: float = -50.0):
        self.min_run_s, self.min_steady, self.silence_dbfs = min_run_s, min_steady, silence_dbfs

    def voice(self, wav: np.ndarray, category: str | None = None) -> str:
        stats = voicing_stats(wav)
        relax = 0.75 if category == "singing" else 1.0
        singing = stats.run_median_s >= self.min_run_s * relax and stats.steady_frac >= self.min_steady * relax
        return "singing" if singing else "speech"

    def no_voice(self, wav: np.ndarray) -> str:
        return "silence" if is_silent(wav, self.silence_dbfs) else "music"
