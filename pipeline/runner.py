"""`emo curate`: the Ray Data plan. The only module that imports ray.

Phase 1 downloads every pending input (one `sources` row each). Phase 2 streams every distinct
ok source (by content) through the media stages in order; each stage writes its own shard and a
ledger row per source (pipeline/ledger.py). What is pending is decided once per phase, here: a
rerun skips what is finished, and redoes what failed for a passing reason and what was made with
other settings (with the stages that read its output).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from manifests import ManifestStore
from manifests.fs import FORWARDED_ENV, Location, is_uri
from manifests.redact import KEY_FILE, redact_uri, uri_key
from manifests.tombstones import load_tombstones
from pipeline.ledger import Ledger
from pipeline.plan import PipelineSettings, build_stages
from pipeline.sources_file import read_sources
from pipeline.summary import Summary, summarize
from pipeline.worker import ChainWorker, DownloadWorker, clear_attempts
from stages.base import Stage

log = logging.getLogger(__name__)
DEFAULT_STAGES = ("download", "shots", "faces", "diarize", "quality")


@dataclass
class CurateOptions:
    sources: str
    out: str
    stages: tuple[str, ...] = DEFAULT_STAGES
    config: dict[str, dict[str, Any]] | None = None
    address: str | None = None
    num_cpus: int | None = None
    max_workers: int | None = None  # actors per model stage; default: the CPUs Ray has


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start a local Ray (default) or join a cluster; a no-op when one is already connected."""
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        kwargs["address"] = address
    elif num_cpus:
        kwargs["num_cpus"] = num_cpus
    # Workers must import our packages the same way the driver does.
    root = str(Path(__file__).resolve().parents[1])
    kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}}
    ray.init(**kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.verbose_progress = False


def _map(ds: ray.data.Dataset, worker_cls: type, stages: list[Stage], out: str, max_workers: int,
         settings: PipelineSettings, n_items: int, object_sources: bool = False,
         blocked_sha256: set[str] | None = None) -> ray.data.Dataset:
    """Stages fused as one Ray Data operator: an actor pool when any holds a model, tasks otherwise.

    A worker process that dies (killed, crashed, or ended by the worker after a stuck stage) is
    replaced and its batch retried: the retry skips every stage whose `stage_runs` row is on disk.
    Each death is charged to the (stage, source) that was running, which the worker records as
    failed after max_worker_deaths, so retries always end. Actor tasks may retry without bound
    (Ray Data's default, stated here because the time limit relies on it): an actor's death also
    fails the batches queued behind the one that killed it, and a bound would count those too.

    The pool starts at its full size (min(max_workers, sources)) and gives each actor one source
    at a time: an autoscaling pool that starts at one actor, or actors that queue several sources
    each, leave CPUs idle while one actor works through a queue (measured by bench_curate).
    """
    gpu_cluster = ray.cluster_resources().get("GPU", 0) > 0
    remote: dict[str, Any] = {"num_cpus": max(s.resources.num_cpus for s in stages),
                              "num_gpus": max(s.resources.num_gpus for s in stages) if gpu_cluster else 0}
    store_env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    # The driver's object store settings, on whichever node runs the stage (OUT or inputs on a store).
    if (is_uri(out) or object_sources) and store_env:
        remote["runtime_env"] = {"env_vars": store_env}
    memory = max(s.resources.memory_mb or 0 for s in stages)
    if memory:
        remote["memory"] = memory * 1024 * 1024
    # DownloadWorker wraps one stage, ChainWorker a list of them.
    kwargs: dict[str, Any] = {"out": out, "settings": settings}
    kwargs.update({"stage": stages[0], "blocked_sha256": frozenset(blocked_sha256 or ())}
                  if worker_cls is DownloadWorker else {"stages": stages})
    if any(s.uses_model for s in stages):
        return ds.map_batches(worker_cls, fn_constructor_kwargs=kwargs, batch_size=1, batch_format="pyarrow",
                              compute=ray.data.ActorPoolStrategy(size=max(1, min(max_workers, n_items)),
                                                                 max_tasks_in_flight_per_actor=1),
                              **remote)  # max_restarts and max_task_retries: Ray Data's -1

    def fn(batch, _kwargs=kwargs, _cls=worker_cls):
        return _cls(**_kwargs)(batch)

    # A task holds one batch: its deaths are its own, at most max_worker_deaths per stage.
    retries = len(stages) * (settings.max_worker_deaths + 1)
    with warnings.catch_warnings():
        # Ray 2.60 deprecates remote args without a named parameter, and max_retries has none yet;
        # ray is pinned to 2.60.* (pyproject.toml), so a user's every curate need not say so.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(fn, batch_size=1, batch_format="pyarrow", max_retries=retries, **remote)


def operator_groups(stages: list[Stage], gpu_cluster: bool) -> list[list[Stage]]:
    """Consecutive stages that run on the same kind of device share one operator.

    On CPU-only machines that is one operator for all media stages: separate actor pools would
    each pin a CPU while idle, and on a 2-CPU laptop they starve each other. On a GPU cluster the
    GPU stages get their own pool so CPU stages scale on CPU nodes.
    """
    groups: list[list[Stage]] = []
    for s in stages:
        on_gpu = gpu_cluster and s.resources.num_gpus > 0
        if groups and (gpu_cluster and groups[-1][0].resources.num_gpus > 0) == on_gpu:
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


def _on_object_store(uri: str) -> bool:
    return is_uri(uri) and uri.split("://", 1)[0].lower() not in ("http", "https")


def canonical_sources(store: ManifestStore) -> list[dict[str, Any]]:
    """One row per distinct ok content: the same bytes from two URLs are processed once."""
    rows = [r for r in store.read("sources").to_pylist() if r["status"] == "ok"]
    best: dict[str, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r["input_id"]):
        best.setdefault(r["source_id"], r)
    return [best[k] for k in sorted(best)]


def _uri_key(loc: Location) -> bytes:
    """OUT's key for the ids of inputs whose URI holds a secret (a 0600 file locally; an object in a bucket)."""
    if not is_uri(loc.uri):
        return uri_key(loc.uri)
    try:
        return bytes.fromhex(loc.read_text(KEY_FILE).strip())
    except FileNotFoundError:
        loc.write_text(KEY_FILE, os.urandom(32).hex())
        return bytes.fromhex(loc.read_text(KEY_FILE).strip())


def _read_sources(where: str, key: bytes | None = None) -> list[dict[str, Any]]:
    """A sources file on local disk or object storage (fetched whole; its uri entries must be absolute)."""
    if not is_uri(where):
        return read_sources(where, key=key)
    parent, name = where.rstrip("/").rsplit("/", 1)
    with tempfile.TemporaryDirectory(prefix="emo-sources-") as tmp:
        try:
            Location(parent).get_file(name, Path(tmp) / name)
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: no such object") from None
        return read_sources(Path(tmp) / name, key=key)


def curate(opts: CurateOptions) -> Summary:
    loc = Location(opts.out)
    out = loc.uri  # an absolute local path, or the URI as given
    store = ManifestStore(loc)
    inputs = _read_sources(opts.sources, key=_uri_key(loc))  # inputs whose URI holds a secret get a keyed id
    blocked_uris, blocked_shas = load_tombstones(out)
    if blocked_uris:
        before = len(inputs)
        inputs = [r for r in inputs if r["uri"] not in blocked_uris and redact_uri(r["uri"]) not in blocked_uris]
        log.info("opt-out: %d inputs are tombstoned and left out", before - len(inputs))
    stages = build_stages(list(opts.stages), opts.config)
    settings = PipelineSettings.from_config(opts.config)
    for stage in stages:
        stage.prepare()  # once, here, before any worker starts
    ledger = Ledger(store)
    for stage in stages:
        ledger.record_settings(stage)
    init_ray(opts.address, opts.num_cpus)
    max_workers = opts.max_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))

    by_name = {s.name: s for s in stages}
    if "download" in by_name:
        todo = _claim(ledger, [by_name["download"]], [r["input_id"] for r in inputs])
        pending = [r for r in inputs if r["input_id"] in todo]
        log.info("download: %d inputs, %d already fetched", len(inputs), len(inputs) - len(pending))
        if pending:
            ds = ray.data.from_items(pending, override_num_blocks=len(pending))
            ds = _map(ds, DownloadWorker, [by_name["download"]], out, max_workers, settings, len(pending),
                      object_sources=any(_on_object_store(r["uri"]) for r in pending), blocked_sha256=blocked_shas)
            for _ in ds.iter_batches(batch_size=None):
                pass

    media = [s for s in stages if s.name != "download"]
    if media:
        _run_media_stages(store, ledger, media, out, max_workers, settings)
    clear_attempts(loc)  # every (stage, source) of this run has its row now
    summary = summarize(store, [r["input_id"] for r in inputs], [s.name for s in stages])
    loc.write_text("summary.json", json.dumps(summary.as_dict(), indent=2, default=str))
    return summary


