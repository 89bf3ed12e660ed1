"""The demo corpus's puppet mouth (pipeline/demo_mouth.py): open when the voice is loud, at that very frame."""

from __future__ import annotations

import numpy as np

from pipeline.demo_corpus import astronaut
from pipeline.demo_mouth import mouth_points, open_mouth, openness
from stages.faces.landmarks import UPPER_LIP_INNER, FaceMesher, mouth_open


def test_openness_follows_each_frames_own_loudness():
    rate, fps = 16000, 25.0
    per_frame = rate // 25
    t = np.arange(10 * per_frame) / rate
    tone = np.sin(2 * np.pi * 220 * t).astype(np.float32)
    audio = np.concatenate([np.zeros(10 * per_frame, np.float32), 0.5 * tone, 0.5 * 10 ** (-15 / 20) * tone])
    mouth = openness(audio, rate, fps, 30)
    assert np.all(mouth[:10] == 0)  # silence: closed, up to the last silent frame
    assert np.allclose(mouth[10:20], 1)  # the loud part opens it fully, from its first frame
    assert np.allclose(mouth[20:], 0.5, atol=0.02)  # 15 dB down: half open (closed at 25, open at 5)


def test_the_jaw_drops_with_the_amount_and_the_face_above_the_lips_stays():
    still = astronaut()
    points = mouth_points(still)
    assert points is not None
    assert open_mouth(still, points, 0.0) is still
    mesher = FaceMesher()
    whole = np.array([0.0, 0.0, still.shape[1], still.shape[0]])
    gaps = []
    for amount in (0.0, 0.5, 1.0):
        img = open_mouth(still, points, amount)
        above = int(points[UPPER_LIP_INNER, 1]) - 6
        assert np.array_equal(img[:above], still[:above])  # eyes, nose and upper lip untouched
        gaps.append(mouth_open(mesher.landmarks(img, whole)))
    mesher.close()
    assert gaps[0] < gaps[1] < gaps[2] and gaps[2] > gaps[0] + 0.05, gaps  # the mesh sees it open
