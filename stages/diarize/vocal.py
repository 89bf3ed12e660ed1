"""Vocal type of a stretch of audio: speech, singing, music without voice, or silence.

Singing holds notes: a sung voice stays on a pitch (vibrato aside) for a quarter second and more,
again and again, while speech glides through its syllables and seldom holds one. Its timbre also
changes more slowly than speech's (vowels are long, consonants short). A voice is never perfectly
steady: the pitch of a held note wobbles by several cents (vibrato, jitter), where a piano or a
synthesiser does not. The features, from pyin's pitch track and MFCCs, all at 20 ms:

- held_share: share of voiced time inside held notes (the smoothed pitch moving less than 3
  semitones a second for >= 0.25 s on a 180 ms line, or >= 0.2 s on a 140 ms one; or half a
  second of regular vibrato, below); notes: how many; notes_per_s per second of audio. Two lines
  because a moving average cancels a vibrato only near the rate whose cycle it spans: 180 ms is a
  5.5 Hz cycle, 140 ms a 7 Hz one; the shorter line also keeps the shorter notes of a faster song.
  A wide or slow vibrato (an opera singer's +-100 cents at 4.5 Hz, +-130 at 6.5 Hz) survives both
  lines, so a note is also found where half a second of pitch is a steady line plus one sinusoid
  of 4.5-8 Hz and +-40-160 cents that explains at least 85 % of what the line leaves
  (`vibrato_held`): speech's pitch does not swing that regularly for two cycles and more.
- mfcc_flux: median frame-to-frame change of MFCC 1..12 (speech ~4-6, singing ~2-4).
- jitter_cents: median wobble of the pitch around its smoothed line inside held notes.

Voiced stretches (the VAD heard a voice): singing when it holds notes and its timbre moves slowly.
Stretches the VAD left out are silence when quiet, else singing when they hold notes that wobble
like a voice (silero hears no voice under a band or a piano) and are about as loud as the source's
loud parts, else music. A voice the VAD missed is the performance, not something far under it: a
hum or a music bed in the pauses of a news report (r3_v12: a steady 112 Hz tone 25 dB under the
speech, held "notes" with jitter from its low level) is not singing. Rap holds few notes and
changes timbre like speech: it is called speech unless it is sung.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass

import numpy as np

SR = 16000
HOP = 320  # 20 ms
DT = HOP / SR
FMIN, FMAX = 70.0, 1000.0
MAX_NOTE_SLOPE = 300.0  # cents per second of the smoothed pitch inside a held note
# (frames of the moving average the pitch is smoothed by, shortest held note on that line in seconds)
NOTE_LINES = ((9, 0.25), (7, 0.2))
MIN_NOTE_S = min(s for _, s in NOTE_LINES)
# A vibrato note: VIBRATO_FRAMES of pitch (0.5 s, 2.25 cycles at the slowest rate) that are a line
# (moving less than MAX_NOTE_SLOPE) plus a sinusoid of one of VIBRATO_HZ, of +-VIBRATO_CENTS, which
# explains at least VIBRATO_FIT of the variance around the line. Singers' vibrato runs 4.5-8 Hz and
# opera's reaches +-1.5 semitones (a narrower one is held on NOTE_LINES already). The floor of the
# rate is where no copy of the real speech clips (benchmarks/bench_vocal.py --variants) holds such a
# note: one clip's pitch accents swing at 4 Hz, +-118 cents, for half a second.
VIBRATO_FRAMES = 25
VIBRATO_HZ = np.arange(4.5, 8.01, 0.25)
VIBRATO_CENTS = (40.0, 160.0)
VIBRATO_FIT = 0.85
MUSIC_DILUTION = 0.6
# How far under the source's loud parts (the 90th percentile of 32 ms frame levels: loud_db) a stretch
# the VAD heard no voice in may stay and still be a missed voice. A tenth of the amplitude; the sung
# stretches of the real songs and their copies (benchmarks/bench_vocal.py --variants) sit within 4 dB.
MAX_UNDER_DB = 20.0
LOUD_FRAME = 512


@dataclass
class VocalFeatures:
    seconds: float
    voiced_share: float
    held_share: float
    notes: int
    notes_per_s: float
    mfcc_flux: float
    jitter_cents: float

    def evidence(self, rule: str, by: str = "segment", **more: float) -> str:
        """The row's record of how it was typed: the rule that fired, over what audio, the values (and
        `more` measures the rule read, e.g. under_source_db)."""
        values = {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}
        return json.dumps({"rule": rule, "by": by, **values, **more}, sort_keys=True)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def held_notes(cents: np.ndarray, voiced: np.ndarray) -> list[tuple[int, int, float]]:
    """(first, end, jitter) of each held note: voiced frames whose smoothed pitch barely moves on any
    of NOTE_LINES, or that lie in a vibrato note (vibrato_held); a note found more than one way is
    one note. jitter is the pitch's wobble around the 180 ms line, about one vibrato cycle."""
    from scipy.ndimage import median_filter, uniform_filter1d

    notes = []
    for a, b in _runs(voiced):
        if (b - a) * DT < MIN_NOTE_S:
            continue
        c = median_filter(cents[a:b], 3, mode="nearest")  # drop single-frame octave slips
        held = np.zeros(b - a, bool)
        for frames, min_s in NOTE_LINES:
            line = uniform_filter1d(c, frames, mode="nearest")
            slope = np.abs(np.gradient(line)) / DT
            for x, y in _runs(slope < MAX_NOTE_SLOPE):
                if (y - x) * DT >= min_s:
                    held[x:y] = True
        held |= vibrato_held(c)
        wobble = c - uniform_filter1d(c, NOTE_LINES[0][0], mode="nearest")
        notes.extend((a + x, a + y, float(wobble[x:y].std())) for x, y in _runs(held))
    return notes


