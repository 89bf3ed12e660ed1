"""The stage interface: plain Python over one source at a time. Stages never import ray.

A stage turns one source (a `sources` row, as a dict) into rows of its own manifest table.
`pipeline/` decides where and how often it runs; the stage only says what it needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from manifests import ManifestStore


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs; the Ray adapter turns this into map_batches arguments."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_mb: int | None = None


class StageError(Exception):
    """A failure with a reason code; it lands in the source's row, it never stops the run."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason


@dataclass
class StageContext:
    """What a stage may touch for one source: the output folder, upstream manifests, a counter."""

    out: Path
    counters: Counter = field(default_factory=Counter)
    readable: frozenset[str] | None = None  # the stage's reads + uses; None (tests, tools): any table
    # sha256s of content removed at its owners' request (OUT's opt-out tombstones, read once by the
    # driver): the download refuses these bytes from any URI. Not a setting: not in any config hash.
    blocked_sha256: frozenset[str] = frozenset()

    @property
    def store(self) -> ManifestStore:
        return ManifestStore(self.out)

    def upstream(self, table: str, source_id: str) -> pa.Table:
        """Rows an earlier stage wrote for this source (empty when that stage did not run)."""
        if self.readable is not None and table not in self.readable:
            raise KeyError(f"{table!r} is not among the tables this stage declares it reads ({sorted(self.readable)})")
        return self.store.read_shard(table, source_id)

    def path(self, *parts: str) -> Path:
        """A path under OUT, with its folder created. Names come from ids, never from URLs."""
        p = self.out.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.out))

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] += n


class Stage:
    """Base class. Subclasses set `name`, `reads`, `uses`, `writes`, and implement `process`.

    The tables a stage touches are its contract: `writes` are the tables it writes (one shard per
    source each; the first is where a plain list of rows goes), `reads` the tables it cannot do
    without (when the stage that writes one failed for a source, this stage is skipped for it),
    `uses` the tables it reads when they are there. Run order and `needs` follow from them
    (pipeline/plan.py). `__init__` keeps plain values only so the stage pickles to a Ray worker;
    models load in `setup`.
    """

    name: ClassVar[str] = "stage"
    reads: ClassVar[tuple[str, ...]] = ()
    uses: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    # Folders under OUT that hold this stage's files of a source, as FOLDER/<source_id>/: emptied when
    # the stage is redone on it, so no file its new rows do not name is left behind (pipeline/runner.py).
    folders: ClassVar[tuple[str, ...]] = ()
    # Settings that change how fast or where, never what: left out of the config hash (as diffusers'
    # ignore_for_config), so changing them redoes nothing. Attributes named _x are state, not settings.
    unhashed: ClassVar[tuple[str, ...]] = ()
    uses_model: ClassVar[bool] = False  # True: run in an actor pool so setup() happens once per worker
    # Rows of these statuses made with other settings are redone by the next run (pipeline/ledger.py).
    stale_with_other_settings: ClassVar[frozenset[str]] = frozenset({"ok", "failed", "skipped"})
    # Raised by one when a change to the stage's code changes what it writes for the same input and
    # settings: it goes into the config hash, so rerunning over an OUT made by an earlier revision
    # redoes the stage there, and every stage after it, as a change of settings does. 0 stays out
    # of the hash, so a stage never revised keeps the hash its OUTs were made with.
    revision: ClassVar[int] = 0
    resources: Resources = Resources()

    @property
    def table(self) -> str:
        """The table a plain list of rows from `process` goes to."""
        return self.writes[0] if self.writes else ""

    def prepare(self) -> None:
        """Called once in the driver before any worker starts: fill on-disk caches that workers would
        otherwise race to write (see DiarizeStage.prepare). Default: nothing."""

    def setup(self) -> None:
        """Load models or other per-worker state. Called once per worker before `process`."""

    def process(self, source: dict[str, Any], ctx: StageContext) -> list[dict[str, Any]] | dict[str, list[dict[str, Any]]]:
        """Rows of `self.table` for one ok source, or {table: rows} for tables among `writes`.

        Raise StageError (or anything) to fail the source; the runner records it and goes on.
        """
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The settings that change this stage's output (used for the config hash)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in self.unhashed}

    def hashed(self) -> dict[str, Any]:
        """What the config hash is made of: the stage's name, its revision when it has one, its settings."""
        return {"stage": self.name, **({"revision": self.revision} if self.revision else {}), **self.config()}

    def config_hash(self) -> str:
        blob = json.dumps(self.hashed(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def temp_sibling(path: Path, suffix: str = ".tmp") -> Path:
    """A hidden name beside `path`, unique to this writer: write there, then os.replace onto `path`.

    Unique per process and call, so two workers writing the same content-addressed file at once
    (the same bytes from two URIs) never rename each other's half-written file.
    """
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")

