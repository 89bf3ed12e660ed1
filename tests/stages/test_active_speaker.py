"""Who speaks when two real faces share the screen (issue 17): the diarize stage on one split screen of
two dev files (benchmarks/speaker_pairs.py), 12 s, the listener's mouth moving to words nobody hears.

Turns (seed 0): the right face (r3_v12, a CNN correspondent) speaks 0-2.8 s and 4.9-7 s, the left
(r2_v09, a German anchor) 2.8-4.9 s and 7-12 s. Each of the right face's turns alone scores under
the keep threshold (about 1.7 and 2.7 null standard deviations), and so does its whole track (3.4:
half of it is listening); over its speaker's two turns together, about 7 (stages/diarize/
speaking_face.py, the speaker's pool). Without that pool the right face gets nothing. The left
face's turns stay under the threshold even together (2.9): they are expected to go to nobody, never
to the right face. The figures over four dev and four held-out pairs come from `python -m benchmarks.bench_active_speaker`.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_active_speaker import judge
from benchmarks.speaker_pairs import compose, curated
from benchmarks.sync_corpus import available

pytestmark = pytest.mark.skipif(not available(),
                                reason="../shared/real-media is absent (a clone without the shared development media)")

LEFT, RIGHT = "r2_v09_mimictalk_german.mp4", "r3_v12_dfrf_cnn_jimacosta_71s.mp4"


def test_a_speaker_with_two_turns_gets_them_and_the_listener_gets_none(tmp_path):
    path = compose(LEFT, RIGHT, 12.0, "talking", 0, tmp_path)
    truth = json.loads(path.with_suffix(".truth.json").read_text())
    assert [t["side"] for t in truth["turns"]] == ["right", "left", "right", "left"], truth["turns"]
    src, store = curated(path, tmp_path / "out")
    sid = src["source_id"]
    tracks, segs, clips = (store.read_shard(t, sid).to_pylist() for t in ("tracks", "segments", "clips"))
    assert len(tracks) == 2, [(t["track_id"], t["start_frame"], t["end_frame"]) for t in tracks]
    r = judge(truth, tracks, segs, clips)
    right_s = sum(t["end_s"] - t["start_s"] for t in truth["turns"] if t["side"] == "right")
    # the right face's turns go to it (diarized turn edges move by a few tenths of a second) ...
    assert r["right"] >= 0.7 * right_s, r
    # ... and nothing goes to the face whose voice is not heard, beyond those edges (0.6 s measured:
    # the diarized turn runs on 0.46 s into the next one)
    assert r["wrong"] <= 1.0, r
    assert r["bad_clips"] == 0, r


def test_the_real_interviews_guest_does_not_take_the_anchors_words(tmp_path):
    """r3_v01, a real split-screen TV interview, as published. The left-hand anchor's mouth moves
    from 0 to 8.2 s and after 15.9 s and is shut between; 8.17-15.86 s is the narrower-band sound of
    the remote guest (right), whose mouth moves all along. The singular score finds the guest's mouth
    following the anchor's first 8 s at 5.4; he must not take it (speaking_face._voice_owners: the
    anchor's mouth keeps that voice's turns). This file is where the rule was found, so this checks
    the case, not a held-out figure."""
    from benchmarks.sync_corpus import TWO_SPEAKERS, original

    src, store = curated(original(TWO_SPEAKERS), tmp_path / "out")
    sid = src["source_id"]
    tracks, segs = (store.read_shard(t, sid).to_pylist() for t in ("tracks", "segments"))
    right = {t["track_id"] for t in tracks if sum(b[0] + b[2] for b in t["boxes"]) / 2 / len(t["boxes"]) > 640}
    voiced = [s for s in segs if s["vocal_type"] in ("speech", "singing")]
    assert voiced and right, (voiced, tracks)
    guest_early = sum(min(s["end_s"], 8.0) - s["start_s"] for s in voiced
                      if s["on_screen"] == "synced" and s["track_id"] in right and s["start_s"] < 8.0)
    assert guest_early == 0, [(s["start_s"], s["end_s"], s["track_id"], s["sync_confidence"]) for s in voiced]
    assert any(s["track_id"] in right and s["start_s"] >= 8.0 for s in voiced if s["on_screen"] == "synced"), voiced
