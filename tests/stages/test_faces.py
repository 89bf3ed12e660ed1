"""The face stage on real faces: the demo corpus, a photo turned at a known speed, and bad inputs.

Each test calls `FaceStage.process` directly (no Ray) on media under a tmp OUT folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from manifests import ManifestStore
from pipeline.demo_corpus import decode, packaged_media
from stages.base import StageContext, StageError
from stages.faces.detectors import box_iou
from stages.faces.identity import cluster_identities
from stages.faces.stage import FaceStage
from stages.media.probe import probe_media
from stages.media.video_io import write_mp4

# t1.jpg as the demo corpus shows it (cropped to 640x360): six people at the table, all faces
# visible, counted by eye (the same six that dlib's HOG detector finds in the full photo).
GROUP_FACES = 6


def make_source(out: Path, video: Path, sid: str) -> dict:
    """A `sources` row for `video`, with its media copied under OUT as the download stage would."""
    media = out / "media" / f"{sid}.mp4"
    media.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(video, media)
    return {**probe_media(media), "source_id": sid, "media_path": f"media/{sid}.mp4"}


def run(out: Path, source: dict, **kw) -> tuple[list[dict], StageContext]:
    ctx = StageContext(out=out)
    rows = FaceStage(**kw).process(source, ctx)
    return rows, ctx


@pytest.fixture(scope="module")
def cuts(demo_corpus, tmp_path_factory):
    """cuts.mp4 with its true shots written as the shots stage would: (rows, ctx, truth, out)."""
    out = tmp_path_factory.mktemp("faces_cuts")
    truth = json.loads((demo_corpus / "cuts.json").read_text())
    src = make_source(out, demo_corpus / "cuts.mp4", "cuts")
    ManifestStore(out).write_shard("shots", "cuts", [
        {"source_id": "cuts", "shot_id": f"cuts-s{k:04d}", "shot_index": k, "start_s": s["start_frame"] / 25,
         "end_s": s["end_frame"] / 25, "start_frame": s["start_frame"], "end_frame": s["end_frame"],
         "transition_in": s["transition_in"], "confidence": 1.0, "detector": "truth"}
        for k, s in enumerate(truth["shots"])])
    rows, ctx = run(out, src)
    return rows, ctx, truth["shots"], out


def shot_rows(rows: list[dict], k: int) -> list[dict]:
    return [r for r in rows if r["shot_id"] == f"cuts-s{k:04d}"]


def test_carphone_man_is_one_track_over_his_shot(cuts):
    rows, _, shots, out = cuts
    for k in (0, 8):  # carphone, and carphone again after six other shots
        (track,) = shot_rows(rows, k)
        n = shots[k]["end_frame"] - shots[k]["start_frame"]
        assert len(track["frames"]) >= 0.95 * n
        for col in ("boxes", "yaw", "pitch", "roll", "head_speed", "mouth_open"):
            assert len(track[col]) == len(track["frames"]), col
        assert track["mesh_fraction"] > 0.9 and track["reasons"] == []
        assert np.std(track["mouth_open"]) > 0.005  # he talks: his mouth opens and closes
        x0, y0, x1, y1 = track["crop_box"]  # a square window holding every box of the track
        assert abs((x1 - x0) - (y1 - y0)) < 1e-3 and track["crop_size"] == 512
        boxes = np.array(track["boxes"])
        assert (boxes[:, :2] >= [x0, y0]).all() and (boxes[:, 2:] <= [x1, y1]).all()
        face = np.asarray(Image.open(out / track["face_mask_path"]))
        lips = np.asarray(Image.open(out / track["lip_mask_path"]))
        assert face.shape == (512, 512) and 0 < (lips > 0).sum() < (face > 0).sum()


def test_mesh_every_other_frame_interpolates_close_to_meshing_every_frame(cuts, tmp_path):
    """The carphone man talking (120 frames): mouth opening and pose from half the meshes, against all.

    Measured: mouth opening correlates 0.996 (MAE 0.0035 where it varies by 0.065), yaw 0.995 (MAE
    0.36 degrees); with mesh_every=3 the mouth's 95th-percentile error grows to half its spread."""
    rows, _, _, out = cuts
    copy = tmp_path / "out"
    shutil.copytree(out, copy)  # the media and the true shots
    source = {**probe_media(copy / "media" / "cuts.mp4"), "source_id": "cuts", "media_path": "media/cuts.mp4"}
    half, _ = run(copy, source, mesh_every=2)
    assert [r["track_id"] for r in half] == [r["track_id"] for r in rows]
    every = {r["track_id"]: r for r in rows}
    for r in half:  # detection and tracking do not change; only the mesh runs less
        assert r["frames"] == every[r["track_id"]]["frames"] and r["reasons"] == every[r["track_id"]]["reasons"]
        assert all((f - r["start_frame"]) % 2 == 0 or f == r["end_frame"] - 1 for f in r["landmark_frames"])
    a, b = every["cuts-s0000-t00"], next(r for r in half if r["track_id"] == "cuts-s0000-t00")
    assert len(b["mouth_open"]) == len(a["mouth_open"]) == 120 and b["mesh_fraction"] == 1.0
    mouth_a, mouth_b = np.array(a["mouth_open"]), np.array(b["mouth_open"])
    assert np.corrcoef(mouth_a, mouth_b)[0, 1] > 0.98 and np.abs(mouth_a - mouth_b).mean() < 0.1 * mouth_a.std()
    assert np.abs(np.array(a["yaw"]) - np.array(b["yaw"])).mean() < 1.0
    assert 0 < len(b["landmark_frames"]) < len(a["landmark_frames"])


