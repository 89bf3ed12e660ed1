"""Every `emo` entry point as a user runs it (a subprocess): exit status 0 on success; on failure
non-zero, with one line on stderr that starts with `emo: error:` and no traceback.

Kept fast: curate runs the download stage over one demo-corpus video; train, sample and detect use
the tiny clips table (tests/fixtures/tiny_clips.py), one training step, half a second of speech.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tests.fixtures.tiny_clips import build_clips

ROOT = Path(__file__).resolve().parents[2]


def emo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def assert_ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stderr[-2000:]


def assert_one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode != 0, done.stdout[-1000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("emo: error:")]
    assert len(errors) == 1, done.stderr[-2000:]
    assert all(w in errors[0] for w in words), errors[0]


@pytest.fixture(scope="module")
def work(demo_corpus, tmp_path_factory) -> Path:
    """A curated OUT of one demo video (download stage) and a tiny clips OUT, side by side."""
    root = tmp_path_factory.mktemp("cli")
    (root / "s.csv").write_text(f"uri,license,consent\n{demo_corpus / 'talking.mp4'},CC-BY-4.0,yes\n")
    build_clips(root / "clips")
    wav, sr = sf.read(str(demo_corpus / "speech.wav"), dtype="float32")
    sf.write(root / "speech.wav", wav[: sr // 2], sr)
    (root / "build.yaml").write_text(f"sources:\n  - uri: {demo_corpus / 'talking.mp4'}\n    license: CC-BY-4.0\n"
                                     "    consent: \"yes\"\ncurate:\n  stages: [download]\n")
    return root


def test_curate_export_audit_optout(work):
    assert_ok(emo("curate", "s.csv", "--out", "out", "--stages", "download", "--num-cpus", "1", cwd=work))
    assert_ok(emo("export", "out", cwd=work))
    assert_ok(emo("audit", "out", cwd=work))
    source = next(line.split(",")[0] for line in (work / "s.csv").read_text().splitlines()[1:])
    assert_ok(emo("optout", "out", "--source", source, cwd=work))


def test_curate_export_audit_optout_failures(work):
    assert_one_line_error(emo("curate", "nowhere.csv", "--out", "o", "--num-cpus", "1", cwd=work), "nowhere.csv")
    assert_one_line_error(emo("export", "nowhere", cwd=work), "nowhere")
    assert_one_line_error(emo("audit", "nowhere", cwd=work), "nowhere")
    assert_one_line_error(emo("optout", "nowhere", "--source", "x", cwd=work), "x")


def test_build(work):
    assert_ok(emo("build", "build.yaml", "--out", "b", "--dry-run", cwd=work))
    assert_one_line_error(emo("build", "nowhere.yaml", "--out", "b", cwd=work), "nowhere.yaml")


def test_train_sample_detect(work):
    assert_ok(emo("train", "--data", "clips", "--stage", "2", "--out", "run", "--steps", "1", "--quiet", cwd=work))
    from pipeline.demo_corpus import packaged_media

    assert_ok(emo("sample", "--checkpoint", "run", "--image", str(packaged_media()["hanks"]), "--audio", "speech.wav",
                  "--out", "v.mp4", "--steps", "1", "--device", "cpu", cwd=work))
    assert_ok(emo("detect", "v.mp4", "--checkpoints", "run", cwd=work))


def test_train_sample_detect_failures(work):
    assert_one_line_error(emo("train", "--data", "nowhere", "--stage", "1", "--out", "r", "--steps", "1", cwd=work),
                          "nowhere", "no clips manifest")
    assert_one_line_error(emo("sample", "--checkpoint", "nowhere", "--image", "x.png", "--audio", "speech.wav",
                              "--out", "v2.mp4", cwd=work), "x.png")
    assert_one_line_error(emo("detect", "s.csv", cwd=work), "s.csv")