# Tables written outside the stages from a table a stage writes: a source's rows there are void when
# that stage is redone on it (the export's decisions on its clips: until the next export, none).
VOID_WHEN_REDONE = {"clips": ("splits",)}


def _claim(ledger: Ledger, stages: list[Stage], keys: list[str]) -> dict[str, list[str]]:
    """What this run does on `keys`, decided once: the ledger's pending (stage, key)s. Their old rows,
    the shards and the files (Stage.folders) those stages wrote are forgotten, so the workers redo
    exactly these, and a stage that now fails (or keeps less) leaves nothing of an earlier run behind."""
    todo = ledger.pending(stages, keys)
    redone = [(s, k) for k, names in todo.items() for s in stages if s.name in names]
    forgotten = ledger.forget_pending(todo)  # the redone (stage, key)s that had run before
    if forgotten:
        for table in {t for s, _ in redone for t in s.writes}:
            doomed = {k for s, k in redone if table in s.writes}
            for t in (table, *VOID_WHEN_REDONE.get(table, ())):
                live = ledger.store.shard_keys(t)
                ledger.store.delete_shards(t, [k for k in doomed if k in live])
        by_name = {s.name: s for s in stages}
        for name, k in forgotten:  # only what ran before: a first run has no files to forget
            for folder in by_name[name].folders:
                ledger.store.loc.delete_tree(f"{folder}/{k}")
        log.info("redoing %d runs that failed for a passing reason or were made with other settings or an earlier "
                 "revision of their stage", len(forgotten))
    return todo


def _run_media_stages(store: ManifestStore, ledger: Ledger, stages: list[Stage], out: str, max_workers: int,
                      settings: PipelineSettings) -> None:
    sources = canonical_sources(store)
    todo = _claim(ledger, stages, [s["source_id"] for s in sources])
    items = [s for s in sources if s["source_id"] in todo]
    log.info("media stages %s: %d sources to process", [s.name for s in stages], len(items))
    if not items:
        return
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    for group in operator_groups(stages, ray.cluster_resources().get("GPU", 0) > 0):
        ds = _map(ds, ChainWorker, group, out, max_workers, settings, len(items))
    for _ in ds.iter_batches(batch_size=None):
        pass
