"""Running one stage over one batch of sources, inside whatever worker Ray gives us.

This is the bridge between a plain `Stage` and Ray Data: it writes the stage's shard and its
`stage_runs` row for every source, and passes the source row on to the next stage.
Nothing here imports ray; runner.py does.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from manifests import ManifestStore
from manifests.sources import SOURCES
from stages.base import Stage, StageContext

log = logging.getLogger(__name__)

# The rows flowing between stages: a sources row plus the per-source progress state.
STATE_COL = "_state"
FLOW_SCHEMA = SOURCES.append(pa.field(STATE_COL, pa.string()))


def run_key(stage: str, source_id: str) -> str:
    return f"{stage}-{source_id}"


def _reason(error: str | None) -> str:
    return (error or "").split(":", 1)[0].strip() or "error"


class StageWorker:
    """Callable over Arrow batches; constructed once per Ray worker so `setup()` runs once."""

    def __init__(self, stage: Stage, out: str):
        self.stage = stage
        self.out = Path(out)
        self.store = ManifestStore(self.out)
        self.config_hash = stage.config_hash()
        stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for row in rows:
            state = json.loads(row.get(STATE_COL) or "{}")
            self.run_one(row, state)
            row[STATE_COL] = json.dumps(state, sort_keys=True)
        return pa.Table.from_pylist(rows, schema=FLOW_SCHEMA)

    def run_one(self, source: dict[str, Any], state: dict[str, Any]) -> None:
        """Run the stage on one source unless done; record the outcome in `state` and on disk."""
        name = self.stage.name
        done, failed = state.setdefault("done", []), state.setdefault("failed", [])
        if name in done:
            return
        key = source["source_id"]
        blocked = [n for n in self.stage.needs if n in failed]
        t0 = time.perf_counter()
        ctx = StageContext(out=self.out)
        if blocked:
            status, error, rows = "skipped", f"upstream_failed: {', '.join(blocked)} failed for this source", []
        else:
            try:
                rows = self.stage.process(source, ctx)
                status, error = "ok", None
            except Exception as e:  # failures are data: the row says why, the run goes on
                status, error, rows = "failed", f"{getattr(e, 'reason', type(e).__name__)}: {e}", []
                log.debug("stage %s failed on %s\n%s", name, key, traceback.format_exc())
        # A stage returns rows of its own table, or {table: rows} when it writes several.
        by_table = rows if isinstance(rows, dict) else {self.stage.table: rows}
        if status == "ok":
            for table, table_rows in by_table.items():
                if table:
                    self.store.write_shard(table, key, table_rows)
        ctx.count(status if status == "ok" else f"{status}_{_reason(error)}")
        self.record_run(key, status, error, sum(len(r) for r in by_table.values()), t0, ctx)
        done.append(name)
        if status != "ok":
            failed.append(name)

    def record_run(self, key: str, status: str, error: str | None, n_rows: int, t0: float, ctx: StageContext) -> None:
        """The one `stage_runs` row of this stage for this source (or input, for download)."""
        self.store.write_shard("stage_runs", run_key(self.stage.name, key), [{
            "stage": self.stage.name, "source_id": key, "status": status, "error": error, "n_rows": n_rows,
            "seconds": time.perf_counter() - t0, "counters": dict(ctx.counters),
            "config_hash": self.config_hash, "finished_at": datetime.now(UTC),
        }])


class ChainWorker:
    """Several stages fused into one Ray operator: each source goes through all of them in turn.

    One worker holds every stage's models, so a machine with N CPUs runs N sources at once and
    no stage's idle actor pins a CPU that the next stage is waiting for.
    """

    def __init__(self, stages: list[Stage], out: str):
        self.workers = [StageWorker(s, out) for s in stages]

    def __call__(self, batch: pa.Table) -> pa.Table:
        for w in self.workers:
            batch = w(batch)
        return batch


class DownloadWorker(StageWorker):
    """The download stage runs per input row and writes its `sources` row as its own status row."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = []
        for item in batch.to_pylist():
            t0 = time.perf_counter()
            ctx = StageContext(out=self.out)
            (row,) = self.stage.process(item, ctx)
            self.store.write_shard("sources", item["input_id"], [row])
            self.record_run(item["input_id"], row["status"], row.get("error"), 1, t0, ctx)
            results.append({"input_id": item["input_id"], "status": row["status"]})
        return pa.Table.from_pylist(results, schema=pa.schema([("input_id", pa.string()), ("status", pa.string())]))
