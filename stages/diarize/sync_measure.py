"""SyncMeasure: does this face's mouth follow this voice, at which offset, and how sure is that?

Offline, without a network: a face's per-frame mouth features (stages/diarize/sync_features.py: lip
gaps, widths, jaw, their speed, mouth-region motion) against the voice's per-frame band energies,
loudness and onsets, both sides high-passed (slow drifts in loudness or pose do not count). Two
scores per lag: "projection", the correlation of the two along one fixed direction in each, the pair
of directions in which a face and its own voice follow each other most closely on the dev files
(stages/diarize/sync_projection.py: 20 weights, benchmarks/fit_sync_projection.py); and "singular"
(no fitted weights), how strongly any combination of mouth features follows any combination of
audio features: the top singular value of their cross-correlation matrix. A few seconds of two
faces and a voice let that maximum fit chance, where one fixed direction cannot (bench_active_speaker,
dev turns of 2-5 s: the speaking face at or above 4 null standard deviations on 14 % of turns with
"singular", 27-32 % with the projection refitted without the pair's files); a mouth unlike the dev
files' (the demo's animated jaw) follows no fixed direction, and only "singular" finds it. By
default ("best") each is calibrated against its own null and the surer result is kept.
The offset is the lag of the highest score within +-max_offset frames, over the whole segment,
placed between whole frames by the parabola through its neighbours, less the mouth's lead
(visual_lead_s, 0 by default), rounded.

The score alone means little (short segments and many features correlate by chance), so it is
calibrated on the same source: the same face against the source's audio rotated far away, and
, for short sources that have few far rotations, against it played backwards: no voice there can
be in time with the face. Those give the null: peaks over the same window of lags, their
mean and spread. Each rotation's score comes from sums over its window (means, spreads, and the
mouth's products with the voice), taken for every rotation at once by FFT: gathering the windows
is quadratic in a long shot. At most max_null_windows windows are read
(benchmarks/bench_sync_null.py). The confidence is the real peak in null standard deviations above
the null mean; another person's voice, or the face's own words at the wrong time, land in the null.

Sign: offset k > 0 means the sound comes k frames after the picture (audio lags video).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.diarize import sync_projection
from stages.diarize.sync_features import audio_features

SR = 16000
SCORES = ("best", "projection", "singular")


@dataclass
class SyncResult:
    offset_frames: int
    confidence: float  # (peak - null_mean) / null_std
    peak: float  # score at the offset
    null_mean: float
    null_std: float
    n_null: int  # null windows the mean and spread come from


def _highpass(x: np.ndarray, window: int) -> np.ndarray:
    """x minus its centred moving average (per column); slow trends removed."""
    if len(x) == 0:
        return x
    if window <= 1 or len(x) <= window:
        return x - x.mean(0)
    kernel = np.ones(window) / window
    pad = np.pad(x, ((window // 2, window - 1 - window // 2), (0, 0)), mode="edge")
    trend = np.stack([np.convolve(pad[:, j], kernel, mode="valid") for j in range(x.shape[1])], 1)
    return x - trend


def _zscore(x: np.ndarray, axis: int) -> np.ndarray:
    x = x - x.mean(axis, keepdims=True)
    sd = x.std(axis, keepdims=True)
    return np.where(sd > 1e-9, x / np.where(sd > 1e-9, sd, 1.0), 0.0)


def _scores(v: np.ndarray, a: np.ndarray) -> np.ndarray:
    """v: (T, Dv) z-scored; a: (L, T, Da), one audio window per lag, each z-scored over T (_windows)
    -> (L,) top singular values of corr."""
    c = np.einsum("td,ltk->ldk", v, a) / v.shape[0]  # (L, Dv, Da) cross-correlations
    return np.linalg.svd(c, compute_uv=False)[:, 0]


def _projected_scores(v: np.ndarray, a: np.ndarray, pv: np.ndarray, pa: np.ndarray) -> np.ndarray:
    """v: (T, Dv) z-scored; a: (L, T, Da) as in _scores -> (L,) correlation of v's projection on pv
    with each audio window's projection on pa (stages/diarize/sync_projection.py)."""
    mouth = _zscore(v @ pv, 0)
    voice = _zscore(a @ pa, 1)
    return np.einsum("t,lt->l", mouth, voice) / v.shape[0]


