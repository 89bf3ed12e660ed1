"""Running one stage over one batch of sources, inside whatever worker Ray gives us.

This is the bridge between a plain `Stage` and Ray Data: it writes the stage's shard and its
ledger row (pipeline/ledger.py) for every source, and passes the source row on to the next stage.
Nothing here imports ray; runner.py does.

Faults. Each stage runs on each source under a time limit (PipelineSettings.time_limit). A stage
past its limit is stuck, often inside C code (a decoder waiting on a stalled read) that Python
cannot interrupt, so the worker records a failed row with reason `timeout` and then ends its own
process; Ray replaces the process and retries the batch, and the retry finds the row on disk and
moves on. A worker process that dies for any other reason (a crashing decoder, SIGKILL) is
retried the same way; each (stage, source) counts those deaths under OUT/.attempts, and after
`max_worker_deaths` the source gets a failed row with reason `worker_died` instead of a retry.

Object storage. When OUT is a URI, stages work in a local scratch mirror (pipeline/scratch.py):
the source's media and audio are fetched into it, and after the stage its new files are uploaded,
then its manifest shards, then its `stage_runs` row, so "done" is never ahead of the data.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from manifests import ManifestStore
from manifests.fs import Location
from pipeline.ledger import Ledger, reason_of, run_key
from pipeline.plan import PipelineSettings, needs
from pipeline.scratch import MirrorContext, Scratch
from stages.base import Stage, StageContext, StageError

log = logging.getLogger(__name__)

EXIT_STUCK = 75  # exit status of a worker process that gave up on a stuck stage
HARD_LIMIT_GRACE_S = 60.0  # after this much more, a C-level watchdog ends the process even if Python cannot run


def _error_text(e: Exception) -> str:
    """"reason: message": a StageError's text already starts with its reason; anything else is named by its class."""
    if isinstance(e, StageError):
        return str(e)
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _out_relative(error: str | None, ctx: StageContext) -> str | None:
    """Paths in an error message named relative to OUT: the row then reads the same wherever OUT is
    (a folder, or a worker's scratch mirror of a bucket), and so does the content hash."""
    return error.replace(f"{ctx.out}/", "") if error else error


class Stuck(Exception):
    """A stage did not finish one source within its time limit."""