def test_group_photo_yields_every_face(cuts):
    rows, _, shots, _ = cuts
    group = shot_rows(rows, 2)
    assert len(group) == GROUP_FACES
    first = np.array([r["boxes"][0] for r in group])
    iou = box_iou(first, first) - np.eye(len(group))
    assert iou.max() < 0.1  # six different faces, not one face found twice
    # A still shot that fades to black over its last 12 frames: each face from its first frame to the fade's end.
    assert all(r["start_frame"] == shots[2]["start_frame"] and r["end_frame"] >= shots[2]["end_frame"] - 5 for r in group)


def test_shots_without_faces_give_no_track_and_no_error(cuts):
    rows, ctx, shots, _ = cuts
    for k in (1, 3, 7):  # Big Buck Bunny, bikes faded in, a street
        assert shots[k]["faces"] == 0 and not shot_rows(rows, k)
    assert ctx.counters["no_face_shots"] >= 3


def test_no_track_crosses_a_cut_and_rows_fit_the_schema(cuts, tmp_path):
    rows, _, shots, _ = cuts
    for r in rows:
        s = shots[int(r["shot_id"][-4:])]
        assert s["start_frame"] <= r["start_frame"] < r["end_frame"] <= s["end_frame"]
        assert r["frames"] == list(range(r["start_frame"], r["end_frame"]))
    ManifestStore(tmp_path).write_shard("tracks", "cuts", rows)
    assert ManifestStore(tmp_path).read("tracks").num_rows == len(rows)


def portrait_frames(n: int, turn_deg: float = 0.0, shift_px: float = 0.0, size: int = 320) -> list[np.ndarray]:
    """Tom Hanks's photo on a grey canvas, turned `turn_deg` (CCW) and moved `shift_px` right per frame."""
    face = cv2.resize(np.asarray(Image.open(packaged_media()["hanks"]).convert("RGB")), (160, 160))
    canvas = np.full((size, size, 3), 128, np.uint8)
    o = (size - 160) // 2
    canvas[o : o + 160, o : o + 160] = face
    out = []
    for i in range(n):
        m = cv2.getRotationMatrix2D((size / 2, size / 2), turn_deg * i, 1.0)
        m[0, 2] += shift_px * i
        out.append(cv2.warpAffine(canvas, m, (size, size), borderValue=(128, 128, 128)))
    return out


