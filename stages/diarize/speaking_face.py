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
# A face whose mouth moves at least this many times as much during one voice's turns as during the
# other voices' is that voice's; see _voice_owners (bench_active_speaker's dev pairs, both seeds: a
# face that speaks in turns and is still between them 1.9-7.7x, 13 of 14 at 2 or more; a listener
# whose mouth keeps moving 0.6-1.4x).
TURN_CONTRAST = 2.0
SYNC_COLUMNS = ("track_id", "sync_track_id", "sync_offset_frames", "sync_confidence", "sync_peak",
                "sync_null_mean", "sync_null_std", "sync_null_windows", "sync_pooled")


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


def _record(seg: dict, track_id: str | None, res: SyncResult | None, pooled: bool = False,
            measured: str | None = None) -> None:
    """The sync columns of one segment: track_id is the face that speaks it (or None), measured the
    face res describes (its speaker, or the best face when nobody took the segment)."""
    seg.update(dict.fromkeys(SYNC_COLUMNS))
    seg["sync_pooled"] = pooled if res is not None else None
    if res is not None:
        seg.update(track_id=track_id, sync_track_id=measured or track_id, sync_offset_frames=res.offset_frames,
                   sync_confidence=res.confidence, sync_peak=res.peak, sync_null_mean=res.null_mean, sync_null_std=res.null_std,
                   sync_null_windows=res.n_null)


def _to_grid(timeline: Timeline, frames: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A variable-rate track's frames as slots of a grid at the nominal rate (slot k at k / fps), where
    a lag of k slots is always k / fps seconds; a dropped frame leaves its slot empty, of two frames
    in one slot the first stays. A lag counted in source frames would mean a different time at each
    frame (r2_v06: steps of 1/30 s and 2/30 s)."""
    slots = np.round(np.asarray(timeline.time_of(frames), np.float64) * timeline.fps).astype(int)
    slots, first = np.unique(slots, return_index=True)
    return slots, v[first]


def mouth_activity(visual: np.ndarray | None) -> np.ndarray | None:
    """Per frame of a track, how much its mouth moved since the frame before, from its
    visual_features: the summed change of the lip gaps and the jaw drop over face height (the speed
    columns); None without a mouth measure."""
    if visual is None:
        return None
    return visual[:, 6:9].sum(1) if visual.shape[1] >= 9 else visual[:, 1]


def _voice_owners(faces: list, turns: dict[str, list[tuple[int, int]]],
                  min_frames: int = 25) -> dict[str, tuple[str, set[str]]]:
    """speaker -> (the face whose mouth is that voice's, the faces barred from it), by how much each
    mouth moves in the speaker's turns against the other speakers' turns: the owner's moves
    TURN_CONTRAST times as much or more, the barred faces' less. A face seen for fewer than
    min_frames in either is not judged, and only faces seen beside the owner for min_frames are
    barred (a later track of the owner's own face is not). A listener whose mouth keeps moving
    (nodding, chewing, talking over) can follow the voice by chance over a few seconds; the
    speaker, whose mouth rests while the other talks, shows whose voice it is. Only with two faces
    or more, two voices or more, and one owner."""
    if len(faces) < 2 or len(turns) < 2:
        return {}
    out = {}
    for speaker, own in turns.items():
        other = [span for k, spans_k in turns.items() if k != speaker for span in spans_k]
        owners, not_owners = [], set()
        for track_id, frames, act in ((f[0], f[1], f[4]) for f in faces if f[4] is not None):
            inside = np.zeros(len(frames), bool)
            for a, b in own:
                inside |= (frames >= a) & (frames < b)
            outside = np.zeros(len(frames), bool)
            for a, b in other:
                outside |= (frames >= a) & (frames < b)
            if inside.sum() < min_frames or outside.sum() < min_frames:
                continue
            moved_in, moved_out = np.nanmean(act[inside]), np.nanmean(act[outside])
            if not (np.isfinite(moved_in) and np.isfinite(moved_out)):
                continue
            if moved_in >= TURN_CONTRAST * max(moved_out, 1e-9):
                owners.append(track_id)
            else:
                not_owners.add(track_id)
        if len(owners) == 1:
            seen = next(f[1] for f in faces if f[0] == owners[0])
            beside = {f[0] for f in faces if f[0] in not_owners and np.isin(f[1], seen).sum() >= min_frames}
            if beside:
                out[speaker] = (owners[0], beside)
    return out


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
    counted at, the audio features, and per face (track_id, frames, features, whole-track result,
    mouth_activity or None), frames on the nominal rate's grid for a variable-rate source."""
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
        raw, mesh = np.asarray(tr.get("frames") or [], int), visual_features(tr)
        v = measure.features(tr) if hasattr(measure, "features") else mesh  # SyncNet: its own crops
        act = mouth_activity(mesh)
        if v is not None and len(v) == len(raw):
            frames = raw
            if on_grid:
                frames, v = _to_grid(timeline, raw, v)
            if act is not None and len(act) == len(raw):
                act = _to_grid(timeline, raw, act)[1] if on_grid else act
            else:
                act = None
            faces.append((tr["track_id"], frames, v, measure.score(frames, v, audio, fps=fps), act))
    return {"fps": fps, "audio": audio, "faces": faces}


def assign_faces(segments: list[dict], tracks: list[dict], wav: np.ndarray, fps: float, n_frames: int,
                 measure: SyncMeasure, keep_threshold: float, timeline: Timeline | None = None,
                 contest_margin: float = 2.0, cache: dict | None = None) -> int:
    """Set the SYNC_COLUMNS and on_screen of each voiced segment, in place; returns how many segments
    a face would have taken but was barred from (_voice_owners: another face's mouth keeps that
    voice's turns; the row's evidence is then the best of the faces not barred).

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
    short to measure alone goes by the pooled measure alone. A segment's own score never takes it at
    an offset more than a frame from a surer pooled measure of the same face: a file's sound is
    muxed at one offset from its picture, so a voice the face speaks is at the face's lag, and a
    short segment's best lag far from it is noise or another voice (bench_sync --hard-audio: a
    2.5 s turn of r3_v07 under pink noise read -3 frames at 5.2 while its face pooled to 0 at 7.9,
    and its clip would have been moved by three frames). Among several, the best segment score
    wins (pooled alone ranks as 0), unless another face that would take it scores within
    contest_margin of it: then neither is known to speak it, and nobody takes it (bench_active_speaker,
    dev pairs, a still listener, set with the projection score: the listener's share of the voiced
    time 15 % with no margin, 11 % at 1, 8 % at 2; the speaking face's unchanged at 64-65 %). Most of what is left are segments that run
    across a change of voice, which go to one face whole. And a face never takes a voice whose turns
    another face's mouth moves in and rests out of while its own does not (_voice_owners): on the
    real split-screen interview (r3_v01) the guest, whose mouth moves all along, followed the anchor's
    voice at 5.4 over 8 s; the anchor's mouth moves 2.9 times as much in that voice's turns as in
    the guest's.

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
    owners = _voice_owners(faces, turns)
    by_speaker: dict[tuple[str, str], SyncResult | None] = {}
    barred_taking = 0
    for seg, (a, b) in zip(segments, spans, strict=True):
        _record(seg, None, None)
        if not tracks:
            seg["on_screen"] = "no_faces"
            continue
        visible = any(np.any((np.asarray(t.get("frames") or [], int) >= a) & (np.asarray(t.get("frames") or [], int) < b))
                      for t in tracks)
        cands = []  # (taken, rank, track id, evidence, pooled?)
        barred, stopped = owners.get(seg.get("speaker"), (None, set()))[1], 0
        for track_id, frames, v, pooled, _ in faces:
            if not np.any((frames >= a) & (frames < b)):
                continue
            res = measure.score(frames, v, audio, a, b, fps)
            if pooled is None or pooled.confidence < keep_threshold:
                pooled = _surer(pooled, _speaker_pool(by_speaker, turns, seg, track_id, frames, v, audio, fps, measure))
            trusted = pooled is not None and pooled.confidence >= keep_threshold
            if res is None:  # too short to measure alone
                if pooled is not None:
                    cand = (trusted, 0.0 if trusted else pooled.confidence, track_id, pooled, True)
                else:
                    continue
            else:
                agree = trusted and res.confidence > 0 and abs(res.offset_frames - pooled.offset_frames) <= 1
                # A face's own voice comes at its own lag: a segment whose best lag is more than a frame
                # from a surer pool of the same face is noise or another voice, not the face at that lag.
                overruled = trusted and not agree and pooled.confidence >= res.confidence
                ok = (res.confidence >= keep_threshold and not overruled) or agree
                surer = not ok and pooled is not None and pooled.confidence > res.confidence
                evidence = pooled if agree or surer else res
                cand = (ok, res.confidence if ok else evidence.confidence, track_id, evidence, evidence is pooled)
            if track_id in barred:  # another face's mouth keeps this voice's turns: not a candidate
                stopped += cand[0]
                continue
            cands.append(cand)
        barred_taking += stopped > 0
        best = max(cands, key=lambda c: c[:2], default=(False, -np.inf, None, None, False))
        taken, rank, track_id, evidence, by_pool = best
        if taken and any(c[0] and c[2] != track_id and c[1] >= rank - contest_margin for c in cands):
            taken = False  # two faces follow the voice about as well: neither is known to speak it
        _record(seg, track_id if taken else None, evidence, pooled=by_pool, measured=track_id)
        seg["on_screen"] = "synced" if taken else ("voice_over" if visible else "off_screen")
    return barred_taking
