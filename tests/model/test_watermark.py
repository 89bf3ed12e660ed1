"""The generated-video watermark: survives CRF 28 and a half-size resize; absent from real footage."""

from __future__ import annotations

import cv2
import numpy as np

from model.watermark import checkpoint_id, detect_video, embed
from stages.media.video_io import read_frames, write_mp4


def real_frames(path, n=30, size=(512, 512)):
    out = []
    for _, f in read_frames(path):
        out.append(cv2.resize(f, size, interpolation=cv2.INTER_AREA))
        if len(out) == n:
            break
    return out


def test_mark_survives_crf28_and_half_resize(demo_corpus, tmp_path):
    ident = checkpoint_id("c0ffee42" + "0" * 56)
    frames = [embed(f, ident) for f in real_frames(demo_corpus / "talking.mp4")]
    psnr = 10 * np.log10(255**2 / np.mean((frames[0].astype(float) - real_frames(demo_corpus / "talking.mp4", 1)[0]) ** 2))
    assert psnr > 35, psnr
    write_mp4(tmp_path / "gen.mp4", frames, 25, crf=18)
    det = detect_video(tmp_path / "gen.mp4")
    assert det.present and det.checkpoint_id == "c0ffee42" and det.bit_accuracy == 1.0

    small = [cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA) for _, f in read_frames(tmp_path / "gen.mp4")]
    write_mp4(tmp_path / "reupload.mp4", small, 25, crf=28)
    det = detect_video(tmp_path / "reupload.mp4")
    assert det.present and det.checkpoint_id == "c0ffee42", det


def test_real_unmarked_footage_is_not_flagged(demo_corpus):
    for name in ("talking.mp4", "cuts.mp4"):
        det = detect_video(demo_corpus / name, max_frames=60)
        assert not det.present, (name, det)


def test_detect_names_what_is_wrong_with_a_file_that_is_no_video(demo_corpus, tmp_path):
    import pytest

    from pipeline.cli import main

    garbage = tmp_path / "clip.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    with pytest.raises(ValueError, match="not a video that can be read"):
        detect_video(str(garbage))
    with pytest.raises(ValueError, match="has no video stream"):
        detect_video(str(demo_corpus / "speech.wav"))
    import logging

    handlers = logging.root.handlers[:]  # main's logging.basicConfig would outlive the test's capture
    try:
        assert main(["detect", str(garbage)]) == 2  # a clear one-line error, not a traceback
    finally:
        logging.root.handlers[:] = handlers