def test_roll_speed_of_a_turning_photo(tmp_path):
    """1.5 deg/frame in-plane turn: roll follows it within 0.15 deg/frame, measured speed within 0.3."""
    turn = 1.5
    write_mp4(tmp_path / "turn.mp4", portrait_frames(40, turn_deg=turn), 25)
    rows, _ = run(tmp_path, make_source(tmp_path, tmp_path / "turn.mp4", "turn"), min_track_frames=10)
    (track,) = rows
    assert len(track["frames"]) == 40 and track["mesh_fraction"] > 0.9
    slope = np.polyfit(track["frames"], np.unwrap(np.radians(track["roll"])), 1)[0]
    assert abs(abs(np.degrees(slope)) - turn) < 0.15
    assert abs(np.median(track["head_speed"][3:-3]) - turn) < 0.3
    assert abs(np.median(track["yaw"])) < 30 and abs(np.median(track["pitch"])) < 30


def test_pose_does_not_depend_on_where_the_face_sits():
    """The same photo at the centre, top and side of a 640x480 frame: yaw and pitch agree within 8 degrees.

    Taken against the optical axis instead of the line of sight, yaw moved 24 degrees between these spots.
    """
    from stages.faces.head_pose import head_pose
    from stages.faces.landmarks import FaceMesher

    face = portrait_frames(1, size=160)[0]
    stage = FaceStage()
    stage.setup()
    poses = []
    for x, y in ((240, 160), (240, 0), (0, 160)):
        canvas = np.full((480, 640, 3), 128, np.uint8)
        canvas[y : y + 160, x : x + 160] = face
        (det,) = stage._detector.detect(canvas)
        poses.append(head_pose(FaceMesher().landmarks(canvas, det.box), 640, 480))
    poses = np.array(poses)
    assert np.ptp(poses[:, 0]) < 8 and np.ptp(poses[:, 1]) < 8


def test_face_leaving_the_frame_ends_its_track(tmp_path):
    write_mp4(tmp_path / "exit.mp4", portrait_frames(40, shift_px=8), 25)  # face centre leaves at frame ~20
    rows, ctx = run(tmp_path, make_source(tmp_path, tmp_path / "exit.mp4", "exit"), min_track_frames=10)
    assert len(rows) == 1 and rows[0]["start_frame"] == 0 and 12 <= rows[0]["end_frame"] <= 28
    boxes = np.array(rows[0]["boxes"])
    assert boxes.min() >= 0 and boxes[:, 2].max() <= 320


def test_tiny_and_black_videos_are_handled(tmp_path):
    write_mp4(tmp_path / "tiny.mp4", [np.full((32, 32, 3), 90, np.uint8)] * 10, 25)
    with pytest.raises(StageError) as e:
        run(tmp_path, make_source(tmp_path, tmp_path / "tiny.mp4", "tiny"))
    assert e.value.reason == "frame_too_small"
    write_mp4(tmp_path / "black.mp4", [np.zeros((128, 128, 3), np.uint8)] * 20, 25)
    rows, ctx = run(tmp_path, make_source(tmp_path, tmp_path / "black.mp4", "black"))
    assert rows == [] and ctx.counters["dark_shots"] == 1 and ctx.counters["no_face_shots"] == 1
    with pytest.raises(StageError) as e:
        run(tmp_path, {**make_source(tmp_path, tmp_path / "black.mp4", "gone"), "media_path": "media/nothing.mp4"})
    assert e.value.reason == "media_missing"


def test_rotated_phone_video(demo_corpus, tmp_path):
    """Stored sideways with a display matrix: boxes come out in display coordinates, as upright."""
    upright = decode(demo_corpus / "talking.mp4")[:30]  # 352x288
    stored = [np.ascontiguousarray(np.rot90(f, 1)) for f in upright]  # what a phone stores: turned 90 CCW
    write_mp4(tmp_path / "up.mp4", upright, 25)
    with av.open(str(tmp_path / "phone.mp4"), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 288, 352, "yuv420p"
        vs.set_display_rotation(-90)  # play back turned 90 CW: upright again
        for i, f in enumerate(stored):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            for p in vs.encode(vf):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
    phone = make_source(tmp_path, tmp_path / "phone.mp4", "phone")
    assert phone["rotation"] == 270 and (phone["width"], phone["height"]) == (352, 288)
    (a,), _ = run(tmp_path, make_source(tmp_path, tmp_path / "up.mp4", "up"), min_track_frames=10)
    (b,), _ = run(tmp_path, phone, min_track_frames=10)
    assert np.abs(np.array(a["boxes"]) - np.array(b["boxes"])).max() < 6
    # The same file without its display matrix: faces lie on their side, and the stage says so.
    write_mp4(tmp_path / "sideways.mp4", stored, 25)
    with pytest.raises(StageError) as e:
        run(tmp_path, make_source(tmp_path, tmp_path / "sideways.mp4", "sideways"))
    assert e.value.reason == "sideways_video"


def test_insightface_without_its_model_pack_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"buffalo_l\.zip.*models/buffalo_l"):
        FaceStage(backend="insightface", insightface_root=str(tmp_path)).setup()


