"""The demo's measures on real footage, where the answer is known: the carphone man's own clip
has a face in every frame and is his identity; a held-out portrait (Tom Hanks) is not him."""

from __future__ import annotations

import av
import numpy as np

from model.audio_features import load_wav
from model.sample import read_portrait
from model.video_measures import measure_video
from pipeline.demo_corpus import packaged_media


def test_measures_of_a_real_talking_clip(clips_out):
    video = clips_out / "clips" / "carphone-0.mp4"
    with av.open(str(video)) as c:
        first = next(f.to_ndarray(format="rgb24") for f in c.decode(video=0))
    wav = load_wav(clips_out / "clips" / "carphone-0.wav")
    own = measure_video(video, first, wav, 25.0)
    assert own["frames"] == 60 and own["face_share"] >= 0.8
    assert own["identity_similarity"] is not None and own["identity_similarity"] >= 0.94
    other = measure_video(video, read_portrait(packaged_media()["hanks"]), wav, 25.0)
    assert other["identity_similarity"] < own["identity_similarity"] - 0.04
    assert np.isfinite(other["face_share"])


def test_the_sync_measure_tells_a_mouth_that_follows_the_speech_from_one_that_does_not(demo_corpus, tmp_path):
    """The demo's talking.mp4, whose jaw follows its audio by construction (pipeline/demo_mouth.py):
    in sync against its own speech, at offset 0, and not against the same speech rolled by half
    (the control the demo prints beside every generated video)."""
    from stages.media.video_io import write_mp4

    wav = load_wav(demo_corpus / "speech.wav")[24 * 16000: 30 * 16000]  # its last, voiced 6 s
    with av.open(str(demo_corpus / "talking.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(video=0)) if 600 <= i < 750]
    video = tmp_path / "six.mp4"
    write_mp4(video, frames, 25.0)
    m = measure_video(video, frames[0], wav, 25.0, control_wav=np.roll(wav, len(wav) // 2))
    assert m["sync_offset"] == 0 and m["sync_confidence"] > 4.0, m
    assert m["sync_control"] < 2.0, m
    # the puppet's mouth shows its dark inside when loud: the lips' box darkens with the loudness
    # (0.71 when written; the rolled speech 0.28: a 91%-voiced speech still overlaps itself)
    assert m["mouth_darkness_offset"] == 0 and m["mouth_darkness"] > 0.5, m
    assert m["mouth_darkness_control"] < m["mouth_darkness"] - 0.2, m
