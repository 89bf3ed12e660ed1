"""quality: cut candidate clips inside shots where one face is speaking, and judge every one.

Every rule in quality.yaml is evaluated and recorded for every candidate; a candidate is kept
only when it fails none. Kept clips get their own crop mp4 and 16 kHz wav under OUT/clips/: the
crops are cut straight from the source by each track's crop window, all in one decode, so the only
video encoded is what is kept, and it is encoded once.
Near-duplicates are a corpus-level rule, judged at export (pipeline/export.py) by this stage's threshold.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml

from manifests.hashing import sha256_file
from stages.base import Resources, Stage, StageContext
from stages.media.clock import Timeline, source_timeline
from stages.media.crops import CropJob, write_crops
from stages.media.probe import CLIP_LEVEL, read_audio

DEFAULTS = yaml.safe_load((Path(__file__).with_name("quality.yaml")).read_text())

# Each rule: the measure it judges (QualityStage._measure) and how a value passes its threshold
# (quality.yaml; too_short's is min_clip_s). Evaluated in this order, every one for every candidate.
RULES: dict[str, tuple[str, str]] = {
    "face_too_small": ("face_side_px", ">="),
    "blurry": ("blur", ">="),
    "low_sync": ("sync_confidence", ">="),
    "voice_over": ("other_voice", "<="),
    "low_speech_ratio": ("speech_ratio", ">="),
    "low_resolution": ("source_height", ">="),
    "low_fps": ("source_fps", ">="),
    "extreme_yaw": ("max_abs_yaw", "<"),
    "extreme_pitch": ("max_abs_pitch", "<"),
    "jittery_head": ("head_speed_p95", "<"),
    "multiple_faces": ("other_face_ratio", "<"),
    "clipped_audio": ("clipped_fraction", "<"),
    "too_dark": ("exposure", ">="),
    "too_bright": ("exposure", "<="),
    "too_short": ("duration_s", ">="),
    "no_crop": ("face_stage_reasons", "<="),
    "av_offset": ("abs_offset_frames", "<="),
}
COMPARE = {">=": lambda v, t: v >= t, "<": lambda v, t: v < t, "<=": lambda v, t: v <= t}


class QualityStage(Stage):
    name = "quality"
    reads = ("sources", "tracks")
    uses = ("segments", "shots", "timeline")  # without segments, clips are judged on pictures alone
    writes = ("clips", "rejections")
    folders = ("clips",)  # each kept clip's crop mp4 and wav
    resources = Resources(num_cpus=1)

    def __init__(self, min_clip_s: float | None = None, max_clip_s: float | None = None,
                 rules: dict[str, float] | None = None, write_media: bool = True,
                 realign_max_frames: int | None = None, clip_fps: float | None = None, vfr_fps: float | None = None,
                 join_gap_s: float | None = None, turn_margin_s: float | None = None):
        """
        min_clip_s / max_clip_s: candidate length bounds (defaults in quality.yaml).
        rules: thresholds overriding quality.yaml, by rule name.
        write_media: write each kept clip's crop mp4 and wav (off only in dry runs).
        realign_max_frames: a clip whose own voice is off by more than the av_offset rule allows but
            at most this many frames is kept with its wav moved into step (audio_shift_frames);
            0 rejects it as av_offset instead. Default in quality.yaml.
        clip_fps: frame rate of every crop mp4; None keeps a constant-rate source's own rate (frames
            one for one). vfr_fps: the rate a variable-rate source's clips get when clip_fps is None.
            Resampled clips show, at each instant, the source frame nearest it (clips.resampled).
        join_gap_s: voiced segments this face speaks (each synced to it, offsets within a frame), no
            further apart than this, are one candidate (a clip's segment_id is the first of them).
        turn_margin_s: a candidate stops this far short of a voice this face does not speak (another
            diarized speaker's turn, synced to another face or to none) that starts or ends within this of it:
            the diarizer's turn edges land up to about half a second off, and a clip must not carry
            the other voice's first or last words. 0 turns it off.
        """
        self.min_clip_s = float(min_clip_s if min_clip_s is not None else DEFAULTS["min_clip_s"])
        self.max_clip_s = float(max_clip_s if max_clip_s is not None else DEFAULTS["max_clip_s"])
        unknown = set(rules or {}) - set(DEFAULTS["rules"])
        if unknown:
            raise ValueError(f"unknown quality rules {sorted(unknown)}; known: {sorted(DEFAULTS['rules'])}")
        self.rules = {**DEFAULTS["rules"], **(rules or {})}
        self.write_media = write_media
        self.realign_max_frames = int(realign_max_frames if realign_max_frames is not None
                                      else DEFAULTS["realign_max_frames"])
        clip_fps = clip_fps if clip_fps is not None else DEFAULTS.get("clip_fps")
        self.clip_fps = None if clip_fps is None else float(clip_fps)
        self.vfr_fps = float(vfr_fps if vfr_fps is not None else DEFAULTS["vfr_fps"])
        self.join_gap_s = float(join_gap_s if join_gap_s is not None else DEFAULTS["join_gap_s"])
        self.turn_margin_s = float(turn_margin_s if turn_margin_s is not None else DEFAULTS["turn_margin_s"])

    def process(self, source: dict[str, Any], ctx: StageContext) -> dict[str, list[dict[str, Any]]]:
        sid = source["source_id"]
        tl = source_timeline(source, ctx)
        tracks = ctx.upstream("tracks", sid).to_pylist()
        segments = ctx.upstream("segments", sid).to_pylist()
        diarized = ctx.store.has_shard("segments", sid)
        audio_path = ctx.out / source["audio_path"] if source.get("audio_path") else None
        clips, rejections = [], []
        for track in tracks:
            others = [t for t in tracks if t["shot_id"] == track["shot_id"] and t["track_id"] != track["track_id"]]
            for k, (a, b, seg) in enumerate(self._candidates(track, segments, diarized, tl)):
                cand_id = f"{track['track_id']}-c{k:02d}"
                measures = self._measure(source, audio_path, track, others, segments if diarized else None, seg, a, b, tl)
                results = self._judge(measures)
                failed = [(x["rule"], x["value"], x["threshold"]) for x in results if not x["passed"]]
                ctx.count("candidates")
                if failed:
                    for rule, value, threshold in failed:
                        ctx.count(f"rejected_{rule}")
                        rejections.append({"candidate_id": cand_id, "source_id": sid, "shot_id": track["shot_id"],
                                           "track_id": track["track_id"], "segment_id": seg and seg["segment_id"],
                                           "start_s": tl.time_of(a), "end_s": tl.time_of(b), "rule": rule, "value": value,
                                           "threshold": threshold, "rules": results})
                    continue
                ctx.count("kept")
                clips.append({**self._clip(cand_id, source, track, seg, a, b, tl, measures, ctx), "rules": results})
        picks = {c["clip_id"]: c.pop("picks") for c in clips}  # source frame of each crop frame
        if self.write_media and clips:
            self._write_media(source, audio_path, clips, picks, {t["track_id"]: t for t in tracks}, tl, ctx)
        return {"clips": clips, "rejections": rejections}

    # -- candidates ----------------------------------------------------------------------------------

    def _candidates(self, track, segments, diarized, tl: Timeline):
        """(start_frame, end_frame, segment) intervals inside the track, cut to max_clip_s pieces."""
        t0, t1 = track["start_frame"], track["end_frame"]
        spans = []
        if diarized:
            for seg in self._face_turns(segments, track["track_id"]):
                s0, s1 = self._clear_of_other_voices(seg, segments, track["track_id"])
                a, b = max(t0, tl.index_near(s0)), min(t1, tl.index_near(s1))
                if b > a:
                    spans.append((a, b, seg))
            if not spans:
                spans = [(t0, t1, None)]  # judged (and rejected) for its speech ratio
        else:
            spans = [(t0, t1, None)]
        out = []
        for a, b, seg in spans:  # equal pieces in time, each no longer than max_clip_s
            s_a, s_b = tl.time_of(a), tl.time_of(b)
            pieces = max(1, math.ceil((s_b - s_a) / self.max_clip_s - 1e-9))
            edges = [a, *(tl.index_near(t) for t in np.linspace(s_a, s_b, pieces + 1)[1:-1]), b]
            out.extend((int(x), int(y), seg) for x, y in zip(edges[:-1], edges[1:], strict=True) if y > x)
        return out

    def _face_turns(self, segments: list[dict], track_id: str) -> list[dict]:
        """The voiced segments in time order, each run of them this face speaks joined into one.

        The diarizer may give one voice's words different speakers (a GRID sentence: four words, four
        "speakers"), leaving each too short to keep; the mouth that follows every one of them, at the
        same offset, says they are one voice, this face's. Joined: each synced to this track, offsets
        within a frame of the first's, pauses of at most join_gap_s. The joined segment keeps the first's
        id and offset, and the lowest sync confidence of its parts.
        """
        voiced = sorted((s for s in segments if s["vocal_type"] in ("speech", "singing")), key=lambda s: s["start_s"])
        out: list[dict] = []
        for seg in voiced:
            prev = out[-1] if out else None
            if (prev is not None and self._speaks(prev, track_id) and self._speaks(seg, track_id)
                    and seg["start_s"] - prev["end_s"] <= self.join_gap_s
                    and abs(seg["sync_offset_frames"] - prev["sync_offset_frames"]) <= 1):
                out[-1] = {**prev, "end_s": max(prev["end_s"], seg["end_s"]),
                           "sync_confidence": min(prev["sync_confidence"], seg["sync_confidence"])}
            else:
                out.append(seg)
        return out

    def _clear_of_other_voices(self, seg: dict, segments: list[dict], track_id: str) -> tuple[float, float]:
        """(start_s, end_s) of a face turn, moved turn_margin_s away from each voice it does not speak
        that ends near its start or starts near its end. A segment of the turn's own diarized speaker
        is not another voice, synced or not."""
        start, end, m = seg["start_s"], seg["end_s"], self.turn_margin_s
        for other in segments:
            if other["vocal_type"] not in ("speech", "singing") or self._speaks(other, track_id):
                continue
            if other.get("speaker") is not None and other.get("speaker") == seg.get("speaker"):
                continue  # the diarizer hears the same voice: this face's own words, only unconfirmed
            if other["start_s"] < start and start - m < other["end_s"] <= start + m:  # ends near our start
                start = max(start, other["end_s"] + m)
            if other["end_s"] > end and end - m <= other["start_s"] < end + m:  # starts near our end
                end = min(end, other["start_s"] - m)
        return start, end

    @staticmethod
    def _speaks(seg: dict, track_id: str) -> bool:
        return (seg.get("track_id") == track_id and seg.get("sync_offset_frames") is not None
                and seg.get("sync_confidence") is not None)

    # -- measures and rules ----------------------------------------------------------------------------

    def _measure(self, source, audio_path, track, others, segments, seg, a, b, tl: Timeline) -> dict[str, float | None]:
        frames = np.asarray(track["frames"])
        sel = (frames >= a) & (frames < b)

        def arr(name):
            v = track.get(name)
            return np.asarray(v, dtype=float)[sel] if v is not None and len(v) == len(frames) else np.zeros(0)

        boxes = np.asarray(track["boxes"], dtype=float)[sel] if track.get("boxes") else np.zeros((0, 4))
        sides = np.sqrt(np.clip((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0, None)) if len(boxes) else []
        face = float(np.median(sides)) if len(sides) else float(track.get("face_size_px") or 0.0)
        other_ratio = 0.0
        for o in others:
            if o["start_frame"] < b and o["end_frame"] > a:
                other_ratio = max(other_ratio, float(o.get("face_size_px") or 0.0) / max(face, 1e-6))
        s_a, s_b = tl.time_of(a), tl.time_of(b)
        speech = None
        if segments is not None:
            covered = sum(max(0.0, min(s["end_s"], s_b) - max(s["start_s"], s_a))
                          for s in segments if s["vocal_type"] in ("speech", "singing"))
            speech = covered / max(s_b - s_a, 1e-6)
        sync = offset = other_voice = None
        if segments is not None and seg is None:
            sync = 0.0  # no voice during this face: nothing to follow
        elif segments is not None:
            # Whose voice it is (voice_over) and how well this mouth follows it (low_sync) are two rules:
            # a face can follow a voice that another face keeps (a listener nodding along), or two faces
            # about as well, and then neither takes it (stages/diarize/speaking_face.py).
            own = seg.get("track_id") == track["track_id"]
            other_voice = 0.0 if own else 1.0
            if own or seg.get("sync_track_id") == track["track_id"]:
                # Below the null is no sync at all: floored at 0, so a threshold of 0 turns the rule off.
                sync = max(float(seg["sync_confidence"] or 0.0), 0.0)
            offset = seg.get("sync_offset_frames") if own else None
        yaw, pitch, speed = arr("yaw"), arr("pitch"), arr("head_speed")
        audio = self._audio(audio_path, s_a, s_b)
        return {
            "duration_s": s_b - s_a,
            "face_side_px": face,
            "blur": track.get("blur"),
            "exposure": track.get("exposure"),
            "max_abs_yaw": float(np.abs(yaw).max()) if yaw.size else None,
            "max_abs_pitch": float(np.abs(pitch).max()) if pitch.size else None,
            "head_speed_p95": float(np.percentile(speed, 95)) if speed.size else None,
            "other_face_ratio": other_ratio,
            "sync_confidence": sync,
            "other_voice": other_voice,
            "abs_offset_frames": None if offset is None else abs(float(offset)),
            "offset_frames": offset,
            "speech_ratio": speech,
            "clipped_fraction": float(np.mean(np.abs(audio) >= CLIP_LEVEL)) if audio is not None and audio.size else None,
            "source_height": float(source.get("height") or 0),
            "source_fps": tl.fps,
            "face_stage_reasons": 1.0 if track.get("reasons") else 0.0,  # failed the face stage's cheap checks
        }

    @staticmethod
    def _audio(path: Path | None, start_s: float, end_s: float) -> np.ndarray | None:
        """The source's extracted audio between two times, or None for a source with no audio."""
        return read_audio(path, start_s, end_s)[0] if path is not None and path.exists() else None

    def _judge(self, m: dict[str, float | None]) -> list[dict[str, Any]]:
        """Every rule, evaluated: {rule, value, threshold, passed}. A value of None (not measured) passes."""
        thresholds = {**self.rules, "too_short": self.min_clip_s, "no_crop": 0.0,
                      # a larger offset within realign_max_frames is kept, its wav moved by it (_shift)
                      "av_offset": max(self.rules["av_offset"], self.realign_max_frames)}
        out = []
        for rule, (measure, passes) in RULES.items():
            v, t = m[measure], float(thresholds[rule])
            out.append({"rule": rule, "value": None if v is None else float(v), "threshold": t,
                        "passed": v is None or bool(COMPARE[passes](float(v), t))})
        return out

    # -- kept clips -----------------------------------------------------------------------------------

    def _clip(self, clip_id, source, track, seg, a, b, tl: Timeline, m, ctx: StageContext) -> dict[str, Any]:
        sid = source["source_id"]
        fps = self.clip_fps or (tl.fps if tl.constant_rate else self.vfr_fps)
        picks, lag_s = resample(tl, a, b, fps)
        speed = track.get("head_speed") or []
        first = int(track["frames"][0]) if track.get("frames") else a
        return {
            "clip_id": clip_id, "source_id": sid, "shot_id": track["shot_id"], "track_id": track["track_id"],
            "segment_id": seg and seg["segment_id"], "start_frame": a, "end_frame": b, "start_s": tl.time_of(a),
            "end_s": tl.time_of(b), "n_frames": len(picks), "fps": fps,
            "resampled": picks != list(range(a, b)), "av_lag_ms": round(lag_s * 1000, 3), "picks": picks,
            "crop_path": ctx.rel(ctx.path("clips", sid, f"{clip_id}.mp4")),
            "audio_path": ctx.rel(ctx.path("clips", sid, f"{clip_id}.wav")),
            "face_mask_path": track.get("face_mask_path"), "lip_mask_path": track.get("lip_mask_path"),
            "head_speed": [float(speed[i - first]) for i in picks] if speed else [], "face_size_px": m["face_side_px"],
            "sync_confidence": m["sync_confidence"], "audio_shift_frames": self._shift(m["offset_frames"]),
            "vocal_type": seg and seg["vocal_type"],
            "category": source.get("category"), "language": (seg and seg.get("language")) or source.get("language"),
            "license": source.get("license"), "consent": source.get("consent"),
            "identity_id": track.get("identity_id"), "split": None, "sha256": None,
        }

    def _shift(self, offset: int | None) -> int:
        """Frames the clip's wav is moved by: its measured offset when that is past the av_offset
        rule's tolerance (and within realign_max_frames, else it was rejected); else 0."""
        return int(offset) if offset is not None and abs(offset) > self.rules["av_offset"] else 0

    def _write_media(self, source, audio_path: Path | None, clips, picks, tracks, tl: Timeline, ctx: StageContext) -> None:
        """Every kept clip's crop (one decode of the source for all of them), its wav, and the crop's sha256.

        The wav covers [start_s, end_s) on the clock, as the crop's frames do."""
        jobs = [CropJob(ctx.out / c["crop_path"], picks[c["clip_id"]], np.asarray(tracks[c["track_id"]]["crop_box"], float),
                        int(tracks[c["track_id"]]["crop_size"]), c["fps"]) for c in clips]
        shots = ctx.upstream("shots", source["source_id"]).to_pylist()  # their starts: places to seek to
        write_crops(ctx.out / source["media_path"], int(source.get("rotation") or 0), jobs,
                    anchors=[(int(s["start_frame"]), float(s["start_s"])) for s in shots if s["start_s"] is not None])
        for c in clips:
            if audio_path:
                # Sound k frames late (k > 0): the picture's sound is k frames further on in the wav.
                lag = c["audio_shift_frames"] / tl.fps  # the sync measure's frames are the source's
                audio, rate = read_audio(audio_path, c["start_s"] + lag, c["start_s"] + lag + c["n_frames"] / c["fps"])
            else:
                audio, rate = np.zeros(int(round(c["n_frames"] / c["fps"] * 16000)), np.float32), 16000
            sf.write(str(ctx.out / c["audio_path"]), audio, rate, subtype="FLOAT")
            c["sha256"] = sha256_file(ctx.out / c["crop_path"])


def resample(tl: Timeline, a: int, b: int, fps: float) -> tuple[list[int], float]:
    """(source frame shown at each instant start + k / fps of frames [a, b), mean lag in seconds).

    Each instant shows the source frame whose start is nearest it; the lag is the mean of (instant -
    that frame's time), what the picture trails the sound by. A source frame per instant, one for
    one, when the source is at this constant rate.
    """
    s_a, s_b = tl.time_of(a), tl.time_of(b)
    n = max(1, int(round((s_b - s_a) * fps)))
    instants = s_a + np.arange(n) / fps
    picks, shown = tl.frames_near(instants, a, b)
    return [int(i) for i in picks], float(np.mean(instants - shown))
