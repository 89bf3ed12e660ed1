"""Faults caused for real during `curate()` on a real local Ray: nothing is lost, nothing is repeated.

Covered elsewhere, not repeated here: the driver SIGKILLed mid-run and rerun
(tests/pipeline/test_curate.py::test_sigkill_mid_run_then_rerun_finishes_without_duplicates) and a
write interrupted before its rename (tests/manifests/test_store.py).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from manifests import ManifestStore
from manifests.store import rows_to_table
from pipeline import plan
from pipeline.plan import PipelineSettings, load_config
from pipeline.runner import CurateOptions, curate
from pipeline.serve import LoopbackServer
from stages.base import StageContext
from stages.faces.stage import FaceStage
from stages.media.video_io import write_mp4
from tests.fixtures.bad_corpus import carphone_frames, talking_clip

ALL_STAGES = ("download", "shots", "faces", "diarize", "quality")
TABLES_OF = {name: plan.stage_class(name).writes for name in ("shots", "faces", "diarize")}


class FacesKilledMidSource(FaceStage):
    """The real face stage; its worker process SIGKILLs itself inside the detector, on chosen sources.

    `victim`: killed once, on its `kill_at_call`-th detector call (whole-frame or near a face) (the marker file says it happened).
    `poison`: killed on every try, like a file that crashes the decoder each time.
    Test-only: the runner builds it from the stage registry, which the test points here.
    """

    def __init__(self, marker: str = "", victim: str = "", poison: str = "", kill_at_call: int = 3, **kw):
        super().__init__(**kw)
        self.marker, self.victim, self.poison, self.kill_at_call = marker, victim, poison, kill_at_call

    def process(self, source, ctx):
        self.setup()
        name = Path(source["uri"]).name
        first_time = name == self.victim and not Path(self.marker).exists()
        if first_time or name == self.poison:
            calls = itertools.count()

            def killing(real):
                def detect(rgb):
                    if next(calls) == self.kill_at_call:
                        if first_time:
                            Path(self.marker).write_text(json.dumps({"pid": os.getpid(), "at": time.time()}))
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real(rgb)
                return detect

            self._detector.detect = killing(self._detector.detect)
            self._detector.detect_close = killing(self._detector.detect_close)
        try:
            return super().process(source, ctx)
        finally:
            for method in ("detect", "detect_close"):
                vars(self._detector).pop(method, None)  # the class's own methods again


def test_time_limit_scales_with_the_source_and_settings_are_checked(tmp_path):
    settings = PipelineSettings.from_config({"pipeline": {"source_timeout_s": 10, "timeout_per_media_s": 2}})
    assert settings.time_limit("faces", {"duration_s": 30.0}) == 70
    assert settings.time_limit("faces", {"n_frames": 250, "fps": 25.0}) == 30  # no duration: frames / fps
    assert settings.time_limit("download", {}) == PipelineSettings().download_timeout_s
    config = tmp_path / "c.yaml"
    config.write_text("pipeline:\n  source_timeout: 5\n")  # misspelt: fails before any work
    with pytest.raises(ValueError, match="unknown pipeline settings"):
        load_config(config)


def write_sources(path: Path, files: list[Path | str]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uri", "license", "consent"])
        w.writerows([str(f), "CC-BY-4.0", "yes"] for f in files)
    return path


def runs_by_source(store: ManifestStore) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for r in store.read("stage_runs").to_pylist():
        assert r["stage"] not in out.setdefault(r["source_id"], {}), f"two rows for {r['stage']} {r['source_id']}"
        out[r["source_id"]][r["stage"]] = r
    return out


def test_worker_killed_mid_model_stage_is_retried_and_a_raising_stage_is_recorded(ray_local, tmp_path, monkeypatch):
    media = tmp_path / "in"
    media.mkdir()
    files = [talking_clip(media / f"talk{i}.mp4", seconds=1.2, start=15 * i) for i in range(3)]
    tiny = media / "tiny.mp4"  # 32x32: the face stage raises frame_too_small on it
    write_mp4(tiny, [f[:32, :32] for f in carphone_frames(30)], 25.0)
    files.append(tiny)
    marker = tmp_path / "killed.json"
    monkeypatch.setitem(plan.STAGES, "faces", f"{__name__}:FacesKilledMidSource")
    config = {"faces": {"marker": str(marker), "victim": "talk1.mp4", "poison": "talk2.mp4"},
              "pipeline": {"max_worker_deaths": 2}}
    out = tmp_path / "out"
    curate(CurateOptions(sources=str(write_sources(tmp_path / "s.csv", files)), out=str(out), stages=ALL_STAGES,
                         config=config))

    # The kill was real: that process is gone, and it was inside the face detector of talk1.
    killed = json.loads(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)
    store = ManifestStore(out)
    sources = {Path(r["uri"]).name: r for r in store.read("sources").to_pylist()}
    assert len(sources) == 4 and all(r["status"] == "ok" for r in sources.values())
    runs = runs_by_source(store)
    sid = {name: r["source_id"] for name, r in sources.items()}
    for name, r in sources.items():
        assert set(runs[sid[name]]) == set(ALL_STAGES) - {"download"}, name
        assert runs[r["input_id"]]["download"]["status"] == "ok"
        for stage, tables in TABLES_OF.items():  # rows on disk are exactly the rows the stage_runs row counted
            on_disk = sum(store.read_shard(t, sid[name]).num_rows for t in tables)
            assert on_disk == (runs[sid[name]][stage]["n_rows"] if runs[sid[name]][stage]["status"] == "ok" else 0)
    victim = runs[sid["talk1.mp4"]]
    assert all(victim[s]["status"] == "ok" for s in victim), victim
    # The retry skipped what was already recorded: shots finished before the kill and was not run again.
    assert victim["shots"]["finished_at"].timestamp() < killed["at"] < victim["faces"]["finished_at"].timestamp()
    # The retried faces rows equal those of an uninterrupted run of the same stage on the same source.
    clean = tmp_path / "clean"
    shutil.copytree(out / "media", clean / "media")
    shutil.copytree(out / "manifests" / "shots", clean / "manifests" / "shots")
    again = FaceStage().process(sources["talk1.mp4"], StageContext(out=clean))
    assert again and store.read_shard("tracks", sid["talk1.mp4"]).to_pylist() == rows_to_table("tracks", again).to_pylist()

    # A source that kills its worker every time ends as worker_died after max_worker_deaths; the run finished.
    poison = runs[sid["talk2.mp4"]]
    assert poison["faces"]["status"] == "failed"
    assert poison["faces"]["error"].startswith("worker_died: the worker process died 2 times running faces")
    assert poison["quality"]["status"] == "skipped" and poison["diarize"]["status"] == "ok"

    # A stage that raises: its error text is in that source's row; its other stages and the other sources went on.
    small = runs[sid["tiny.mp4"]]
    assert small["faces"]["status"] == "failed"
    assert small["faces"]["error"] == "frame_too_small: 32x32 frames cannot hold a 64 px face"
    assert small["shots"]["status"] == small["diarize"]["status"] == "ok"
    assert small["quality"]["error"] == "upstream_failed: faces failed for this source"
    assert all(runs[sid["talk0.mp4"]][s]["status"] == "ok" for s in ALL_STAGES[1:])
    assert not (out / ".attempts").exists() or not any((out / ".attempts").iterdir())  # counters cleared at the end



class StalledFifo:
    """A named pipe that gives its reader the first `n` bytes of a real mp4, then nothing, until closed.

    The decoder blocks inside FFmpeg's read(), in C, as it would on a stalled network mount.
    """

    def __init__(self, path: Path, data: bytes, n: int = 20_000):
        self.path, self.data, self.n, self.stop = path, data, n, threading.Event()
        os.mkfifo(path)
        self.thread = threading.Thread(target=self._feed, daemon=True)
        self.thread.start()

    def _feed(self) -> None:
        fd = os.open(self.path, os.O_RDWR)  # read-write: open never blocks, and the pipe never sees EOF
        try:
            os.write(fd, self.data[: self.n])
            self.stop.wait()
        finally:
            os.close(fd)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def test_a_hanging_source_becomes_a_timeout_row_and_the_run_finishes(ray_local, tmp_path):
    media = tmp_path / "in"
    media.mkdir()
    good, stalled = talking_clip(media / "good.mp4", 2.0), talking_clip(media / "stalled.mp4", 2.0, start=40)
    # Generous for a 2-second clip on a busy 2-core machine, short for a test that waits on three hangs.
    settings = {"source_timeout_s": 6.0, "timeout_per_media_s": 2.0, "download_timeout_s": 6.0}
    out = tmp_path / "out"
    store = ManifestStore(out)
    with LoopbackServer(media) as server:
        drip = server.url("fault/drip/good.mp4")
        sources = write_sources(tmp_path / "s.csv", [good, stalled, drip])
        opts = CurateOptions(sources=str(sources), out=str(out), stages=("download",), config={"pipeline": settings})

        # 1. A server that sends one byte a second: no read ever times out, only the source's limit ends it.
        t0 = time.monotonic()
        summary = curate(opts)
        print(f"download phase with one dripping source: {time.monotonic() - t0:.1f} s")
    rows = {r["uri"]: r for r in store.read("sources").to_pylist()}
    assert rows[drip]["status"] == "failed", rows[drip]
    assert rows[drip]["error"].startswith("timeout: fetching took longer than its limit of 6 s"), rows[drip]["error"]
    assert rows[str(good)]["status"] == rows[str(stalled)]["status"] == "ok"
    assert dict(summary.failed) == {"timeout": 1} and summary.ok == 2

    # 2. A stored file whose decode blocks in C. shots and diarize share one actor (diarize holds a
    # model): the actor process ends itself after the timeout, and its replacement goes on to diarize.
    stored = out / rows[str(stalled)]["media_path"]
    data = stored.read_bytes()
    stored.unlink()
    fifo = StalledFifo(stored, data)
    try:
        t0 = time.monotonic()
        curate(CurateOptions(**{**vars(opts), "stages": ("download", "shots", "diarize")}))
        print(f"media phase with one stalled source: {time.monotonic() - t0:.1f} s")
    finally:
        fifo.close()
    runs = runs_by_source(store)
    hung, fine = runs[rows[str(stalled)]["source_id"]], runs[rows[str(good)]["source_id"]]
    limit = 6.0 + 2.0 * rows[str(stalled)]["duration_s"]
    assert hung["shots"]["status"] == "failed"
    assert hung["shots"]["error"].startswith(f"timeout: shots took longer than its limit of {limit:.0f} s"), hung["shots"]
    assert hung["diarize"]["status"] == fine["shots"]["status"] == fine["diarize"]["status"] == "ok"
    assert store.read("stage_runs").num_rows == 3 + 2 * 2  # one per input, one per (stage, source)
    assert not (out / ".attempts").exists() or not any((out / ".attempts").iterdir())  # counters cleared at the end


def test_building_the_operators_raises_no_deprecation_of_rays_remote_args(ray_local, tmp_path):
    """Ray 2.60 warns on every remote arg without a named parameter; a user's every curate printed it.
    The actor pool leaves its restarts to Ray Data's defaults; the task path's bounded max_retries,
    which has no named parameter yet, is the one use left, and says nothing."""
    import warnings

    import ray.data
    from ray.util.annotations import RayDeprecationWarning

    from pipeline.runner import _map
    from pipeline.worker import ChainWorker, DownloadWorker

    ds = ray.data.from_items([{"x": 1}])
    settings = PipelineSettings()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _map(ds, DownloadWorker, plan.build_stages(["download"]), str(tmp_path), 1, settings, 1)
        _map(ds, ChainWorker, plan.build_stages(["shots", "faces"]), str(tmp_path), 1, settings, 1)
    assert not [w for w in seen if issubclass(w.category, RayDeprecationWarning)], [str(w.message) for w in seen]
