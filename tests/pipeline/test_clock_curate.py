"""After `emo curate` (run as a user runs it), every kept clip's crop mp4 and wav cover the same
instants: in each container of tests/fixtures/clock_corpus.py the flash frames of the crop and the
tone onsets of its wav coincide within one frame at 50 fps, and both sit where the source has them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from manifests import ManifestStore
from tests.fixtures.clock_corpus import EVENTS_S, build, variants
from tests.stages.test_media_clock import ONE_FRAME_50FPS, flash_times, tone_onsets

ROOT = Path(__file__).resolve().parents[2]
SPLICED = {"audio_change.ts", "size_change.ts"}  # two TS halves joined: FFmpeg's join moves both streams alike


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    tmp = tmp_path_factory.mktemp("clock_curate")
    build(tmp / "media")
    # The voice is not the carphone man's and no diarize runs: each track is one clip, judged for
    # pictures only. The upscaled half of size_change.ts is soft: blur is not what this measures.
    (tmp / "config.yaml").write_text("quality:\n  max_clip_s: 10.0\n  rules: {blurry: 5.0}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "curate", str(tmp / "media"), "--out", str(tmp / "out"),
                           "--stages", "download,shots,faces,quality", "--config", str(tmp / "config.yaml"),
                           "--num-cpus", "2"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    store = ManifestStore(tmp / "out")
    names = {r["source_id"]: Path(r["uri"]).name for r in store.read("sources").to_pylist()}
    clips = {names[c["source_id"]]: c for c in store.read("clips").to_pylist()}
    return tmp / "out", clips | {"_timeline": {names[r["source_id"]]: r for r in store.read("timeline").to_pylist()},
                                 "_tracks": {names[r["source_id"]]: r for r in store.read("tracks").to_pylist()}}


@pytest.mark.parametrize("name", sorted(variants()))
def test_a_kept_clip_has_its_sound_in_time(curated, name):
    out, clips = curated
    assert name in clips, f"{name}: no clip kept"
    c = clips[name]
    wav, sr = sf.read(out / c["audio_path"], dtype="float32")
    flashes, video_end = flash_times(out / c["crop_path"])
    onsets = np.asarray(tone_onsets(wav) if sr == 16000 else [])
    assert len(flashes) == len(onsets) == len(EVENTS_S), (flashes, onsets)
    lag = onsets - flashes
    assert np.all(np.abs(lag) < ONE_FRAME_50FPS), f"{name}: sound minus picture {np.round(lag * 1000)} ms"
    assert abs(len(wav) / sr - video_end) < 0.021 and c["n_frames"] == round((c["end_s"] - c["start_s"]) * c["fps"])
    if name not in SPLICED:  # on the source's clock, where the fixture put them
        assert np.all(np.abs(flashes + c["start_s"] - np.asarray(EVENTS_S)) < ONE_FRAME_50FPS), flashes + c["start_s"]
    assert abs(c["av_lag_ms"]) < 10.0


def test_a_variable_rate_source_is_written_at_a_constant_rate_and_says_so(curated):
    _, clips = curated
    vfr, plain = clips["vfr.mp4"], clips["mp4_aac.mp4"]
    assert vfr["resampled"] and vfr["fps"] == 25.0 and not clips["_timeline"]["vfr.mp4"]["constant_rate"]
    assert not plain["resampled"] and plain["n_frames"] == plain["end_frame"] - plain["start_frame"]


def test_a_resolution_change_keeps_one_coordinate_system(curated):
    _, clips = curated
    sizes = clips["_timeline"]["size_change.ts"]["sizes"]
    assert [s[1:] for s in sizes] == [[352, 288], [704, 576]] and sizes[1][0] > 0
    track = clips["_tracks"]["size_change.ts"]
    boxes = np.asarray(track["boxes"])
    assert not track["reasons"] and boxes[:, 2].max() <= 352 and boxes[:, 3].max() <= 288
    # the face is as big after the change as before, in the first size's pixels
    half = sizes[1][0] - track["start_frame"]
    side = boxes[:, 2] - boxes[:, 0]
    assert 0.8 < np.median(side[half:]) / np.median(side[:half]) < 1.25
