"""A real two-node Ray cluster on this machine, with OUT on a local S3-protocol server.

Each node is its own `ray start --block` process (a head and a second raylet that joins it, one
CPU each); the driver is `emo curate --address` in a third process. So this cluster never meets
the session's shared local Ray (tests/conftest.py `ray_local`): other ports, another temp dir,
and the test ends only the processes it started, by their process group (never `ray stop`,
which would end every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from manifests import ManifestStore
from pipeline.serve import LoopbackServer
from tests.pipeline.test_curate import write_sources
from tests.s3_server import moto_s3, new_bucket

RAY = str(Path(sys.executable).with_name("ray"))
pytestmark = pytest.mark.skipif(not Path(RAY).exists(), reason="the `ray` command is not beside this Python")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_node(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    listen, metrics, grpc, rt = free_ports(4)
    cmd = [RAY, "start", "--block", "--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats",
           "--dashboard-agent-listen-port", str(listen), "--metrics-export-port", str(metrics),
           "--dashboard-agent-grpc-port", str(grpc), "--runtime-env-agent-port", str(rt), *args]
    if "--head" in args:
        cmd += ["--include-dashboard", "false"]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop_node(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:  # the head's `ray start --block` outlived 30 s of SIGTERM; its group is SIGKILLed as surely after 5
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(address, the second node's `ray start` process, per-node scratch folders, S3 endpoint)."""
    tmp = tmp_path_factory.mktemp("cluster")
    with moto_s3() as endpoint:
        (port,) = free_ports(1)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}  # the driver forwards them
        base["RAY_health_check_period_ms"] = "1000"  # notice a dead node in seconds, not tens of seconds
        base["RAY_AUTH_MODE"] = "disabled"  # Ray 2.60's token: the `ray start` nodes and our drivers share none
        base["EMO_KEEP_SCRATCH"] = "1"  # each worker's scratch folder stays: the sign of which node worked
        scratch = [tmp / "head", tmp / "node2"]
        for s in scratch:
            s.mkdir()
        head = start_node(["--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                           "--temp-dir", str(tmp / "ray")], {**base, "EMO_SCRATCH": str(scratch[0])}, tmp / "head.log")
        address = f"127.0.0.1:{port}"
        nodes = [head]
        try:
            _wait_for_cpus(address, 1, head)
            second = start_node(["--address", address, "--node-ip-address", "127.0.0.1"],
                                {**base, "EMO_SCRATCH": str(scratch[1])}, tmp / "node2.log")
            nodes.append(second)
            _wait_for_cpus(address, 2, second)
            yield address, second, scratch, endpoint
        finally:
            for p in reversed(nodes):
                stop_node(p)


def _wait_for_cpus(address: str, cpus: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    probe = (f"import ray, time\nray.init(address={address!r}, log_to_driver=False)\n"
             f"t = time.time()\nwhile ray.cluster_resources().get('CPU', 0) < {cpus} and time.time() - t < 60: time.sleep(0.5)\n"
             "print(int(ray.cluster_resources().get('CPU', 0)))")
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"`ray start` exited with {proc.returncode}"
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=90, env=env)
        if r.returncode == 0 and r.stdout.strip().endswith(str(cpus)):
            return
        time.sleep(1)
    raise AssertionError(f"the cluster at {address} never showed {cpus} CPUs")


def curate_cmd(sources: Path, uri: str, address: str, endpoint: str, stages: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "curate", str(sources), "--out", uri, "--stages", stages,
            "--address", address, "--endpoint-url", endpoint]


def driver_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "RAY_AUTH_MODE": "disabled"}


def versions_per_key(endpoint: str, bucket: str, prefix: str) -> dict[str, int]:
    """How many times each object under prefix was written (the bucket is versioned)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    counts: dict[str, int] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            counts[v["Key"]] = counts.get(v["Key"], 0) + 1
    return counts


def versioned_bucket(endpoint: str) -> str:
    import boto3

    name = new_bucket(endpoint)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").put_bucket_versioning(
        Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def test_two_nodes_process_every_source_exactly_once(cluster, demo_corpus, tmp_path):
    address, _, scratch, endpoint = cluster
    files = ["talking.mp4", "interview.mp4", "cuts.mp4", "bad/empty.mp4"]
    sources = write_sources(tmp_path / "s.csv", [str(demo_corpus / f) for f in files])
    bucket = versioned_bucket(endpoint)
    uri = f"s3://{bucket}/run"
    r = subprocess.run(curate_cmd(sources, uri, address, endpoint, "download,shots"), env=driver_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    store = ManifestStore(uri)
    ok = [s for s in store.read("sources").to_pylist() if s["status"] == "ok"]
    assert len(ok) == 3 and store.read("sources").num_rows == 4
    runs = store.read("stage_runs").to_pylist()
    assert sorted((x["stage"], x["source_id"]) for x in runs if x["stage"] == "shots") == sorted(
        ("shots", s["source_id"]) for s in ok)
    assert all(x["status"] == "ok" for x in runs if x["stage"] == "shots")
    # Exactly once: every shard and every run row was written once, never rewritten by a second try.
    written = versions_per_key(endpoint, bucket, "run/manifests/")
    assert written and set(written.values()) == {1}, {k: n for k, n in written.items() if n != 1}
    # Both nodes did work: each worker made its scratch mirror under its own node's EMO_SCRATCH.
    assert all(any(s.glob("emo-scratch-*")) for s in scratch), [list(s.iterdir()) for s in scratch]


@pytest.mark.slow
def test_second_node_killed_mid_run_finishes_on_the_head(cluster, demo_corpus, tmp_path):
    address, second, _, endpoint = cluster
    with LoopbackServer(demo_corpus, slow_s=1.0) as srv:
        uris = [srv.url(f"fault/slow/talking.mp4?n={i}") for i in range(8)] + [srv.url("missing.mp4")]
        sources = write_sources(tmp_path / "s.csv", uris)
        uri = f"s3://{new_bucket(endpoint)}/killed"
        proc = subprocess.Popen(curate_cmd(sources, uri, address, endpoint, "download"), env=driver_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        store = ManifestStore(uri)
        deadline = time.time() + 180
        while time.time() < deadline and len(store.shard_keys("sources")) < 2 and proc.poll() is None:
            time.sleep(0.2)
        raylets = [c for c in psutil.Process(second.pid).children(recursive=True) if c.name() == "raylet"]
        assert raylets, "the second node's raylet was not found"
        for c in raylets:
            c.send_signal(signal.SIGKILL)
        done_at_kill = len(store.shard_keys("sources"))
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert done_at_kill < len(uris), "the kill should land mid-run"
    rows = ManifestStore(uri).read("sources").to_pylist()
    assert sorted(r["input_id"] for r in rows) == sorted({r["input_id"] for r in rows})  # no duplicate
    assert len(rows) == len(uris)  # no missing row
    assert sum(r["status"] == "ok" for r in rows) == 8
    runs = ManifestStore(uri).read("stage_runs").to_pylist()
    assert len(runs) == len({x["source_id"] for x in runs}) == len(uris)