def _rotation_sums(frames: np.ndarray, weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(n, P, Q): for every rotation r of x (n, Q), the sum over t of weights[t, p] * x[(frames[t] + r) % n, q].
    Circular cross-correlations by FFT: O(n log n) for every rotation at once, where gathering each
    rotation's window of the T frames takes O(n T) memory (a 4-minute shot: 9 GB)."""
    n = len(x)
    w = np.zeros((n, weights.shape[1]))
    np.add.at(w, frames, weights)
    return np.fft.irfft(np.conj(np.fft.rfft(w, axis=0))[:, :, None] * np.fft.rfft(x, axis=0)[:, None, :], n, axis=0)


def _window_moments(frames: np.ndarray, audio: np.ndarray, rotations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, inv), each (R, Da): every given rotation's window of the audio under `frames`, per
    column, its mean and one over its spread, 0 where the column is constant there (as _zscore
    makes it). A spread under 1e-9, or a millionth of the column's own, counts as constant: a window
    inside digital silence leaves FFT sums with a variance of about 1e-17, not 0."""
    t_len = len(frames)
    ones = np.ones((t_len, 1))
    mean = _rotation_sums(frames, ones, audio)[rotations, 0] / t_len
    var = _rotation_sums(frames, ones, audio ** 2)[rotations, 0] / t_len - mean ** 2
    floor = np.maximum(1e-18, 1e-12 * np.mean(audio ** 2, 0))
    return mean, np.where(var > floor, 1.0 / np.sqrt(np.maximum(var, floor)), 0.0)


def _rotated_scores(v: np.ndarray, frames: np.ndarray, audio: np.ndarray, rotations: np.ndarray,
                    moments: tuple[np.ndarray, np.ndarray], pv: np.ndarray | None,
                    pa: np.ndarray | None) -> np.ndarray:
    """(n,) scores of v (T, Dv, z-scored) against the audio under `frames` rotated by r, at the given
    rotations (NaN elsewhere): what _scores (pv None) or _projected_scores give for the window
    _zscore(audio[(frames + r) % n], 1), from each rotation's window sums (moments: _window_moments
    of the same rotations) instead of the windows."""
    n, t_len, d_a = len(audio), len(frames), audio.shape[1]
    mean, inv = moments
    out = np.full(n, np.nan)
    if pv is None:
        cross = _rotation_sums(frames, v, audio)[rotations] / t_len  # (R, Dv, Da)
        out[rotations] = np.linalg.svd(cross * inv[:, None, :], compute_uv=False)[:, 0]
        return out
    mouth = _zscore(v @ pv, 0)
    cross = _rotation_sums(frames, mouth[:, None], audio)[rotations, 0] / t_len  # (R, Da)
    pairs = (audio[:, :, None] * audio[:, None, :]).reshape(n, d_a * d_a)
    cov = (_rotation_sums(frames, np.ones((t_len, 1)), pairs)[rotations, 0] / t_len).reshape(-1, d_a, d_a) \
        - mean[:, :, None] * mean[:, None, :]
    w = pa[None, :] * inv  # the voice's direction on each window's standardised columns
    spread = np.sqrt(np.clip(np.einsum("rk,rkl,rl->r", w, cov, w), 0.0, None))
    out[rotations] = np.where(spread > 1e-9, (cross * w).sum(1) / np.where(spread > 1e-9, spread, 1.0), 0.0)
    return out


def _vertex(curve: np.ndarray, i: int) -> float:
    """Where between its neighbours the peak at i lies (-0.5..0.5 frames), by the parabola through the
    three; 0 at an edge. The lead the offset is corrected by is a fraction of a frame: rounding the
    lag first would move every offset by a whole frame whichever side of the half it falls."""
    if i <= 0 or i >= len(curve) - 1:
        return 0.0
    y0, y1, y2 = curve[i - 1], curve[i], curve[i + 1]
    den = y0 - 2 * y1 + y2
    return float(np.clip(0.5 * (y0 - y2) / den, -0.5, 0.5)) if den < -1e-12 else 0.0


class SyncMeasure:
    """Offset and calibrated confidence of one face track over one stretch of a source's audio."""

    def __init__(self, max_offset: int = 15, min_frames: int = 20, highpass_frames: int = 13,
                 null_gap: int = 10, min_null: int = 8, min_null_spread: float = 0.1,
                 visual_lead_s: float = 0.0, score: str = "best", max_null_windows: int = 400):
        """
        score: what is measured at each lag. "projection": the correlation of the mouth features and the
            voice's, each along the fixed direction of stages/diarize/sync_projection.py (fitted on the dev
            files); "singular": the top singular value of their whole cross-correlation matrix (no fitted
            weights; what the measure was before the projection). Tracks with only a mouth opening
            (written before the mouth-shape columns) are always scored "singular".
        max_offset: lags searched either way, in video frames.
        min_frames: fewer visible frames in the segment than this: not measured.
        highpass_frames: moving-average window removed from both sides (slow drifts).
        null_gap: null rotations start this many frames beyond the searched lags.
        min_null: fewer far-rotation windows than this (short sources): the reversed audio's are added.
        min_null_spread: least null standard deviation, as a fraction of the null mean.
        max_null_windows: most null windows read per measure (longer sources: evenly spread over it).
        visual_lead_s: how far the mouth's features lead the sound they make, subtracted from the best
            (sub-frame) lag. 0: calibrated on the dev sources whose sync is known apart from "as
            published" (GRID brbk7n, a lab recording; VoxCeleb2 Christie, from a SyncNet-filtered
            corpus): pooled lags -0.16 and +0.29 frames at 25 fps with the singular score, -0.61 and
            +0.04 with the projection. The other dev sources sat at +1.15..+2.21 frames under every
            singular feature variant (per source within 0.65 frames of each other:
            benchmarks/sync_lags.py), which says those files are late as published, not that mouths
            lead by a frame or two; the projection puts them at +0.84..+2.25. An earlier 0.04 s,
            fitted to put every dev source within a frame, moved the held-out sources (-1.94..+0.76)
            out of it.
        """
        self.max_offset, self.min_frames = max_offset, min_frames
        self.highpass_frames, self.null_gap, self.min_null = highpass_frames, null_gap, min_null
        self.min_null_spread, self.visual_lead_s = min_null_spread, visual_lead_s
        self.max_null_windows = max_null_windows
        if score not in SCORES:
            raise ValueError(f"unknown sync score {score!r}; known: {SCORES}")
        self.score_kind = score
        self._pv = np.asarray(sync_projection.VISUAL, np.float64)
        self._pa = np.asarray(sync_projection.AUDIO, np.float64)

    def _scores(self, v: np.ndarray, a: np.ndarray, kind: str) -> np.ndarray:
        """(L,) score of the mouth features v (T, Dv) against each audio window a (L, T, Da)."""
        return _projected_scores(v, a, self._pv, self._pa) if kind == "projection" else _scores(v, a)

    def audio(self, wav: np.ndarray, fps: float, n_frames: int | None = None,
              times: np.ndarray | None = None) -> np.ndarray:
        """High-passed audio features per video frame of the source (times: each frame's seconds)."""
        if times is None:
            n = n_frames if n_frames is not None else int(len(wav) / SR * fps)
            times = np.arange(n) / fps
        return _highpass(audio_features(wav, times).astype(np.float64), self.highpass_frames)

    def score(self, frames, visual: np.ndarray, audio: np.ndarray, start: int | None = None,
              end: int | None = None, fps: float = 25.0) -> SyncResult | None:
        """visual[i] (D,) belongs to source frame frames[i]; audio[f] to source frame f (SyncMeasure.audio).
        Only frames in [start, end) count. None when too few frames, or the mouth never moves. With
        score="best", the surer of the two scores' results, each against its own null."""
        frames, visual = np.asarray(frames, int), np.asarray(visual, np.float64)
        keep = np.isfinite(visual).all(1) & (frames >= 0) & (frames < len(audio))
        if start is not None:
            keep &= (frames >= start) & (frames < end)
        frames, visual = frames[keep], visual[keep]
        if len(frames) < self.min_frames or np.ptp(visual, 0).max() < 1e-9:
            return None
        v = _zscore(_highpass(visual, self.highpass_frames), 0)
        lags, real_windows = self._lag_windows(frames, audio)
        kinds = self._kinds(v, audio)
        nulls = self._nulls(v, frames, audio, kinds, far=True)
        if len(nulls[kinds[0]]) < self.min_null:  # as many windows whichever the score
            back = self._nulls(v, frames, audio[::-1], kinds, far=False)
            nulls = {kind: np.concatenate([nulls[kind], back[kind]]) for kind in kinds}
        results = [self._result(lags, self._scores(v, real_windows, kind), nulls[kind], fps) for kind in kinds]
        return max(results, key=lambda r: r.confidence)

    def _nulls(self, v: np.ndarray, frames: np.ndarray, audio: np.ndarray, kinds: tuple[str, ...],
               far: bool) -> dict[str, np.ndarray]:
        """Per score, the null peaks of v against `audio` rotated (_null_windows), scored at the
        rotations they read; the windows' moments are taken once, whichever scores read them."""
        idx = self._null_windows(len(audio), far)
        if len(idx) == 0:
            return {kind: np.zeros(0) for kind in kinds}
        rotations = np.unique(idx)
        moments = _window_moments(frames, audio, rotations)
        return {kind: _rotated_scores(v, frames, audio, rotations, moments,
                                      *((self._pv, self._pa) if kind == "projection" else (None, None)))[idx].max(1)
                for kind in kinds}

    def _kinds(self, v: np.ndarray, audio: np.ndarray) -> tuple[str, ...]:
        """The scores this measure takes: the projection only where the features are the ones it was
        fitted on (a track with a lip gap alone is scored "singular")."""
        fits = v.shape[1] == len(self._pv) and audio.shape[-1] == len(self._pa)
        if not fits or self.score_kind == "singular":
            return ("singular",)
        return ("projection", "singular") if self.score_kind == "best" else ("projection",)

    def _result(self, lags: np.ndarray, real: np.ndarray, null: np.ndarray, fps: float) -> SyncResult:
        """The offset at the real curve's peak and its confidence against the null's peaks."""
        best = int(np.argmax(real))
        offset = int(np.round(lags[best] + _vertex(real, best) - self.visual_lead_s * fps))
        if len(null) < 3:
            return SyncResult(offset, 0.0, float(real[best]), float("nan"), float("nan"), len(null))
        # A few null windows under-estimate the spread: never below a tenth of the null mean, the
        # spread long sources show.
        mu = float(null.mean())
        sd = max(float(null.std()), self.min_null_spread * mu, 1e-3)
        conf = (float(real[best]) - mu) / sd
        if best in (0, len(lags) - 1):
            # The highest score at the end of the searched lags is no peak (the curve may climb on
            # past it): never confident (bench_sync: a 3 s clip 8 frames early scored 4.1 at -15).
            conf = min(conf, 0.0)
        return SyncResult(offset, round(conf, 3), round(float(real[best]), 4), round(mu, 4), round(sd, 4), len(null))

    def raw_lag(self, frames, visual: np.ndarray, audio: np.ndarray) -> float:
        """The sub-frame lag of the highest score over all the given frames, before the lead is
        subtracted (benchmarks/sync_lags.py: a file's own lag), by the first of the measure's scores
        (the projection where it applies). Frames as in `score`, all valid."""
        v = _zscore(_highpass(np.asarray(visual, np.float64), self.highpass_frames), 0)
        lags, windows = self._lag_windows(np.asarray(frames, int), audio)
        real = self._scores(v, windows, self._kinds(v, audio)[0])
        best = int(np.argmax(real))
        return float(lags[best] + _vertex(real, best))

    def _lag_windows(self, frames: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lags, audio windows): the audio under `frames` shifted by every lag within +-max_offset
        (no audio before the start or past the end), each window standardised over its frames."""
        k = self.max_offset
        lags = np.arange(-k, k + 1)
        padded = np.pad(audio, ((k, k), (0, 0)))
        return lags, _zscore(padded[frames[None, :] + lags[:, None] + k], 1)

    def _null_windows(self, n: int, far: bool) -> np.ndarray:
        """(W, 2*max_offset+1) rotations of an n-frame source's audio, one row per null window: windows of
        the searched lags' width, half a window apart; far: only windows null_gap frames clear of the
        searched lags (the audio as it is), else all (the audio played backwards: a voice with the same
        sound, never in time). At most max_null_windows, evenly spread (a source longer than about two
        minutes at 25 fps; its null is as well sampled as a two-minute one's)."""
        k, gap = self.max_offset, self.null_gap
        step = max(1, k // 2)
        centres = np.arange(2 * k + gap, n - 2 * k - gap + 1, step) if far else np.arange(0, n, step)
        if len(centres) > self.max_null_windows:
            centres = centres[np.unique(np.linspace(0, len(centres) - 1, self.max_null_windows).round().astype(int))]
        return (centres[:, None] + np.arange(-k, k + 1)[None, :]) % n
