"""Two training processes under torchrun (gloo on the CPU), as a multi-GPU user launches them.

One checkpoint folder written by rank 0 only (no race on the temporary folder), each rank drew its
own windows (the data shard is keyed by (seed, step, rank, micro-batch)), gradient accumulation of
two micro-batches, and a run cut after step 2 and resumed gives bit-for-bit the weights, EMA and
optimizer state of an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from model.checkpoint import read_meta

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(clips_out: Path, out: Path, steps: int, config: Path, resume: bool = False) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()),
           "-m", "model.train", "--data", str(clips_out), "--stage", "1", "--out", str(out),
           "--steps", str(steps), "--config", str(config), "--quiet", *(["--resume"] if resume else [])]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(clips_out, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    config = root / "c.json"
    config.write_text(json.dumps({"batch_size": 1, "save_every": 1, "keep_checkpoints": 2,
                                  "gradient_accumulation": 2}))
    torchrun(clips_out, root / "straight", 3, config)
    torchrun(clips_out, root / "cut", 2, config)
    torchrun(clips_out, root / "cut", 3, config, resume=True)
    return {"straight": root / "straight", "cut": root / "cut"}


def test_rank_zero_alone_writes_the_checkpoints(runs):
    names = sorted(p.name for p in runs["straight"].iterdir())
    assert names == ["loss.csv", "step-0000002", "step-0000003"]  # keep_checkpoints 2, no .tmp left
    meta = read_meta(runs["straight"])
    assert meta["world_size"] == 2 and meta["gradient_accumulation"] == 2


def test_each_rank_draws_its_own_windows(runs):
    with open(runs["straight"] / "loss.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    for row in rows:
        seen = [w.split(":", 1) for w in row["windows"].split()]
        assert sorted(rank for rank, _ in seen) == ["0", "0", "1", "1"]  # 2 ranks x 2 micro-batches
        by_rank = {rank: {w for r, w in seen if r == rank} for rank in ("0", "1")}
        assert by_rank["0"] != by_rank["1"], row


def test_resume_under_torchrun_is_bit_exact(runs):
    a, b = read_meta(runs["straight"]), read_meta(runs["cut"])
    assert a["model_sha256"] == b["model_sha256"]
    for name in ("ema.safetensors", "optimizer.safetensors"):
        sa, sb = (load_file(runs[k] / "step-0000003" / name) for k in ("straight", "cut"))
        assert sa.keys() == sb.keys() and all((sa[k] == sb[k]).all() for k in sa)
