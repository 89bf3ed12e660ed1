"""Which visible face is speaking each voiced segment, by audio-visual sync (stages/diarize/sync_measure.py).

Each voiced segment goes to the face whose mouth follows it with a calibrated confidence at or
above the keep threshold, and the best such face when several do; to none when none does (a
silent listener under someone else's voice never gets it). `speech_envelope` stays for callers
that want a loudness curve.

Sign: offset k > 0 means the sound comes k frames after the picture (audio lags video).
"""

from __future__ import annotations

import numpy as np

from stages.diarize.sync_features import visual_features
from stages.diarize.sync_measure import SyncMeasure, SyncResult
from stages.media.clock import Timeline

SR = 16000
SYNC_COLUMNS = ("track_id", "sync_offset_frames", "sync_confidence", "sync_peak", "sync_null_mean",
                "sync_null_std", "sync_null_windows", "sync_pooled")


def speech_envelope(wav: np.ndarray, fps: float, n_frames: int | None = None) -> np.ndarray:
    """Log RMS loudness of the audio per video frame (frame i covers [i/fps, (i+1)/fps))."""
    n = n_frames if n_frames is not None else int(len(wav) / SR * fps)
    edges = (np.arange(n + 1) * SR / fps).astype(int)
    sq = np.concatenate([[0.0], np.cumsum(wav.astype(np.float64) ** 2)])
    lo, hi = np.clip(edges[:-1], 0, len(wav)), np.clip(edges[1:], 0, len(wav))
    rms = np.sqrt((sq[hi] - sq[lo]) / np.maximum(hi - lo, 1))
    return np.log(rms + 1e-4).astype(np.float32)


def faces_together(tracks: list[dict], min_frames: int = 25) -> int:
    """The most face tracks seen at once on at least min_frames frames (a second at 25 fps): a face
    found beside another for a moment does not make a pair."""
    frames = [np.unique(np.asarray(t.get("frames") or [], int)) for t in tracks]
    frames = [f for f in frames if len(f)]
    if not frames:
        return 0
    counts = np.bincount(np.concatenate(frames))
    return max((k for k in range(1, int(counts.max()) + 1) if (counts >= k).sum() >= min_frames), default=0)


def _record(seg: dict, track_id: str | None, res: SyncResult | None, pooled: bool = False) -> None:
    seg.update(dict.fromkeys(SYNC_COLUMNS))
    seg["sync_pooled"] = pooled if res is not None else None
    if res is not None:
        seg.update(track_id=track_id, sync_offset_frames=res.offset_frames, sync_confidence=res.confidence,
                   sync_peak=res.peak, sync_null_mean=res.null_mean, sync_null_std=res.null_std,
                   sync_null_windows=res.n_null)


