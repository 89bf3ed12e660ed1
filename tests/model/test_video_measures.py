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
