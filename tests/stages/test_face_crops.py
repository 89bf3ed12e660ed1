"""write_crops: each crop video holds exactly its frames of the source, whether reached by decoding or by a seek."""

from __future__ import annotations

import numpy as np
import pytest

from stages.media.crops import CropJob, crop_frame, write_crops
from stages.media.decode import decode_small
from stages.media.video_io import AnchorNotFound, iter_frames, read_frames, to_rgb

WINDOW = np.array([60.0, 20.0, 260.0, 220.0])
SIZE = 96


@pytest.fixture(scope="module")
def talking(demo_corpus):
    """talking.mp4 (750 frames, a keyframe every 250), its frames cropped as write_crops crops them, and its PTS."""
    path = demo_corpus / "talking.mp4"
    crops = [crop_frame(to_rgb(f, 0), WINDOW, SIZE).astype(float) for _, f in iter_frames(path, 0)]
    return path, crops, decode_small(path).pts  # the shot stage's numbering and times


def check(path, crops, job: CropJob) -> None:
    """Every written frame is the source frame of its own index, not a neighbour."""
    got = [f.astype(float) for _, f in read_frames(path)]
    assert len(got) == job.end - job.first
    for k in (0, len(got) // 2, len(got) - 1):
        i = job.first + k
        near = range(max(0, i - 3), min(len(crops), i + 4))
        errs = [np.abs(got[k] - crops[j]).mean() for j in near]
        assert near[int(np.argmin(errs))] == i and min(errs) < 6, (i, errs)


def test_crops_hold_their_own_frames_with_and_without_seeking(talking, tmp_path):
    path, crops, pts = talking
    jobs = [CropJob(tmp_path / "early.mp4", list(range(20, 45)), WINDOW, SIZE, 25.0),
            CropJob(tmp_path / "late.mp4", list(range(410, 440)), WINDOW, SIZE, 25.0),  # reached by seeking to frame 400
            CropJob(tmp_path / "later.mp4", list(range(560, 580)), WINDOW, SIZE, 25.0),  # its anchor is wrong: decoded instead
            CropJob(tmp_path / "last.mp4", list(range(700, 750)), WINDOW, SIZE, 25.0)]  # seeks, and runs to the video's end
    anchors = [(400, float(pts[400])), (550, float(pts[550]) + 100.0), (690, float(pts[690]))]
    write_crops(path, 0, jobs, anchors=anchors, seek_gap=50)
    for job in jobs:
        check(job.path, crops, job)


def test_a_crop_past_the_end_of_the_video_is_an_error_and_leaves_no_file(talking, tmp_path):
    path, _, _ = talking
    job = CropJob(tmp_path / "past.mp4", list(range(740, 760)), WINDOW, SIZE, 25.0)
    with pytest.raises(RuntimeError, match="decoding ended before frame 759"):
        write_crops(path, 0, [job])
    assert not job.path.exists()


def test_an_anchor_starts_the_numbering_at_its_frame_and_a_wrong_one_says_so(talking):
    path, crops, pts = talking
    i, frame = next(iter_frames(path, 0, anchor=(400, float(pts[400]))))  # 150 frames past the keyframe at 250
    errs = [np.abs(crop_frame(to_rgb(frame, 0), WINDOW, SIZE) - crops[j]).mean() for j in range(397, 404)]
    assert i == 400 and int(np.argmin(errs)) == 3 and errs[3] < 1e-6
    with pytest.raises(AnchorNotFound):
        next(iter_frames(path, 0, anchor=(690, float(pts[690]) + 100.0)))