def test_backend_embeddings_reach_the_row(tmp_path):
    """Through the real stage, with mediapipe's detector standing in for one that embeds (insightface
    needs a model pack this machine does not have): the row holds the mean of the frame embeddings."""
    stage = FaceStage(min_track_frames=10)
    stage.setup()
    calls = []

    def embed(rgb, det):
        calls.append(det.score)
        return np.array([3.0, 4.0]) * (1 + len(calls) % 2)

    stage._detector.embed = embed
    write_mp4(tmp_path / "still.mp4", portrait_frames(20), 25)
    (row,) = stage.process(make_source(tmp_path, tmp_path / "still.mp4", "still"), StageContext(out=tmp_path))
    assert len(calls) == 5 and np.allclose(row["embedding"], [0.6, 0.8])


def test_identities_cluster_by_embedding_and_fall_back_to_source():
    rng = np.random.default_rng(0)
    people = rng.normal(size=(2, 512))

    def emb(p):
        e = people[p] + 0.5 * rng.normal(size=512)
        return (e / np.linalg.norm(e)).tolist()

    rows = [("a", "a-s0000", "a-s0000-t00", 0, 50, emb(0)), ("a", "a-s0000", "a-s0000-t01", 0, 50, emb(1)),
            ("b", "b-s0000", "b-s0000-t00", 0, 50, emb(0)), ("b", "b-s0001", "b-s0001-t00", 60, 90, emb(1)),
            ("c", "c-s0000", "c-s0000-t00", 0, 50, None)]
    table = pa.Table.from_pylist([dict(zip(["source_id", "shot_id", "track_id", "start_frame", "end_frame",
                                             "embedding"], r, strict=True)) for r in rows])
    ids = cluster_identities(table)
    assert ids[0] == ids[2] == "id-a-s0000-t00" and ids[1] == ids[3] == "id-a-s0000-t01"
    assert ids[4] == "src-c"


def test_dlib_embeddings_tell_people_apart_on_real_photos(demo_corpus):
    """The mediapipe backend's offline embedder, on the packaged photos and footage: the same person
    (astronaut photo vs a frame of interview.mp4; carphone frames 0 and 90) is under the threshold,
    every pair of different people (those, Tom Hanks, the six at t1.jpg's table) is over it."""
    from pipeline.demo_corpus import astronaut
    from stages.faces.detectors import MediapipeDetector
    from stages.faces.identity import DLIB_SAME_PERSON

    det = MediapipeDetector()
    media = packaged_media()

    def embeddings(rgb):
        return [det.embed(rgb, d) for d in det.detect(rgb)]

    with av.open(str(demo_corpus / "interview.mp4")) as c:
        interview = next(f for i, f in enumerate(c.decode(video=0)) if i == 300).to_ndarray(format="rgb24")
    car = decode(media["carphone"])
    people = {
        "astronaut": [embeddings(astronaut())[0], embeddings(interview)[0]],
        "carphone": [embeddings(cv2.resize(car[i], (352, 288)))[0] for i in (0, 90)],
        "hanks": embeddings(np.asarray(Image.open(media["hanks"]).convert("RGB"))),
    }
    group = embeddings(np.asarray(Image.open(media["group"]).convert("RGB")))
    assert len(group) >= 3
    people.update({f"t1-{i}": [e] for i, e in enumerate(group)})
    for name, embs in people.items():
        assert all(abs(np.linalg.norm(e) - 1) < 1e-4 for e in embs)
        if len(embs) == 2:
            assert 1 - embs[0] @ embs[1] < DLIB_SAME_PERSON, name
    names = list(people)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert 1 - people[a][0] @ people[b][0] > DLIB_SAME_PERSON, (a, b)
    det.close()


