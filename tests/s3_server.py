"""A real S3-protocol server on 127.0.0.1 for tests: moto's server mode, in this process's threads.

The code under test talks to it over HTTP with the same client it would use against AWS
(pyarrow's S3 filesystem); only the endpoint differs (AWS_ENDPOINT_URL).
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator

import pytest

S3_ENV = {"AWS_ACCESS_KEY_ID": "emo-test", "AWS_SECRET_ACCESS_KEY": "emo-test", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def moto_s3(own_process: bool = False) -> Iterator[str]:
    """Start the server; yields its endpoint URL and sets the AWS_* environment to reach it.

    own_process: run it as a separate process (as a real store is), not in this process's threads,
    where it shares the GIL with whatever this process does (benchmarks use it; tests need not)."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'moto[server]')")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    if own_process:
        server = _MotoProcess()
    else:
        server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _MotoProcess:
    """`python -m moto.server` on a free port of 127.0.0.1, in its own process."""

    def start(self) -> None:
        import socket
        import subprocess
        import sys
        import time

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("moto.server did not start within 60 s")

    def get_host_and_port(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def new_bucket(endpoint: str) -> str:
    """A fresh bucket on the server; its name."""
    import boto3

    name = f"emo-test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in S3_ENV.items() if "KEY" in k},
                 region_name=S3_ENV["AWS_DEFAULT_REGION"]).create_bucket(Bucket=name)
    return name


def list_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in S3_ENV.items() if "KEY" in k},
                      region_name=S3_ENV["AWS_DEFAULT_REGION"])
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys
