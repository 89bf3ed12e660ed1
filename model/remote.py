"""Training from and into object storage: clips read through a bounded local cache, checkpoints
written to the bucket as whole objects.

    ClipFiles      OUT-relative names -> local files; on a store, fetched on first use into a cache
                   that evicts the least recently used files past its byte budget
    RemoteRun      a checkpoint folder on a store: training writes each step into a local staging
                   folder, which is then uploaded (meta.json last: a step without it is not complete)
    local_checkpoint  a checkpoint in a bucket fetched whole to the local cache (for --init-from)

The cache lives under EMO_CACHE (default: the system temp folder); its budget is
EMO_CLIP_CACHE_BYTES (default 20 GiB). Store settings are OUT's (manifests/fs.py: AWS_* variables).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from manifests.fs import Location, is_uri

META = "meta.json"
ASSET_FOLDERS = ("vae", "audio_encoder")  # run-level copies of frozen models that a step's meta names


def cache_root(uri: str, kind: str) -> Path:
    """A local folder for one store URI, stable across runs (so a rerun finds what it fetched)."""
    base = Path(os.environ.get("EMO_CACHE") or tempfile.gettempdir()) / "emo-cache" / kind
    return base / hashlib.sha256(uri.encode()).hexdigest()[:16]


class ClipFiles:
    """Local paths for files of OUT; on object storage a bounded, least-recently-used cache of them.

    The budget holds for the cache folder, not per process: DataLoader workers (and concurrent
    runs on the same data) share one folder, so each counts the bytes it adds in a shared total
    under a file lock, and the one that takes the total past the budget evicts by what is on disk.
    (Dividing the budget by the number of workers would leave each worker a slice it cannot share:
    a clip one worker fetched would count against its slice alone while every worker reads it.)
    """

    def __init__(self, out: str | Path, max_bytes: int | None = None):
        self.out = str(out)
        self.remote = is_uri(self.out)
        self.max_bytes = max_bytes or int(os.environ.get("EMO_CLIP_CACHE_BYTES") or 20 << 30)
        self.dir = cache_root(self.out, "clips") if self.remote else Path(self.out)
        self._loc: Location | None = None  # opened lazily: a DataLoader worker opens its own

    def local(self, rel: str) -> Path:
        path = self.dir / rel
        if not self.remote:
            return path
        try:
            os.utime(path)  # most recently used
            return path
        except FileNotFoundError:  # not fetched yet, or just evicted by another worker
            pass
        if self._loc is None:
            self._loc = Location(self.out)
        self._loc.get_file(rel, path)
        self._account(path)
        return path

    def _account(self, added: Path) -> None:
        """Add a fetched file to the shared total; past the budget, evict and recount from the disk."""
        import fcntl

        with open(self.dir / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
            total_file = self.dir / ".bytes"
            try:
                total = int(total_file.read_text()) + added.stat().st_size
            except (FileNotFoundError, ValueError):
                total = None  # first use of this folder (or a torn count): count what is there
            if total is None or total > self.max_bytes:
                total = self._evict(keep=added)
            tmp = total_file.with_name(f".bytes-{os.getpid()}")
            tmp.write_text(str(total))
            os.replace(tmp, total_file)

    def _evict(self, keep: Path) -> int:
        """Delete the least recently used files until the cache fits its budget (never `keep`); bytes left."""
        files = []
        for p in self.dir.rglob("*"):
            if not p.name.startswith("."):  # the lock, the total, partial fetches of other processes
                try:
                    st = p.stat()
                except FileNotFoundError:  # evicted by a process that held the lock before
                    continue
                if p.is_file():
                    files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files):
            if total <= self.max_bytes:
                break
            if p != keep:
                p.unlink(missing_ok=True)
                total -= size
        return total


class RemoteRun:
    """A checkpoint folder on object storage, staged through a local folder while training."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.loc = Location(self.uri)
        self.staging = cache_root(self.uri, "runs")
        self.staging.mkdir(parents=True, exist_ok=True)

    @classmethod
    def open(cls, uri: str, resume: bool) -> RemoteRun:
        """A fresh staging folder for a run into `uri`; with `resume`, holding what the bucket has."""
        import shutil

        run = cls(uri)
        shutil.rmtree(run.staging, ignore_errors=True)  # a previous run's steps here are not this bucket's
        run.staging.mkdir(parents=True)
        if resume:
            run.pull_latest()
        return run

    def steps(self) -> list[str]:
        """Complete step folders in the bucket (those with meta.json), oldest first."""
        return sorted({self.loc.rel(f).split("/")[0] for f in self.loc.files()
                       if f.base_name == META and self.loc.rel(f).count("/") == 1
                       and self.loc.rel(f).startswith("step-")})

    def pull_latest(self) -> None:
        """The latest complete step, loss.csv and the frozen-model copies, into staging (for --resume)."""
        steps = self.steps()
        for rel in [f"{steps[-1]}/" if steps else None, "loss.csv", *[f"{a}/" for a in ASSET_FOLDERS]]:
            if rel is None:
                continue
            if rel.endswith("/"):
                for f in self.loc.files(rel):
                    self.loc.get_file(self.loc.rel(f), self.staging / self.loc.rel(f))
            elif self.loc.exists(rel):
                self.loc.get_file(rel, self.staging / rel)

    def push(self, step_dir: Path, keep: int) -> str:
        """Upload one step (meta.json last), the assets not yet there and loss.csv; prune old steps."""
        for asset in ASSET_FOLDERS:
            if (self.staging / asset).is_dir() and not self.loc.files(asset):
                self._put_tree(self.staging / asset)
        self._put_tree(step_dir)
        if (self.staging / "loss.csv").is_file():
            self.loc.put_file(self.staging / "loss.csv", "loss.csv")
        for old in self.steps()[: -max(1, keep)]:
            self.loc.delete(f"{old}/{META}")  # first: a half-deleted step is never taken for complete
            self.loc.fs.delete_dir(self.loc.full(old))  # the objects and the folder marker S3 leaves behind
        return self.loc.child_uri(step_dir.name)

    def _put_tree(self, folder: Path) -> None:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        for p in sorted(files, key=lambda p: p.name == META):
            self.loc.put_file(p, p.relative_to(self.staging).as_posix())


def local_checkpoint(uri: str) -> tuple[Path, str]:
    """A checkpoint on object storage (a step or a run: its latest step): (local step folder, its URI)."""
    loc = Location(uri)
    if loc.exists(META):  # a step: its run (for vae/, audio_encoder/) is one level up
        run, step = uri.rstrip("/").rsplit("/", 1)
    else:
        run, step = uri, None
    remote = RemoteRun(run)
    steps = remote.steps()
    step = step or (steps[-1] if steps else None)
    if step is None:
        raise FileNotFoundError(f"no checkpoint (a folder with {META}) at {uri}")
    for rel in [f"{step}/", *[f"{a}/" for a in ASSET_FOLDERS]]:
        for f in remote.loc.files(rel):
            remote.loc.get_file(remote.loc.rel(f), remote.staging / remote.loc.rel(f))
    return remote.staging / step, remote.loc.child_uri(step)
