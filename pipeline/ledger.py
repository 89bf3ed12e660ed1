"""The run ledger: the one place that knows whether a (stage, key) is done, failed, or stale.

Its rows are the `stage_runs` table (manifests/runs.py), one shard per (stage, key) named by
`run_key`; the key is the input_id for download and the source_id after it. A row is written
last, after the stage's files and shards, so "done" is never ahead of the data (as datatrove keeps
one marker per finished task).

What a run redoes (`pending`), decided once, in the driver:
  - missing: no row;
  - failed and retryable: the row's reason says the network let it down, not the input
    (RETRYABLE; a decoder that crashes or hangs on a file will do so again, so those stay failed);
  - stale: the row was made with other settings or by an earlier revision of the stage (its
    config_hash is not the stage's hash now; a stage may narrow this to some statuses: see
    Stage.stale_with_other_settings);
  - and, for each of those, every later stage that reads what it writes, on the same key.
The driver then `forget`s the recorded ones, so a worker needs no more than "is there a row?":
an earlier try of its own batch (a worker that died) leaves one, and nothing else does.

Beside the rows, the settings behind each config hash (`record_settings`, once per hash, under
OUT/manifests/_settings/), so what a stage ran with can be read back (`settings`): the export
judges near-duplicates by the threshold curate's quality settings held.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from manifests import ManifestStore
from manifests.fs import Location

if TYPE_CHECKING:
    from stages.base import Stage

# Reasons (an error's text before its first colon) that a later run should try again: the
# server or the network failed this time. Timeouts of a whole fetch are not among them: a server
# that drips bytes would cost its full limit again on every rerun.
RETRYABLE = re.compile(r"(connection_error|http_408|http_429|http_5\d\d)")
SETTINGS = "manifests/_settings"  # relative to OUT: <stage>-<config_hash>.json


def run_key(stage: str, key: str) -> str:
    """The `stage_runs` shard of `stage` on `key` (an input_id for download, a source_id after)."""
    return f"{stage}-{key}"


def split_run_key(shard_key: str) -> tuple[str, str]:
    """(stage, key) of a `stage_runs` shard key; stage names hold no '-'."""
    stage, _, key = shard_key.partition("-")
    return stage, key


def reason_of(error: str | None, default: str = "error") -> str:
    """An error's reason code: its text before the first colon."""
    return (error or "").split(":", 1)[0].strip() or default


def retryable(status: str, error: str | None) -> bool:
    return status == "failed" and RETRYABLE.fullmatch(reason_of(error)) is not None


def downstream(stages: Sequence[Stage]) -> dict[str, set[str]]:
    """{stage: the later stages that read (or use) what it writes, directly or through another}."""
    after: dict[str, set[str]] = {s.name: set() for s in stages}
    for i, s in enumerate(stages):
        for t in stages[i + 1:]:
            if set(s.writes) & set(t.reads + t.uses):
                after[s.name].add(t.name)
    for s in reversed(stages):  # later stages are complete by the time an earlier one is closed over
        for t in list(after[s.name]):
            after[s.name] |= after[t]
    return after


class Ledger:
    """`stage_runs` of one OUT. A worker's ledger also remembers what it recorded itself, so the
    stages fused in one worker learn each other's outcome on a source without reading it back."""

    def __init__(self, store: ManifestStore | Location | str):
        self.store = store if isinstance(store, ManifestStore) else ManifestStore(store)
        self._recorded: dict[tuple[str, str], str] = {}

    def status(self, stage: str, key: str) -> str | None:
        """ok / failed / skipped, or None when no row is on disk."""
        if (stage, key) in self._recorded:
            return self._recorded[(stage, key)]
        shard = self.store.read_shard("stage_runs", run_key(stage, key))
        return shard.column("status")[0].as_py() if shard.num_rows else None

    def record(self, stage: str, key: str, status: str, config_hash: str, *, error: str | None = None,
               n_rows: int = 0, seconds: float = 0.0, counters: dict[str, int] | None = None) -> None:
        """The one row of `stage` on `key`; write it after everything the stage produced."""
        self.store.write_shard("stage_runs", run_key(stage, key), [{
            "stage": stage, "source_id": key, "status": status, "error": error, "n_rows": n_rows,
            "seconds": seconds, "counters": dict(counters or {}), "config_hash": config_hash,
            "finished_at": datetime.now(UTC),
        }])
        self._recorded[(stage, key)] = status

    def record_settings(self, stage: Stage) -> None:
        """Keep the settings behind the stage's config hash (written once: the hash names them)."""
        rel = f"{SETTINGS}/{stage.name}-{stage.config_hash()}.json"
        if not self.store.loc.exists(rel):
            self.store.loc.write_text(rel, json.dumps(stage.hashed(), sort_keys=True, default=str))

    def settings(self, stage: str) -> dict[str, Any] | None:
        """The settings `stage` ran with here (those of most of its ok rows), or None when none were recorded."""
        hashes = Counter(r["config_hash"] for (name, _), r in self.runs().items() if name == stage and r["status"] == "ok")
        for config_hash, _ in hashes.most_common():
            text = self.store.loc.read_text(f"{SETTINGS}/{stage}-{config_hash}.json", default="")
            if text:
                return json.loads(text)
        return None

    def runs(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every row, by (stage, key): status, error, config_hash."""
        tbl = self.store.read("stage_runs", columns=["stage", "source_id", "status", "error", "config_hash"])
        return {(r["stage"], r["source_id"]): r for r in tbl.to_pylist()}

    def pending(self, stages: Sequence[Stage], keys: Iterable[str]) -> dict[str, list[str]]:
        """{key: names of the stages to (re)do on it, in run order}, for the keys with any.

        `stages` share one kind of key and come in run order; see the module docstring for what
        is pending. Stages not in `stages` are not looked at."""
        runs, after = self.runs(), downstream(stages)
        current = {s.name: s.config_hash() for s in stages}
        todo: dict[str, list[str]] = {}
        for key in keys:
            redo: set[str] = set()
            for s in stages:
                row = runs.get((s.name, key))
                if (row is None or retryable(row["status"], row["error"])
                        or (row["config_hash"] != current[s.name] and row["status"] in s.stale_with_other_settings)):
                    redo |= {s.name} | after[s.name]
            if redo:
                todo[key] = [s.name for s in stages if s.name in redo]
        return todo

    def forget(self, keys: Iterable[str], stages: Iterable[str] | None = None) -> int:
        """Delete the rows of `stages` (every stage when None) on these keys; how many there were."""
        keys, names = set(keys), None if stages is None else set(stages)
        return self._delete(lambda stage, key: key in keys and (names is None or stage in names))[0]

    def forget_pending(self, todo: dict[str, list[str]]) -> list[tuple[str, str]]:
        """Forget the recorded rows among `pending`'s answer, so the workers redo them; the (stage,
        key)s forgotten: those of `todo` that had run before."""
        return self._delete(lambda stage, key: stage in todo.get(key, ()))[1]

    def _delete(self, doomed: Callable[[str, str], bool]) -> tuple[int, list[tuple[str, str]]]:
        """Delete the rows whose (stage, key) is `doomed`: (how many there were, their (stage, key)s).
        Only rows that exist are deleted (one listing), so forgetting what was never done costs no
        request per key on object storage."""
        gone = [k for k in self.store.shard_keys("stage_runs") if doomed(*split_run_key(k))]
        pairs = [split_run_key(k) for k in gone]
        for pair in pairs:
            self._recorded.pop(pair, None)
        return (self.store.delete_shards("stage_runs", gone) if gone else 0), pairs