def _to_grid(timeline: Timeline, frames: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A variable-rate track's frames as slots of a grid at the nominal rate (slot k at k / fps), where
    a lag of k slots is always k / fps seconds; a dropped frame leaves its slot empty, of two frames
    in one slot the first stays. A lag counted in source frames would mean a different time at each
    frame (r2_v06: steps of 1/30 s and 2/30 s)."""
    slots = np.round(np.asarray(timeline.time_of(frames), np.float64) * timeline.fps).astype(int)
    slots, first = np.unique(slots, return_index=True)
    return slots, v[first]


def _speaker_turns(segments: list[dict], spans: list[tuple[int, int]]) -> dict[str, list[tuple[int, int]]]:
    """Frame spans of each diarized speaker's turns (segments without a speaker are nobody's)."""
    turns: dict[str, list[tuple[int, int]]] = {}
    for seg, span in zip(segments, spans, strict=True):
        if seg.get("speaker"):
            turns.setdefault(seg["speaker"], []).append(span)
    return turns


def _speaker_pool(cache: dict, turns: dict, seg: dict, track_id: str, frames: np.ndarray, v: np.ndarray,
                  audio, fps: float, measure: SyncMeasure) -> SyncResult | None:
    """The face measured over all of the segment's speaker's turns together (once per face and speaker);
    None when the speaker has one turn (the segment's own measure says it all) or none."""
    spans = turns.get(seg.get("speaker"), [])
    if len(spans) < 2:
        return None
    key = (track_id, seg["speaker"])
    if key not in cache:
        inside = np.zeros(len(frames), bool)
        for a, b in spans:
            inside |= (frames >= a) & (frames < b)
        cache[key] = measure.score(frames[inside], v[inside], audio, fps=fps) if inside.any() else None
    return cache[key]


def _surer(a: SyncResult | None, b: SyncResult | None) -> SyncResult | None:
    return max((r for r in (a, b) if r is not None), key=lambda r: r.confidence, default=None)


def _faces(tracks: list[dict], wav: np.ndarray, fps: float, n_frames: int, measure: SyncMeasure,
           timeline: Timeline | None) -> dict:
    """What assign_faces reads of the sound and the tracks whatever the segments: the rate lags are
    counted at, the audio features, and (track_id, frames, features, whole-track result) per face."""
    on_grid = timeline is not None and not timeline.constant_rate
    if timeline is not None and timeline.constant_rate:  # the source's own frame times (stages/media/clock.py)
        fps = timeline.fps
        audio = measure.audio(wav, fps, times=timeline.frame_s)
    else:  # frames i / fps apart: no timeline, or a variable-rate source on its nominal rate's grid
        if on_grid:
            fps, n_frames = timeline.fps, int(round(timeline.end_s * timeline.fps))
        audio = measure.audio(wav, fps, n_frames)
    faces = []
    for tr in tracks:
        frames, v = np.asarray(tr.get("frames") or [], int), getattr(measure, "features", visual_features)(tr)
        if v is not None and len(v) == len(frames):
            if on_grid:
                frames, v = _to_grid(timeline, frames, v)
            faces.append((tr["track_id"], frames, v, measure.score(frames, v, audio, fps=fps)))
    return {"fps": fps, "audio": audio, "faces": faces}


def assign_faces(segments: list[dict], tracks: list[dict], wav: np.ndarray, fps: float, n_frames: int,
                 measure: SyncMeasure, keep_threshold: float, timeline: Timeline | None = None,
                 contest_margin: float = 2.0, cache: dict | None = None) -> None:
    """Set the SYNC_COLUMNS and on_screen of each voiced segment, in place.

    Each face is measured over the segment, pooled over all of its track (speech and the pauses
    between: a mouth that rests when the voice does is evidence too, and a short turn alone says
    little), and, where the track's pool is below keep_threshold, pooled over all the turns of the
    segment's diarized speaker; "pooled" below is then the surer of the two. With two faces taking
    turns, half of each face's track is listening (its mouth moving to words nobody hears), which
    dilutes the track's pool; the speaker's turns hold only the voice the segment carries
    (bench_active_speaker, with the "singular" score: a split screen's right face over its speaker's
    two turns 6.8, over its track 3.4, on each turn 1.7 and 2.7, keep threshold 4).

    A face takes a segment when its mouth follows the segment's voice with a
    confidence at or above keep_threshold, or when the pooled measure is that sure and the segment's
    own best offset agrees with it within a frame and scores above its null mean; a segment too
    short to measure alone goes by the pooled measure alone. Among several, the best segment score
    wins (pooled alone ranks as 0), unless another face that would take it scores within
    contest_margin of it: then neither is known to speak it, and nobody takes it (bench_active_speaker,
    dev pairs, a still listener, set with the projection score: the listener's share of the voiced
    time 15 % with no margin, 11 % at 1, 8 % at 2; the speaking face's unchanged at 64-65 %). Most of what is left are segments that run
    across a change of voice, which go to one face whole.

    The evidence recorded is the pooled measure when it decided, when the segment agrees with it, or
    when nobody took the segment and it is surer than the segment's own: one offset over a face's
    whole track is steadier than one over a few seconds (bench_sync: the pooled lag of a shifted copy
    moves with the shift within 0.2 frames on every held-out source; single segments wander).
    sync_pooled says which it is. on_screen: synced (track_id is the face), voice_over (faces are
    visible during the segment but none is in sync; the sync columns describe the best of them,
    track_id stays null), off_screen (the source has faces, none during this segment), no_faces.

    timeline: the source's frame times (stages/media/clock.py); without one, frame i is at i / fps
    (n_frames of them). On a variable-rate source the offsets are in slots of its nominal rate
    (timeline.fps), so offset / fps is the lag in seconds on every source.

    cache: a dict the caller keeps while it matches other segmentations of the same sound against the
    same tracks and measure (stage.DiarizeStage tries two voice counts): the audio features and each
    face's whole-track measure are computed on the first call only.
    """
    cache = {} if cache is None else cache
    if not cache:
        cache.update(_faces(tracks, wav, fps, n_frames, measure, timeline))
    fps, audio, faces = cache["fps"], cache["audio"], cache["faces"]
    if timeline is not None and timeline.constant_rate:
        spans = [(timeline.index_near(s["start_s"]), timeline.index_near(s["end_s"])) for s in segments]
    else:
        spans = [(int(round(s["start_s"] * fps)), int(round(s["end_s"] * fps))) for s in segments]
    turns = _speaker_turns(segments, spans)
    by_speaker: dict[tuple[str, str], SyncResult | None] = {}
    for seg, (a, b) in zip(segments, spans, strict=True):
        _record(seg, None, None)
        if not tracks:
            seg["on_screen"] = "no_faces"
            continue
        visible = any(np.any((np.asarray(t.get("frames") or [], int) >= a) & (np.asarray(t.get("frames") or [], int) < b))
                      for t in tracks)
        cands = []  # (taken, rank, track id, evidence, pooled?)
        for track_id, frames, v, pooled in faces:
            if not np.any((frames >= a) & (frames < b)):
                continue
            res = measure.score(frames, v, audio, a, b, fps)
            if pooled is None or pooled.confidence < keep_threshold:
                pooled = _surer(pooled, _speaker_pool(by_speaker, turns, seg, track_id, frames, v, audio, fps, measure))
            trusted = pooled is not None and pooled.confidence >= keep_threshold
            if res is None:  # too short to measure alone
                if pooled is not None:
                    cands.append((trusted, 0.0 if trusted else pooled.confidence, track_id, pooled, True))
                continue
            agree = trusted and res.confidence > 0 and abs(res.offset_frames - pooled.offset_frames) <= 1
            ok = res.confidence >= keep_threshold or agree
            surer = not ok and pooled is not None and pooled.confidence > res.confidence
            evidence = pooled if agree or surer else res
            cands.append((ok, res.confidence if ok else evidence.confidence, track_id, evidence, evidence is pooled))
        best = max(cands, key=lambda c: c[:2], default=(False, -np.inf, None, None, False))
        taken, rank, track_id, evidence, by_pool = best
        if taken and any(c[0] and c[2] != track_id and c[1] >= rank - contest_margin for c in cands):
            taken = False  # two faces follow the voice about as well: neither is known to speak it
        _record(seg, track_id if taken else None, evidence, pooled=by_pool)
        seg["on_screen"] = "synced" if taken else ("voice_over" if visible else "off_screen")