@functools.cache
def _vibrato_bases() -> list[tuple[np.ndarray, np.ndarray]]:
    """(design, pseudo-inverse) over one window: the line, then the line plus a sinusoid at each of
    VIBRATO_HZ. The same for every window, so built once."""
    t = np.arange(VIBRATO_FRAMES) * DT
    line = np.stack([np.ones(VIBRATO_FRAMES), t - t.mean()], 1)
    designs = [line] + [np.concatenate([line, np.stack([np.sin(2 * np.pi * hz * t), np.cos(2 * np.pi * hz * t)], 1)], 1)
                        for hz in VIBRATO_HZ]
    return [(x, np.linalg.pinv(x)) for x in designs]


def vibrato_held(cents: np.ndarray) -> np.ndarray:
    """Frames of one voiced run's pitch (cents) inside a vibrato note (see VIBRATO_FRAMES): every
    window of VIBRATO_FRAMES, two frames apart (and the last), is fitted with a line, and with a line
    plus a sinusoid at each of VIBRATO_HZ; a window is a note when the line is flat enough and the
    best sinusoid explains enough of what the line leaves and is as wide as a singer's."""
    n, w = len(cents), VIBRATO_FRAMES
    held = np.zeros(n, bool)
    if n < w:
        return held
    starts = np.unique(np.r_[np.arange(0, n - w + 1, 2), n - w])  # the last window reaches the run's end
    y = np.lib.stride_tricks.sliding_window_view(cents.astype(np.float64), w)[starts]  # (windows, w)
    (line, line_pinv), *waves = _vibrato_bases()
    coef = y @ line_pinv.T
    left = ((y - coef @ line.T) ** 2).sum(1)  # variance around the line
    best, extent = np.zeros(len(starts)), np.zeros(len(starts))
    for x, x_pinv in waves:
        b = y @ x_pinv.T
        fit = 1 - ((y - b @ x.T) ** 2).sum(1) / np.maximum(left, 1e-9)
        better = fit > best
        best[better], extent[better] = fit[better], np.hypot(b[better, 2], b[better, 3])
    ok = ((np.abs(coef[:, 1]) < MAX_NOTE_SLOPE) & (best >= VIBRATO_FIT)
          & (extent >= VIBRATO_CENTS[0]) & (extent <= VIBRATO_CENTS[1]))
    for i in starts[ok]:
        held[i:i + w] = True
    return held


def warm_compile_caches() -> None:
    """Run the features once on a short voiced tone, so numba compiles librosa's gufuncs (pyin's
    peak picking) and writes its on-disk cache from this one process. Processes that start with the
    cache filled only read it; two that compile the same gufunc at once can leave mismatched cache
    files that crash every later call with a segfault (numba issue #10128, seen here in CI)."""
    t = np.arange(2 * SR) / SR
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.random.default_rng(0).standard_normal(len(t))
    vocal_features(tone.astype(np.float32))