def run_with_limit(fn: Callable[[], Any], limit_s: float) -> Any:
    """fn() in a thread; raise Stuck when it has not returned after `limit_s` (the thread is left running).

    PyAV releases the GIL while FFmpeg blocks, so this thread wakes even when the stage is stuck in
    C. faulthandler's watchdog needs no GIL at all: it ends the process if even that fails.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread below
            box["error"] = e

    thread = threading.Thread(target=target, name="stage", daemon=True)
    faulthandler.dump_traceback_later(limit_s + HARD_LIMIT_GRACE_S, exit=True)
    try:
        thread.start()
        thread.join(limit_s)
    finally:
        faulthandler.cancel_dump_traceback_later()
    if thread.is_alive():
        raise Stuck(f"no result after {limit_s:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


class Attempts:
    """How many times a worker process died while running (stage, source): files under OUT/.attempts.

    They live in OUT, not on the worker, so a retry on another node sees the deaths counted here."""

    def __init__(self, loc: Location):
        self.loc = loc

    def begin(self, key: str) -> int:
        """Record one more attempt; returns how many earlier attempts died unfinished."""
        died = int(self.loc.read_text(f".attempts/{key}", default="0") or 0)
        self.loc.write_text(f".attempts/{key}", str(died + 1))
        return died

    def end(self, key: str) -> None:
        """Forget the count once the run row is written (no try reads it after that). On object
        storage a DELETE per source cost about as much as the stage's own work on a small input
        (benchmarks/bench_scale.py --profile), so the runner deletes what is left in one batch
        at the end of the run instead (clear_attempts)."""
        if self.loc.local:
            self.loc.delete(f".attempts/{key}")


def clear_attempts(loc: Location) -> None:
    """Delete the death counts of a finished run; on object storage, batched DeleteObjects requests."""
    if loc.local:
        loc.delete_tree(".attempts")
    elif loc.files(".attempts"):
        loc.fs.delete_dir(loc.full(".attempts"))


def _exit_stuck(stage: str, key: str) -> None:
    """End this process: a stuck thread cannot be stopped from Python. Ray starts a fresh worker."""
    log.error("stage %s is stuck on %s; its failed row is written, this worker process exits", stage, key)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(EXIT_STUCK)


class StageWorker:
    """Callable over Arrow batches; constructed once per Ray worker so `setup()` runs once.

    The driver has already decided what this run does (pipeline/ledger.py) and forgotten the rows
    it redoes, so a (stage, source) with a row in the ledger is done: before this run, or by an
    earlier try of this batch whose worker died. Rows flow on to the next stage unchanged."""

    # How a forced failure reads in the row; DownloadWorker words it for an input.
    DIED = "the worker process died {died} times running {name} on this source"
    TIMED_OUT = "{name} took longer than its limit of {limit:.0f} s on this source"

    def __init__(self, stage: Stage, out: str, settings: PipelineSettings | None = None,
                 scratch: Scratch | None = None, ledger: Ledger | None = None,
                 blocked_sha256: frozenset[str] = frozenset()):
        self.stage = stage
        self.blocked_sha256 = blocked_sha256  # the opt-out tombstones' content, for the stage's context
        # Stages whose failure on a source skips this one there. Download's rows are keyed by
        # input, not source, and only its ok sources ever reach a media stage.
        self.needs = tuple(n for n in needs(stage) if n != "download")
        self.store = ManifestStore(out)
        self.loc = self.store.loc
        self.ledger = ledger or Ledger(self.store)
        # On object storage the stage's files live in a scratch mirror; locally they are OUT itself.
        self.scratch = scratch if scratch is not None or self.loc.local else Scratch(self.loc)
        self.settings = settings or PipelineSettings()
        self.attempts = Attempts(self.loc)
        self.config_hash = stage.config_hash()
        stage.setup()

    def context(self, source: dict[str, Any]) -> StageContext:
        """The stage's view of OUT for one source: OUT itself, or the mirror with its inputs fetched."""
        readable = frozenset(self.stage.reads + self.stage.uses)
        if self.scratch is None:
            return StageContext(out=self.loc.path, readable=readable, blocked_sha256=self.blocked_sha256)
        if self.stage.name != "download":
            self.scratch.fetch(source.get("media_path"), source.get("audio_path"))
        return MirrorContext(out=self.scratch.dir, readable=readable, blocked_sha256=self.blocked_sha256,
                             manifests=self.store)

    def upload(self) -> None:
        """Files the stage produced go up before any manifest row that names them."""
        if self.scratch is not None:
            self.scratch.upload_new()

    def __call__(self, batch: pa.Table) -> pa.Table:
        for row in batch.to_pylist():
            self.run_one(row)
        return batch

    def run_one(self, source: dict[str, Any]) -> None:
        """Run the stage on one source unless the ledger has its row; write its shards, then its row."""
        name, key = self.stage.name, source["source_id"]
        if self.ledger.status(name, key) is not None:
            return
        blocked = [n for n in self.needs if self.ledger.status(n, key) not in (None, "ok")]
        t0 = time.perf_counter()
        ctx = self.context(source)
        stuck = False
        if blocked:
            status, error, rows = "skipped", f"upstream_failed: {', '.join(blocked)} failed for this source", []
        else:
            status, error, rows, stuck = self._attempt(source, key, ctx)
        # A stage returns rows of its first table, or {table: rows} for tables it declares it writes.
        by_table = rows if isinstance(rows, dict) else {self.stage.table: rows}
        if status == "ok" and (undeclared := set(by_table) - set(self.stage.writes)):
            status, error, by_table = "failed", f"internal_error: {name} wrote undeclared tables {sorted(undeclared)}", {}
        error = _out_relative(error, ctx)
        if status == "ok":
            self.upload()
            for table, table_rows in by_table.items():
                if table:
                    self.store.write_shard(table, key, table_rows)
        ctx.count(status if status == "ok" else f"{status}_{reason_of(error)}")
        self.record_run(key, status, error, sum(len(r) for r in by_table.values()), t0, ctx)
        if stuck:
            _exit_stuck(name, key)

    def _attempt(self, source: dict[str, Any], key: str, ctx: StageContext) -> tuple[str, str | None, Any, bool]:
        """(status, error, rows, stuck) of one try of the stage on one source, under its time limit."""
        name = self.stage.name
        died = self.attempts.begin(run_key(name, key))
        if died >= self.settings.max_worker_deaths:
            return "failed", "worker_died: " + self.DIED.format(died=died, name=name), [], False
        limit = self.settings.time_limit(name, source)
        try:
            return "ok", None, run_with_limit(lambda: self.stage.process(source, ctx), limit), False
        except Stuck as e:
            return "failed", f"timeout: {self.TIMED_OUT.format(name=name, limit=limit)} ({e})", [], True
        except Exception as e:  # failures are data: the row says why, the run goes on
            log.debug("stage %s failed on %s\n%s", name, key, traceback.format_exc())
            return "failed", _error_text(e), [], False

    def record_run(self, key: str, status: str, error: str | None, n_rows: int, t0: float, ctx: StageContext) -> None:
        """The one ledger row of this stage for this source (or input, for download); written last."""
        self.ledger.record(self.stage.name, key, status, self.config_hash, error=error, n_rows=n_rows,
                           seconds=time.perf_counter() - t0, counters=ctx.counters)
        self.attempts.end(run_key(self.stage.name, key))


