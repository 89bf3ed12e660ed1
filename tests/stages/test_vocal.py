"""Singing vs speech (stages/diarize/vocal.py) through the diarize stage.

Synthetic checks run everywhere: a sung-vowel-like harmonic line with vibrato and held notes, alone,
over chords the VAD hears no voice in, and with an operatic vibrato (70 cents at 7 Hz, 100 at 4.5 Hz,
130 at 6.5 Hz), is singing; a vibrato note is found only where the pitch swings regularly;
chords alone are music; real speech (pyannote's sample.wav) is speech; a sung line in a pause of real
speech is singing at the speech's level and music far under it. The real-media checks need
../shared/real-media and skip without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_vocal

pytest.importorskip("pyannote.audio")


@pytest.mark.parametrize("name", list(bench_vocal.synthetic_clips()))
def test_synthetic_sung_line_is_singing_and_chords_are_music(name):
    wav, label = bench_vocal.synthetic_clips()[name]
    rows = bench_vocal.run_stage(wav, "syn")
    assert bench_vocal.verdict(rows, [r["vocal_type"] for r in rows]) == label, rows
    for r in rows:  # every typed row says how: the rule and the features it read
        if r["vocal_type"] != "silence":
            ev = json.loads(r["vocal_evidence"])
            assert ev["rule"] and {"held_share", "notes", "mfcc_flux", "jitter_cents"} <= set(ev)


def test_a_vibrato_note_is_a_regular_swing_on_a_flat_line():
    """vibrato_held: half a second and more of +-100 cents at 6 Hz on a steady pitch is a note; the
    same swing at 3 Hz (slower than singers'), on a glide of 6 semitones a second, too narrow (+-20),
    or a smooth random wander of the same size is not."""
    from scipy.ndimage import gaussian_filter1d

    from stages.diarize.vocal import DT, vibrato_held

    t = np.arange(50) * DT
    swing = lambda hz, cents: 2000 + cents * np.sin(2 * np.pi * hz * t)  # noqa: E731
    assert vibrato_held(swing(6.0, 100)).all()
    assert vibrato_held(swing(4.5, 130)).all()
    assert not vibrato_held(swing(3.0, 100)).any()
    assert not vibrato_held(swing(6.0, 100) + 600 * t).any()
    assert not vibrato_held(swing(6.0, 20)).any()
    wander = gaussian_filter1d(np.random.default_rng(0).standard_normal((20, 50)), 3, axis=1)
    wander *= 100 / wander.std(1, keepdims=True)
    assert sum(vibrato_held(2000 + w).any() for w in wander) <= 1
    assert not vibrato_held(swing(6.0, 100)[:20]).any()  # shorter than a note's window


def test_real_speech_stays_speech():
    import pyannote.audio
    import soundfile as sf

    wav, _ = sf.read(Path(pyannote.audio.__file__).parent / "sample" / "sample.wav", dtype="float32")
    rows = bench_vocal.run_stage(wav, "spk")
    assert bench_vocal.verdict(rows, [r["vocal_type"] for r in rows]) == "speech"
    assert all(r["vocal_type"] != "singing" for r in rows), [(r["start_s"], r["vocal_evidence"]) for r in rows]


def _speech_with_a_sung_pause(under_db: float) -> np.ndarray:
    """pyannote's real speech, with 4 s of a sung line over chords (which the VAD hears no voice in) put
    into it, its loud parts `under_db` under the speech's."""
    import pyannote.audio
    import soundfile as sf

    from stages.diarize.vocal import loud_db

    speech, _ = sf.read(Path(pyannote.audio.__file__).parent / "sample" / "sample.wav", dtype="float32")
    speech = speech[: 16000 * 20] * 10 ** ((-12.0 - loud_db(speech[: 16000 * 20])) / 20)  # loud parts at -12 dBFS
    sung = bench_vocal.synthetic_clips()["sung line over chords"][0][: 16000 * 4]
    sung = sung * 10 ** ((loud_db(speech) - under_db - loud_db(sung)) / 20)
    return np.concatenate([speech[: 16000 * 10], np.zeros(8000, np.float32), sung, np.zeros(8000, np.float32),
                           speech[16000 * 10:]]).astype(np.float32)


@pytest.mark.parametrize("under_db, expected", [(0.0, "singing"), (26.0, "music")])
def test_a_missed_voice_is_as_loud_as_the_source(under_db, expected):
    """A stretch the VAD heard no voice in is singing only when it is about as loud as the source's loud
    parts: the same sung line in a pause of real speech is singing at the speech's level and music 26 dB
    under it (a hum or a bed under a news report's pauses is not a voice). Its evidence says how far under."""
    rows = bench_vocal.run_stage(_speech_with_a_sung_pause(under_db), "pause")
    (gap,) = [r for r in rows if r["speaker"] is None and r["start_s"] < 11.0 < r["end_s"]]
    assert gap["vocal_type"] == expected, gap
    ev = json.loads(gap["vocal_evidence"])
    assert abs(ev["under_source_db"] - under_db) < 3.0, ev
    assert ("dB under" in ev["rule"]) == (expected == "music"), ev


def test_a_sung_stretch_across_a_cut_is_a_piece_on_each_side_typed_as_the_whole(tmp_path):
    """The sung line the VAD hears no voice in (10.5-14.5 s) runs across a cut at 12.5 s: it is two
    rows, split there, each typed singing with the whole stretch's evidence (on its own side, two
    seconds of it might not show a held note), so each piece is matched to its own shot's faces."""
    import soundfile as sf

    from manifests import ManifestStore
    from stages.base import StageContext

    wav, cut = _speech_with_a_sung_pause(0.0), 12.5
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "cut.wav", wav, 16000, subtype="FLOAT")
    duration = len(wav) / 16000
    ManifestStore(tmp_path).write_shard("shots", "cut", [
        {"source_id": "cut", "shot_id": "cut-s0000", "shot_index": 0, "start_s": 0.0, "end_s": cut, "start_frame": 0,
         "end_frame": int(cut * 25), "transition_in": "start", "detector": "test"},
        {"source_id": "cut", "shot_id": "cut-s0001", "shot_index": 1, "start_s": cut, "end_s": duration,
         "start_frame": int(cut * 25), "end_frame": int(duration * 25), "transition_in": "cut", "detector": "test"}])
    src = {"source_id": "cut", "audio_path": "audio/cut.wav", "has_audio": True, "fps": 25.0, "category": "other",
           "duration_s": duration, "media_path": None}
    ctx = StageContext(out=tmp_path)
    rows = bench_vocal._stage().process(src, ctx)
    assert not [r for r in rows if r["start_s"] < cut - 0.01 and r["end_s"] > cut + 0.01], rows
    sung = [r for r in rows if r["speaker"] is None and r["vocal_type"] == "singing"]
    assert [r["end_s"] for r in sung if r["start_s"] < cut] == [cut], sung
    assert [r["start_s"] for r in sung if r["end_s"] > cut] == [cut], sung
    assert len({r["vocal_evidence"] for r in sung}) == 1 and ctx.counters["gaps_split_at_cuts"] >= 1


