"""Session-wide fixtures: one local Ray for the whole test session, one demo corpus."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", category=UserWarning, module="pyannote")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session", autouse=True)
def numba_caches_filled_once():
    """Before any test or Ray worker runs pyin: numba's gufunc cache written by this one process
    (stages/diarize/vocal.warm_compile_caches; concurrent first compiles can crash, numba #10128)."""
    from stages.diarize.vocal import warm_compile_caches

    warm_compile_caches()


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by every test that needs one."""
    import ray

    from pipeline.runner import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """The demo corpus (real packaged media, composed), built once per session."""
    from pipeline.demo_corpus import build_demo_corpus

    root = tmp_path_factory.mktemp("demo")
    build_demo_corpus(root)
    return root


@pytest.fixture(scope="session")
def demo_curated(ray_local, demo_corpus, tmp_path_factory):
    """The demo corpus curated once with every stage and its config.yaml into a folder, as the demo
    does: (out, sources file, CurateOptions, summary). Its server stays up for the session, so a test
    may curate the same sources file again (into a bucket, say) and expect the same manifests.
    Read only: a test that changes what it finds works on a copy (tests/pipeline/test_demo_e2e.py)."""
    from pipeline.plan import load_config
    from pipeline.runner import CurateOptions, curate
    from pipeline.serve import LoopbackServer
    from tests.pipeline.test_curate import served_demo_sources

    tmp = tmp_path_factory.mktemp("demo_curated")
    with LoopbackServer(demo_corpus) as srv:
        sources = served_demo_sources(demo_corpus, srv, tmp)
        opts = CurateOptions(sources=str(sources), out=str(tmp / "out"), config=load_config(demo_corpus / "config.yaml"))
        summary = curate(opts)
        yield tmp / "out", sources, opts, summary


@pytest.fixture
def server(demo_corpus):
    """A loopback HTTP server over the demo corpus, with /fault/... paths that misbehave."""
    from pipeline.serve import LoopbackServer

    with LoopbackServer(demo_corpus, slow_s=1.0) as srv:
        yield srv


@pytest.fixture(scope="module")
def one_cpu_thread():
    """One torch thread: on a shared 2-core machine, two spinning OpenMP threads run ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