class ChainWorker:
    """Several stages fused into one Ray operator: each source goes through all of them in turn.

    One worker holds every stage's models, so a machine with N CPUs runs N sources at once and
    no stage's idle actor pins a CPU that the next stage is waiting for.
    """

    def __init__(self, stages: list[Stage], out: str, settings: PipelineSettings | None = None):
        loc = Location(out)
        self.scratch = None if loc.local else Scratch(loc)  # one mirror: a source's media is fetched once
        ledger = Ledger(out)  # shared: a stage learns an earlier stage's outcome here without reading it back
        self.workers = [StageWorker(s, out, settings, scratch=self.scratch, ledger=ledger) for s in stages]

    def __call__(self, batch: pa.Table) -> pa.Table:
        try:
            for w in self.workers:
                batch = w(batch)
        finally:
            if self.scratch is not None:
                self.scratch.clear()
        return batch


class DownloadWorker(StageWorker):
    """The download stage runs per input row and writes its `sources` row as its own status row."""

    DIED = "the worker process died {died} times downloading this input"
    TIMED_OUT = "fetching took longer than its limit of {limit:.0f} s"

    def __call__(self, batch: pa.Table) -> pa.Table:
        for item in batch.to_pylist():
            if self.ledger.status("download", item["input_id"]) is None:
                self.download_one(item)
            if self.scratch is not None:
                self.scratch.clear()
        return batch.select(["input_id"])

    def download_one(self, item: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        ctx = self.context(item)
        iid = item["input_id"]
        status, error, rows, stuck = self._attempt(item, iid, ctx)
        # The stage turns every failure it sees into its row; these are the ones it cannot see.
        (row,) = rows if status == "ok" else [self.stage.failed_row(item, error)]
        if stuck:
            self.stage.discard(iid, ctx)  # a timed-out input leaves no partial bytes behind
        self.upload()
        row["error"] = _out_relative(row.get("error"), ctx)
        self.store.write_shard("sources", iid, [row], strict=True)  # every column named: source_row made it
        self.record_run(iid, row["status"], row.get("error"), 1, t0, ctx)
        if stuck:
            _exit_stuck("download", iid)
