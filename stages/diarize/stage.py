"""diarize: who speaks when, which visible face is speaking, and whether it is speech or singing.

One source in, its `segments` rows out: a row per speaker turn (speech or singing) and a row per
stretch of music, singing or silence between them; a row that would run across a cut is a row on
each side (split_at_cuts). Each voiced row says which face track is speaking (by audio-visual sync),
or that the voice is over the picture, off screen, or that there are no faces. Backends:
`resemblyzer` (default, offline, weights ship in packages) or `pyannote` (pretrained pipeline from a
local copy or a hub token). See stages/diarize/offline.py. A short speaker label whose every turn one
face speaks is that face's main voice (one_voice_per_face).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from stages.base import Resources, Stage, StageContext, StageError
from stages.diarize.speaking_face import assign_faces, faces_together
from stages.diarize.sync_measure import SCORES, SyncMeasure
from stages.diarize.vocal import VocalTyper, is_silent, loud_db, vocal_features, warm_compile_caches
from stages.media.clock import source_timeline
from stages.media.probe import read_audio

log = logging.getLogger(__name__)
SR = 16000
BACKENDS = ("resemblyzer", "pyannote")
OWN_VOCAL_S = 6.0  # a voiced turn at least this long is typed on its own; shorter ones together


def load_audio(path: Path) -> np.ndarray:
    """16 kHz mono float32 (stages/media/probe.read_audio), its DC offset removed: a bad preamp or a careless
    mix hides all speech from silero-vad."""
    from scipy.signal import resample_poly

    wav, sr = read_audio(path)
    wav -= wav.mean() if wav.size else 0.0  # before resampling, as the VAD was tuned
    return resample_poly(wav, SR, sr).astype(np.float32) if sr != SR else wav


# A speaker label heard for less than this in all is too little for the diarizer to tell from another
# voice of the same face (resemblyzer's windows are 1.6 s): one_voice_per_face folds it. The real
# single speakers' extra labels hold 0.4-2.8 s each; the demo's dubbed faces speak two real voices of
# about 10 s each, which stay apart.
MIN_VOICE_S = 4.0


def one_voice_per_face(rows: list[dict]) -> int:
    """Short speaker labels that one face speaks every turn of are that face's main voice: a label with
    less than MIN_VOICE_S of speech in all, every turn taken by the same face at offsets within a frame
    of that face's longest label's, is relabelled to the longest. Returns how many labels were folded.

    On a few seconds of one person the diarizer's eigengap finds speakers in what is one voice's
    phonetic variety (the real single-speaker videos: Christie's 7 s in three "speakers", a GRID
    sentence in four). The face's mouth following each of them at one offset says whose they are. A
    label with any turn no face takes, or one long enough to be told apart, keeps its own name.
    """
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        if r["speaker"] and r["vocal_type"] in ("speech", "singing"):
            by_label.setdefault(r["speaker"], []).append(r)
    by_face: dict[str, list[str]] = {}
    for label, turns in by_label.items():
        faces = {t["track_id"] if t["on_screen"] == "synced" else None for t in turns}
        if len(faces) == 1 and None not in faces:
            by_face.setdefault(faces.pop(), []).append(label)
    seconds = {label: sum(t["end_s"] - t["start_s"] for t in turns) for label, turns in by_label.items()}
    folded = 0
    for labels in by_face.values():
        main = max(labels, key=lambda label: seconds[label])
        for label in labels:
            offsets = [t["sync_offset_frames"] for lab in (main, label) for t in by_label[lab]]
            if label == main or seconds[label] >= MIN_VOICE_S or max(offsets) - min(offsets) > 1:
                continue
            for t in by_label[label]:
                t["speaker"] = main
            folded += 1
    return folded


# A turn is not split where that would leave a piece shorter than this on either side: about a
# syllable, the distance the VAD's turn edges land from the words (a cut 0.1 s after a turn's end is
# the diarizer's edge, not words heard over the next shot).
MIN_PIECE_S = 0.25


def shot_cuts(shots: list[dict]) -> list[float]:
    """Clock times where the picture changes shot: between two shots, the middle of what lies between
    them (a dissolve's frames, or nothing at a hard cut)."""
    shots = sorted(shots, key=lambda s: s["start_s"])
    return [(a["end_s"] + b["start_s"]) / 2 for a, b in pairwise(shots)]


def split_at_cuts(turns: list, cuts: list[float], min_piece_s: float = MIN_PIECE_S) -> list:
    """Each speaker turn cut where the shot changes, so each piece is judged against the faces of its
    own shot: a news anchor who keeps talking across a change of camera speaks both pieces, in two
    tracks; a voice that runs on over B-roll is voice-over only where the picture has no face. A turn
    goes to one face whole (speaking_face.assign_faces): unsplit, the shot on the far side of a cut
    would lose its part of it. The turns are segment rows, typed whole first, so each piece keeps the
    whole turn's or stretch's type and evidence (a sung line cut into shots holds its notes whole)."""
    out = []
    for t in turns:
        start, end = t["start_s"], t["end_s"]
        for c in cuts:
            if start + min_piece_s <= c <= end - min_piece_s:
                out.append({**t, "start_s": round(start, 3), "end_s": round(c, 3)})
                start = c
        out.append({**t, "start_s": round(start, 3)})
    return out


class DiarizeStage(Stage):
    name = "diarize"
    reads = ("sources",)
    uses = ("tracks", "timeline", "shots")  # which visible face speaks; without tracks, nobody on screen
    writes = ("segments",)
    uses_model = True
    revision = 1  # 1: rows split at shot cuts; sync_track_id; a surer pool of the face overrules a segment's lag
    # 2: the offline diarizer finds no more voices than the speech has d-vector windows (offline.most_voices)
    #    and a source's sync null reads at most 400 windows (SyncMeasure.max_null_windows: over ~2 minutes)
    resources = Resources(num_cpus=1.0, memory_mb=2048)

    def __init__(
        self,
        backend: str = "resemblyzer",
        num_speakers: int | None = None,
        max_speakers: int = 8,
        gap_ratio: float = 2.5,
        vad_threshold: float = 0.5,
        pyannote_pipeline: str = "pyannote/speaker-diarization-3.1",
        hf_token: str | None = None,
        sync_max_offset: int = 15,
        sync_keep_threshold: float = 4.0,
        sync_score: str = "best",
        sync_backend: str = "offline",
        sync_weights: str | None = None,
        min_gap_s: float = 1.0,
        merge_gap_s: float = 0.3,
        whisper_checkpoint: str | None = None,
        whisper_language: str | None = None,
    ):
        """
        backend: "resemblyzer" (offline default) or "pyannote" (needs pyannote_pipeline files or a token).
        num_speakers: fix the number of speakers per source; None estimates it.
        max_speakers: upper bound when estimating.
        gap_ratio: resemblyzer: smallest Laplacian eigenvalue ratio that counts as a speaker boundary;
            below it the source has one speaker.
        vad_threshold: silero-vad speech probability threshold.
        pyannote_pipeline: local config.yaml (or its folder), or a hub name used with a token.
        hf_token: hub token for pyannote; falls back to $HF_TOKEN. Kept out of the config hash.
        sync_max_offset: audio-visual offsets searched, in video frames either way.
        sync_keep_threshold: sync confidence (null standard deviations above the same source's null,
            stages/diarize/sync_measure.py) at or above which a face is taken as the speaker.
        sync_score: the offline measure's score per lag: "projection" (the mouth and the voice along the
            direction fitted on the dev files, stages/diarize/sync_projection.py), "singular" (the top
            singular value of their cross-correlation, no fitted weights), or "best" (both, each against
            its own null, the surer one kept: the projection is surer on short turns of real faces, the
            singular score on mouths unlike the dev files', e.g. the demo's animated jaw).
        sync_backend: "offline" (stages/diarize/sync_measure.py, no weights) or "syncnet" (stages/diarize/syncnet.py, the
            published SyncNet weights at sync_weights; setup fails with syncnet_unavailable without them).
        min_gap_s: shortest non-speech stretch that gets its own music/silence row.
        merge_gap_s: same-speaker turns closer than this are one segment.
        whisper_checkpoint: local whisper .pt for language and transcript; None skips them.
        whisper_language: force the transcript language instead of detecting it.
        """
        if backend not in BACKENDS:
            raise ValueError(f"unknown diarize backend {backend!r}; known: {BACKENDS}")
        self.backend = backend
        self.num_speakers = num_speakers
        self.max_speakers = max_speakers
        self.gap_ratio = gap_ratio
        self.vad_threshold = vad_threshold
        self.pyannote_pipeline = pyannote_pipeline
        self._hf_token = hf_token
        self.sync_max_offset = sync_max_offset
        self.sync_keep_threshold = sync_keep_threshold
        if sync_score not in SCORES:
            raise ValueError(f"unknown sync score {sync_score!r}; known: {SCORES}")
        self.sync_score = sync_score
        if sync_backend not in ("offline", "syncnet"):
            raise ValueError(f"unknown sync backend {sync_backend!r}; known: ('offline', 'syncnet')")
        self.sync_backend, self.sync_weights, self._syncnet = sync_backend, sync_weights, None
        self.min_gap_s = min_gap_s
        self.merge_gap_s = merge_gap_s
        self.whisper_checkpoint = whisper_checkpoint
        self.whisper_language = whisper_language
        self._diarizer = self._whisper = None

    def prepare(self) -> None:
        warm_compile_caches()  # workers then read numba's cache instead of racing to write it

    def setup(self) -> None:
        if self.sync_backend == "syncnet":
            from stages.diarize.syncnet import SyncNetUnavailable, load_syncnet

            try:
                self._syncnet = load_syncnet(self.sync_weights)
            except SyncNetUnavailable as e:
                raise StageError("syncnet_unavailable", str(e)) from None
        if self.backend == "pyannote":
            from stages.diarize.pyannote_backend import PyannoteDiarizer, PyannoteUnavailable

            try:
                self._diarizer = PyannoteDiarizer(self.pyannote_pipeline, self._hf_token, self.num_speakers,
                                                  self.max_speakers).load()
            except PyannoteUnavailable as e:
                raise StageError("pyannote_unavailable", str(e)) from None
        else:
            from stages.diarize.offline import ResemblyzerDiarizer

            self._diarizer = ResemblyzerDiarizer(max_speakers=self.max_speakers, num_speakers=self.num_speakers,
                                                 gap_ratio=self.gap_ratio, vad_threshold=self.vad_threshold).load()
        if self.whisper_checkpoint:
            from stages.diarize.whisper_backend import WhisperTranscriber

            if not Path(self.whisper_checkpoint).is_file():
                raise StageError("whisper_missing", f"whisper_checkpoint {self.whisper_checkpoint} is not a file")
            self._whisper = WhisperTranscriber(self.whisper_checkpoint, self.whisper_language).load()

    # -- one source -----------------------------------------------------------------------------------

    def process(self, source: dict[str, Any], ctx: StageContext) -> list[dict[str, Any]]:
        if self._diarizer is None:
            self.setup()
        sid = source["source_id"]
        if not source.get("has_audio") or not source.get("audio_path"):
            ctx.count("no_audio")
            return [self._row(sid, 0, 0.0, float(source.get("duration_s") or 0.0), None, "silence")]
        path = ctx.out / source["audio_path"]
        if not path.is_file():
            raise StageError("audio_missing", f"{source['audio_path']} is not under {ctx.out}")
        wav = load_audio(path)
        duration = len(wav) / SR
        tracks = ctx.upstream("tracks", sid).to_pylist()
        match = self._face_matcher(source, tracks, wav, ctx)
        cuts = shot_cuts(ctx.upstream("shots", sid).to_pylist())
        turns, regions = self._turns(wav, tracks, match, ctx, cuts) if len(wav) >= SR // 2 else ([], [])
        turns = self._merge(turns)
        voiced = self._voiced_rows(sid, wav, turns, cuts)
        if len(voiced) > len(turns):
            ctx.count("turns_split_at_cuts", len(voiced) - len(turns))
        whole = self._gap_rows(sid, wav, regions, duration)
        gaps = split_at_cuts(whole, cuts)  # a song the VAD missed is a voice too: each shot's face sings its own piece
        if len(gaps) > len(whole):
            ctx.count("gaps_split_at_cuts", len(gaps) - len(whole))
        rows = sorted(voiced + gaps, key=lambda r: r["start_s"])
        for i, row in enumerate(rows):
            row["segment_id"] = f"{sid}-g{i:04d}"
        sung = [r for r in gaps if r["vocal_type"] == "singing"]  # a voice the VAD missed: whose face sings it?
        if (voiced or sung) and (barred := match(voiced + sung)):
            ctx.count("voice_owner_barred", barred)  # another face's mouth keeps that voice (speaking_face)
        if folded := one_voice_per_face(voiced):
            ctx.count("speakers_joined_by_face", folded)
        self._count(rows, ctx)
        return rows

    def _turns(self, wav: np.ndarray, tracks: list[dict], match, ctx: StageContext,
               cuts: list[float]) -> tuple[list, list]:
        """Speaker turns and speech regions. With two or more faces on screen together and a voice count
        from the audio alone that differs from theirs, the source is also split into that many voices,
        and that split is kept when more of the visible faces are heard speaking under it (then more
        voiced seconds taken; counted as `speakers_from_faces`). A few seconds of two voices give the
        eigengap little to go on (bench_active_speaker: split screens called one voice, or three),
        and a segment that holds both voices goes to one face whole. A silent listener adds a face
        but no voice: splitting one voice in two lets no second face speak, and the audio's own
        count stays."""
        if self.num_speakers or not hasattr(self._diarizer, "label"):
            return self._diarizer(wav)
        voices = self._diarizer.embed(wav)
        if voices is None:
            return [], []
        turns = self._diarizer.label(voices)
        together = faces_together(tracks)
        if together >= 2 and len({t.speaker for t in turns}) != together:
            alt = self._diarizer.label(voices, together)
            if self._heard_faces(alt, match, cuts) > self._heard_faces(turns, match, cuts):
                ctx.count("speakers_from_faces")
                turns = alt
        return turns, voices.regions

    def _heard_faces(self, turns: list, match, cuts: list[float]) -> tuple[int, float]:
        """(how many visible faces take a segment, voiced seconds they take) when the source is split
        into these turns, cut at the shot changes as the segments will be."""
        rows = split_at_cuts([{"start_s": t.start_s, "end_s": t.end_s, "speaker": f"spk{t.speaker}"}
                              for t in self._merge([replace(t) for t in turns])], cuts)
        match(rows)
        synced = [r for r in rows if r["on_screen"] == "synced"]
        return len({r["track_id"] for r in synced}), sum(r["end_s"] - r["start_s"] for r in synced)

    def _row(self, sid: str, i: int, start: float, end: float, speaker: int | None, vocal: str) -> dict[str, Any]:
        return {"source_id": sid, "segment_id": f"{sid}-g{i:04d}", "start_s": round(start, 3), "end_s": round(end, 3),
                "speaker": None if speaker is None else f"{sid}-spk{speaker}", "track_id": None,
                "sync_track_id": None, "sync_offset_frames": None, "sync_confidence": None, "sync_peak": None,
                "sync_null_mean": None, "sync_null_std": None, "sync_null_windows": None, "sync_pooled": None, "on_screen": None, "vocal_type": vocal,
                "vocal_evidence": None, "language": None, "text": None,
                "backend": self._diarizer.backend if self._diarizer else self.backend}

    def _merge(self, turns: list) -> list:
        merged = []
        for t in turns:
            if merged and merged[-1].speaker == t.speaker and t.start_s - merged[-1].end_s < self.merge_gap_s:
                merged[-1].end_s = max(merged[-1].end_s, t.end_s)
            else:
                merged.append(t)
        return merged

    def _voiced_rows(self, sid: str, wav: np.ndarray, turns: list, cuts: list[float]) -> list[dict]:
        """A row per turn, typed speech or singing over the whole turn, then split at the cuts (each
        piece keeps the whole turn's type and evidence: a sung line cut into shots holds its notes
        whole); words, when transcribed, are each piece's own."""
        typer, rows = VocalTyper(), []
        pooled = self._pooled_vocal(wav, turns, typer)
        for t in turns:
            row = self._row(sid, 0, t.start_s, t.end_s, t.speaker, "speech")
            if t.end_s - t.start_s >= OWN_VOCAL_S or pooled is None:
                f = vocal_features(wav[int(t.start_s * SR):int(t.end_s * SR)])
                row["vocal_type"], rule = typer.voice_from(f)
                row["vocal_evidence"] = f.evidence(rule)
            else:
                row["vocal_type"], row["vocal_evidence"] = pooled
            rows.append(row)
        rows = split_at_cuts(rows, cuts)
        if self._whisper is not None:
            for row in rows:
                row["language"], row["text"] = self._whisper(wav[int(row["start_s"] * SR):int(row["end_s"] * SR)])
        return rows

    @staticmethod
    def _pooled_vocal(wav: np.ndarray, turns: list, typer: VocalTyper) -> tuple[str, str] | None:
        """Type and evidence over all the source's short turns together: a few seconds hold too few notes
        to tell, and whoever sings in a source mostly sings throughout."""
        short = [wav[int(t.start_s * SR):int(t.end_s * SR)] for t in turns if t.end_s - t.start_s < OWN_VOCAL_S]
        if not short:
            return None
        f = vocal_features(np.concatenate(short))
        vocal, rule = typer.voice_from(f)
        return vocal, f.evidence(rule, by="source's short turns")

    def _gap_rows(self, sid: str, wav: np.ndarray, regions: list[tuple], duration: float) -> list[dict]:
        """Music, singing or silence rows for the stretches without speech that last at least min_gap_s
        (the VAD hears no voice in most singing over a band or a piano)."""
        typer, rows, t = VocalTyper(), [], 0.0
        source_db = loud_db(wav)
        for s, e in [*regions, (duration, duration)]:
            if s - t >= self.min_gap_s:
                clip = wav[int(t * SR):int(s * SR)]
                under = round(source_db - loud_db(clip), 1)
                f = None if is_silent(clip, typer.silence_dbfs) else vocal_features(clip)
                vocal, rule = typer.no_voice_from(clip, f, under)
                row = self._row(sid, 0, t, s, None, vocal)
                row["vocal_evidence"] = (f.evidence(rule, under_source_db=under) if f
                                         else json.dumps({"rule": rule, "by": "segment"}))
                rows.append(row)
            t = max(t, e)
        return rows

    def _face_matcher(self, source: dict[str, Any], tracks: list[dict], wav: np.ndarray, ctx: StageContext):
        """rows -> int: sets each voiced row's speaking face and sync columns (speaking_face.assign_faces),
        returns the segments a face was barred from.
        The source's timeline, SyncNet crops, audio features and whole-track measures are read on the
        first call only."""
        measure = SyncMeasure(self.sync_max_offset, score=self.sync_score)
        if not tracks:  # nothing to match: no timeline needed (a demux pass, without the shot stage)
            return lambda rows: assign_faces(rows, tracks, wav, 25.0, 0, measure, self.sync_keep_threshold)
        ready: dict[str, Any] = {}

        def match(rows: list[dict]) -> int:
            if not ready:
                ready["tl"], ready["measure"] = source_timeline(source, ctx), measure
                if self._syncnet is not None:
                    from stages.diarize.syncnet import SyncNetMeasure, track_crops

                    crops = track_crops(ctx.out / source["media_path"], int(source.get("rotation") or 0), tracks)
                    ready["measure"] = SyncNetMeasure(self._syncnet, crops, self.sync_max_offset)
            tl = ready["tl"]
            return assign_faces(rows, tracks, wav, tl.fps, len(tl), ready["measure"], self.sync_keep_threshold, tl,
                                cache=ready.setdefault("faces", {}))

        return match

    def _count(self, rows: list[dict], ctx: StageContext) -> None:
        voiced = [r for r in rows if r["vocal_type"] in ("speech", "singing")]
        if not voiced:
            ctx.count("silent" if all(r["vocal_type"] == "silence" for r in rows) else "no_speech")
        ctx.count("speakers", len({r["speaker"] for r in voiced}))
        for r in rows:
            ctx.count(f"vocal_{r['vocal_type']}")
            if r["on_screen"]:
                ctx.count(f"on_screen_{r['on_screen']}")