@pytest.mark.skipif(not bench_vocal.REAL.is_dir(), reason="../shared/real-media is absent (a clone outside the workspace)")
def test_a_hum_in_a_news_reports_pauses_is_not_singing():
    """r3_v12 (a 71 s news report) holds a steady 112 Hz tone, 25 dB under the speech, in its pauses;
    pyin's track of it jitters like a voice, and a 1.1 s pause of it was typed singing. Nothing in the
    report is singing now."""
    wav = bench_vocal.load_audio(bench_vocal.REAL / "videos" / "r3_v12_dfrf_cnn_jimacosta_71s.mp4")
    rows = bench_vocal.run_stage(wav, "news")
    assert [r for r in rows if r["vocal_type"] == "singing"] == []
    hum = [r for r in rows if r["speaker"] is None and r["vocal_type"] == "music"]
    assert hum and all(json.loads(r["vocal_evidence"])["under_source_db"] > 20 for r in hum), hum


@pytest.mark.skipif(not bench_vocal.REAL.is_dir(), reason="../shared/real-media is absent (a clone outside the workspace)")
def test_real_singing_and_speech_leave_one_out():
    """Each real clip judged with a threshold fitted on the others: at least 3 of the 4 songs are singing
    (the issue's goal is 8 of 10) and every speech clip stays speech (goal >= 95 %)."""
    clips = []
    for path, label, _ in bench_vocal.real_clips():
        if label == "rap":
            continue
        rows = bench_vocal.run_stage(bench_vocal.load_audio(path), "src")
        clips.append({"label": label, "rows": rows})
    hits = {"singing": 0, "speech": 0}
    for c in clips:
        th = bench_vocal.fit_threshold([o for o in clips if o is not c])
        hits[c["label"]] += bench_vocal.verdict(c["rows"], bench_vocal.retype(c["rows"], th)) == c["label"]
    n = {lab: sum(c["label"] == lab for c in clips) for lab in hits}
    assert hits["singing"] >= n["singing"] - 1 and hits["speech"] >= 0.95 * n["speech"], (hits, n)


