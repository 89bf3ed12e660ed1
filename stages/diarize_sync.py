"""Audio-visual sync without SyncNet weights: correlate a face's mouth opening with the speech envelope.

The SyncNet idea, on hand-made features: a speaking mouth opens as the voice gets louder, so the
mouth-opening signal of the face we hear correlates with the audio's loudness envelope, at the
lag where picture and sound line up. Scanning lags of +-15 frames gives the best offset; the
confidence is the correlation at that lag minus the median over all lags (as SyncNet reports
median minus minimum distance), so a wide, flat correlation curve from an unrelated voice
scores low even when its peak happens to be high.

Sign: offset k > 0 means the sound comes k frames after the picture (audio lags video).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SR = 16000


@dataclass
class SyncResult:
    offset_frames: int
    confidence: float


def speech_envelope(wav: np.ndarray, fps: float, n_frames: int | None = None) -> np.ndarray:
    """Log RMS loudness of the audio per video frame (frame i covers [i/fps, (i+1)/fps))."""
    n = n_frames if n_frames is not None else int(len(wav) / SR * fps)
    edges = (np.arange(n + 1) * SR / fps).astype(int)
    sq = np.concatenate([[0.0], np.cumsum(wav.astype(np.float64) ** 2)])
    lo, hi = np.clip(edges[:-1], 0, len(wav)), np.clip(edges[1:], 0, len(wav))
    rms = np.sqrt((sq[hi] - sq[lo]) / np.maximum(hi - lo, 1))
    return np.log(rms + 1e-4).astype(np.float32)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


class SyncScorer:
    """Best audio-video offset and a confidence for one face track over one stretch of frames."""

    def __init__(self, max_offset: int = 15, min_frames: int = 12):
        self.max_offset = max_offset
        self.min_frames = min_frames

    def score(self, frames: np.ndarray, mouth: np.ndarray, envelope: np.ndarray,
              start: int | None = None, end: int | None = None) -> SyncResult | None:
        """Correlate mouth[i] (at source frame frames[i]) with envelope[frame + k] for |k| <= max_offset.

        Only frames in [start, end) are used; None when too few frames overlap or the mouth never moves.
        """
        frames, mouth = np.asarray(frames, int), np.asarray(mouth, float)
        keep = np.isfinite(mouth)
        if start is not None:
            keep &= (frames >= start) & (frames < end)
        frames, mouth = frames[keep], mouth[keep]
        if len(frames) < self.min_frames or np.ptp(mouth) < 1e-6:
            return None
        corrs = {}
        for k in range(-self.max_offset, self.max_offset + 1):
            idx = frames + k
            ok = (idx >= 0) & (idx < len(envelope))
            if ok.sum() >= self.min_frames:
                corrs[k] = _pearson(mouth[ok], envelope[idx[ok]])
        if not corrs:
            return None
        best = max(corrs, key=corrs.get)
        confidence = corrs[best] - float(np.median(list(corrs.values())))
        return SyncResult(best, round(confidence, 4))


def assign_faces(segments: list[dict], tracks: list[dict], envelope: np.ndarray, fps: float,
                 scorer: SyncScorer, keep_threshold: float) -> None:
    """Set track_id / sync_offset_frames / sync_confidence / on_screen on each segment, in place.

    on_screen: synced (a face's mouth follows the voice), voice_over (faces are visible during the
    segment but none is in sync), off_screen (the source has faces, none during this segment),
    no_faces (the source has no face tracks).
    """
    for seg in segments:
        seg.update(track_id=None, sync_offset_frames=None, sync_confidence=None)
        if not tracks:
            seg["on_screen"] = "no_faces"
            continue
        a, b = int(round(seg["start_s"] * fps)), int(round(seg["end_s"] * fps))
        best_track, best = None, None
        visible = False
        for tr in tracks:
            if tr["frames"] is None or tr["mouth_open"] is None:
                continue
            res = scorer.score(tr["frames"], tr["mouth_open"], envelope, a, b)
            visible |= bool(np.any((np.asarray(tr["frames"]) >= a) & (np.asarray(tr["frames"]) < b)))
            if res is not None and (best is None or res.confidence > best.confidence):
                best_track, best = tr["track_id"], res
        if best is not None:
            seg["sync_offset_frames"], seg["sync_confidence"] = best.offset_frames, best.confidence
        if best is not None and best.confidence >= keep_threshold:
            seg["track_id"], seg["on_screen"] = best_track, "synced"
        else:
            seg["on_screen"] = "voice_over" if visible else "off_screen"
