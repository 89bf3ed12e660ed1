"""Per-video-frame features the sync measure correlates: the mouth's shape and motion, the voice's
band energies and onsets.

Both sides are sampled once per video frame, so a lag between them is a whole number of frames.
Audio frame i is a 64 ms window centred on video frame i's time: the picture is an instant, the
window is as short as band energies of speech allow.
"""

from __future__ import annotations

import numpy as np

SR = 16000
N_FFT = 1024
N_BANDS = 8
F_LO, F_HI = 80.0, 7000.0
BLOCK = 4096  # video frames whose windows are transformed together


def _mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def mel_filters(n_bands: int = N_BANDS, n_fft: int = N_FFT, sr: int = SR) -> np.ndarray:
    """(n_bands, n_fft // 2 + 1) triangular filters evenly spaced on the mel scale."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    edges = np.linspace(_mel(np.array(F_LO)), _mel(np.array(F_HI)), n_bands + 2)
    hz = 700.0 * (10 ** (edges / 2595.0) - 1.0)
    fb = np.zeros((n_bands, len(freqs)))
    for b in range(n_bands):
        lo, mid, hi = hz[b], hz[b + 1], hz[b + 2]
        fb[b] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    return fb


def _power(wav: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(len(centres), N_FFT // 2 + 1) power spectra of Hann windows centred on these samples (zeros
    outside the waveform)."""
    idx = centres[:, None] + np.arange(-N_FFT // 2, N_FFT // 2)[None, :]
    ok = (idx >= 0) & (idx < len(wav))
    frames = np.where(ok, wav[np.clip(idx, 0, max(len(wav) - 1, 0))] if len(wav) else 0.0, 0.0)
    return np.abs(np.fft.rfft(frames * np.hanning(N_FFT), axis=1)) ** 2


def audio_features(wav: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(len(times), N_BANDS + 2): log mel-band energies, log loudness, and spectral flux (how much the
    spectrum rose since the previous frame: onsets of syllables), one row per video frame time."""
    wav = np.asarray(wav, np.float32)
    if len(times) == 0:
        return np.zeros((0, N_BANDS + 2), np.float32)
    centres = np.round(np.asarray(times, float) * SR).astype(int)
    # A block of frames at a time: an hour's windows at once would take gigabytes.
    power = np.concatenate([_power(wav, centres[i:i + BLOCK]) for i in range(0, len(centres), BLOCK)])
    # Floors 30 dB under each band's mean: digital silence (padding, muted stretches) would otherwise
    # sit far below any speech and dominate every correlation it enters.
    band_power, total = power @ mel_filters().T, power.sum(1)
    bands = np.log(band_power + 1e-3 * band_power.mean(0) + 1e-12)
    loud = np.log(total + 1e-3 * total.mean() + 1e-12)
    rise = np.clip(np.diff(bands, axis=0, prepend=bands[:1]), 0, None).sum(1)
    return np.column_stack([bands, loud, rise]).astype(np.float32)


def visual_features(track: dict) -> np.ndarray | None:
    """(len(frames), D) per frame of a track: mouth shape (stages.faces.landmarks.MOUTH_SHAPE), how fast
    the lip gap and jaw change, and mouth-region motion; only the mouth opening for tracks written
    before those columns existed. None when the track has no mouth measure."""
    shape = track.get("mouth_shape")
    if shape is not None and len(shape):
        x = np.asarray(shape, np.float64)
        speed = np.abs(np.diff(x[:, [0, 2, 4]], axis=0, prepend=x[:1, [0, 2, 4]]))
        cols = [x, speed]
        if track.get("mouth_motion") is not None:
            cols.append(np.asarray(track["mouth_motion"], np.float64)[:, None])
        return np.column_stack(cols)
    if track.get("mouth_open") is not None:
        m = np.asarray(track["mouth_open"], np.float64)
        return np.column_stack([m, np.abs(np.diff(m, prepend=m[:1]))])
    return None