def vocal_features(wav: np.ndarray) -> VocalFeatures:
    """The features above over one stretch of 16 kHz mono audio."""
    import librosa

    seconds = len(wav) / SR
    if len(wav) < 2048:
        return VocalFeatures(seconds, 0.0, 0.0, 0, 0.0, 0.0, 0.0)
    y = wav.astype(np.float32)
    f0, voiced, _ = librosa.pyin(y, fmin=FMIN, fmax=FMAX, sr=SR, frame_length=1024, hop_length=HOP)
    cents = 1200 * np.log2(np.nan_to_num(f0, nan=FMIN) / 55.0)
    notes = held_notes(cents, voiced)
    held = sum(e - s for s, e, _ in notes)
    mfcc = librosa.feature.mfcc(y=y, sr=SR, n_mfcc=13, hop_length=HOP)[1:]  # c0 is loudness: left out
    flux = float(np.median(np.abs(np.diff(mfcc, axis=1)).mean(0))) if mfcc.shape[1] > 1 else 0.0
    return VocalFeatures(
        seconds=seconds, voiced_share=float(voiced.mean()), held_share=held / max(int(voiced.sum()), 1),
        notes=len(notes), notes_per_s=len(notes) / seconds, mfcc_flux=flux,
        jitter_cents=float(np.median([j for _, _, j in notes])) if notes else 0.0)


def loud_db(wav: np.ndarray) -> float:
    """Level of a stretch's loud parts: the 90th percentile of its 32 ms frames' RMS, in dBFS."""
    x = np.asarray(wav, np.float64)
    n = max(len(x) // LOUD_FRAME, 1)
    frames = np.resize(x, n * LOUD_FRAME).reshape(n, -1) if len(x) else np.zeros((1, 1))
    return float(np.percentile(20 * np.log10(np.sqrt((frames ** 2).mean(1)) + 1e-12), 90))


def is_silent(wav: np.ndarray, silence_dbfs: float) -> bool:
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) if len(wav) else 0.0
    return 20 * np.log10(rms + 1e-12) < silence_dbfs


class VocalTyper:
    """speech / singing for voiced stretches; singing / music / silence for the rest, with the evidence."""

    def __init__(self, min_held_share: float = 0.2, min_notes_per_s: float = 0.3, max_flux: float = 4.3,
                 min_jitter_cents: float = 3.0, silence_dbfs: float = -50.0):
        """
        min_held_share, min_notes_per_s: a sung stretch spends at least this share of its voiced time
            in held notes, and holds at least this many notes a second.
        max_flux: a voiced stretch whose timbre changes faster than this (MFCC units per 20 ms) is speech.
        min_jitter_cents: held notes in music steadier than this are an instrument's, not a voice's.
        silence_dbfs: below this RMS level a stretch without voice is silence.
        """
        self.min_held_share, self.min_notes_per_s = min_held_share, min_notes_per_s
        self.max_flux, self.min_jitter_cents, self.silence_dbfs = max_flux, min_jitter_cents, silence_dbfs

    def holds_notes(self, f: VocalFeatures) -> bool:
        return f.notes >= 2 and f.held_share >= self.min_held_share and f.notes_per_s >= self.min_notes_per_s

    def voice_from(self, f: VocalFeatures) -> tuple[str, str]:
        """(vocal type, rule) for a stretch the VAD heard a voice in."""
        if not self.holds_notes(f):
            return "speech", "few held notes"
        if f.mfcc_flux >= self.max_flux:
            return "speech", "held notes, but timbre changes like speech"
        return "singing", "held notes, slow timbre"

    def no_voice_from(self, wav: np.ndarray, f: VocalFeatures | None = None,
                      under_db: float | None = None) -> tuple[str, str]:
        """(vocal type, rule) for a stretch the VAD heard no voice in; under_db: how far its loud parts
        sit under the whole source's (loud_db), None when not known."""
        if is_silent(wav, self.silence_dbfs):
            return "silence", f"rms below {self.silence_dbfs} dBFS"
        return self.no_voice_of(f or vocal_features(wav), under_db)

    def no_voice_of(self, f: VocalFeatures, under_db: float | None = None) -> tuple[str, str]:
        """no_voice_from for a stretch that is not silent, from its features."""
        if under_db is not None and under_db > MAX_UNDER_DB:
            return "music", f"more than {MAX_UNDER_DB:.0f} dB under the source's loud parts: not its voice"
        # Under a band pyin also follows the instruments, so the voice's notes are a smaller share of
        # the pitched time: the share asked for is lowered by MUSIC_DILUTION.
        held = f.held_share >= MUSIC_DILUTION * self.min_held_share
        if f.notes >= 2 and held and f.notes_per_s >= self.min_notes_per_s and f.jitter_cents >= self.min_jitter_cents:
            return "singing", "held notes that wobble like a voice, under music"
        return "music", "no voice-like held notes"

    def voice(self, wav: np.ndarray) -> str:
        return self.voice_from(vocal_features(wav))[0]

    def no_voice(self, wav: np.ndarray) -> str:
        return self.no_voice_from(wav)[0]