@pytest.mark.skipif(not bench_vocal.REAL.is_dir(), reason="../shared/real-media is absent (a clone outside the workspace)")
def test_real_song_stays_singing_faster_and_higher_and_speech_stays_speech():
    """A real song sung 15 % faster and 3 semitones higher is still singing (its notes get shorter
    than a 180 ms average keeps flat: both were speech before the 140 ms line), and real speech
    given the same treatment stays speech."""
    song = bench_vocal.load_audio(bench_vocal.REAL / "audio" / "r2_a01_sing_imagine.wav")
    speech = bench_vocal.load_audio(bench_vocal.REAL / "audio" / "r2_a11_speech_en_hdtf_rd31.wav")
    for wav, label in ((song, "singing"), (speech, "speech")):
        copies = bench_vocal.variants(wav)
        for kind in ("tempo x1.15", "pitch +3"):
            rows = bench_vocal.run_stage(copies[kind], "src")
            assert bench_vocal.verdict(rows, [r["vocal_type"] for r in rows]) == label, (kind, label, rows)


@pytest.mark.skipif(not bench_vocal.REAL.is_dir(), reason="../shared/real-media is absent (a clone outside the workspace)")
def test_a_song_under_a_still_portrait_is_singing_through_emo_curate(tmp_path):
    """As the issue plays it: a real song and real speech, each as AAC under a still portrait, curated by
    `emo curate` in a subprocess. Exit 0; the song's segments are singing, the speech's speech; the
    portrait never moves its mouth, so neither keeps a clip."""
    from manifests import ManifestStore
    from tests.pipeline.test_cli_exit import assert_ok, emo

    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("r2_a01_sing_imagine.wav", "r2_a10_speech_zh_news_sadtalker.wav"):
        bench_vocal.still_portrait_video(bench_vocal.load_audio(bench_vocal.REAL / "audio" / name), folder / f"{name[:-4]}.mp4")
    assert_ok(emo("curate", str(folder), "--out", str(tmp_path / "out"), "--num-cpus", "1", cwd=tmp_path))
    got = bench_vocal.curated_types(tmp_path / "out")
    song, speech = got["r2_a01_sing_imagine"], got["r2_a10_speech_zh_news_sadtalker"]
    assert song.get("singing", 0) > 4.0 and song.get("speech", 0) < 1.0, song
    assert speech.get("speech", 0) > 6.0 and "singing" not in speech, speech
    assert ManifestStore(tmp_path / "out").read("clips").num_rows == 0