def test_crop_writer_with_no_frames_fails_instead_of_hanging(tmp_path):
    """A track whose frames never arrive (the decode ended early): close() raises at once. It used to
    wait forever for a stop marker the writer thread had already consumed, hanging the Ray actor."""
    import threading

    from stages.media.crops import CropWriter

    writer = CropWriter(tmp_path / "never.mp4", 25.0, np.array([0.0, 0.0, 10.0, 10.0]), 16)
    outcome: list[BaseException | None] = []

    def close():
        try:
            writer.close()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            outcome.append(e)

    t = threading.Thread(target=close, daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "CropWriter.close() hung"
    assert isinstance(outcome[0], RuntimeError) and "no frames" in str(outcome[0])
    assert not (tmp_path / "never.mp4").exists()


def _track(frames, x, y=100.0, side=80.0, score=0.9):
    from stages.faces.detectors import Detection
    from stages.faces.tracker import Track

    return Track({f: Detection(np.array([x + dx, y, x + dx + side, y + side], float), score)
                  for f, dx in zip(frames, np.linspace(0, 20, len(frames)), strict=True)})


def test_overlapping_and_broken_tracks_of_one_face_become_one():
    """A face given twice (a second, shifted box over the same frames), and a face lost for 12 frames in a
    head turn, are one track each; a second person beside them and a face back after 2 s are not merged."""
    from stages.faces.tracker import merge_tracks

    main = _track(range(0, 100, 5), 100)
    twice = _track(range(20, 60, 5), 110, side=90, score=0.8)  # same face, another box: overlaps in time and place
    after_turn = _track(range(112, 200, 5), 125)  # where the face was, 12 frames after the last box
    neighbour = _track(range(0, 200, 5), 300)  # another person beside, all shot long
    much_later = _track(range(260, 300, 5), 125)  # back after 2.4 s: a new track
    merged = merge_tracks([twice, main, after_turn, neighbour, much_later])
    spans = sorted((t.first, t.last) for t in merged)
    assert spans == [(0, 195), (0, 197), (260, 295)], spans
    one = next(t for t in merged if t.first == 0 and t.dets[0].box[0] == 100)
    assert one.dets[20].score == 0.9  # where both had a box, the more confident one stays


def whip_pan_frames(n: int = 75, start: int = 27, frames: int = 10, dx: float = 400.0) -> list[np.ndarray]:
    """Tom Hanks's photo (120 px) on a grey 640x360 canvas, panned `dx` px right in `frames` frames
    from `start` (eased in and out), still before and after."""
    face = cv2.resize(np.asarray(Image.open(packaged_media()["hanks"]).convert("RGB")), (120, 120))
    out = []
    for i in range(n):
        t = 0.5 - 0.5 * np.cos(np.pi * np.clip((i - start) / frames, 0, 1))
        canvas = np.full((360, 640, 3), 128, np.uint8)
        x = int(round(60 + dx * t))
        canvas[120:240, x : x + 120] = face
        out.append(canvas)
    return out


def test_a_face_panned_faster_than_the_tracker_predicts_stays_one_track(tmp_path):
    """A whip pan (62 % of the width in 10 frames) just after a whole-frame scan: the samples between
    scans look only near where the face was expected, miss it, and used to wait for the next scan (25
    frames on), which found it as a new track too far from the old one to merge. A miss now scans."""
    write_mp4(tmp_path / "whip.mp4", whip_pan_frames(), 25)
    rows, _ = run(tmp_path, make_source(tmp_path, tmp_path / "whip.mp4", "whip"), min_track_frames=10)
    assert [(r["start_frame"], r["end_frame"]) for r in rows] == [(0, 75)]
