"""A local mirror of (part of) OUT, for work that needs plain files while OUT is on object storage.

Used two ways: a Ray worker's bounded scratch copy of one source at a time (pipeline/worker.py),
and `emo export` / `emo audit` on an s3:// OUT (`mirrored`): the folders they read are fetched,
they run on the mirror as on any local OUT, and what they wrote, changed or deleted is then
applied to the store, files before manifests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path

from manifests.fs import Location

NOT_UPLOADED = ("downloads/",)  # partial HTTP bodies: resumable on this disk only, never a product


class Mirror:
    """A local folder mirroring part of a Location; knows which of its files are already stored."""

    def __init__(self, loc: Location, root: str | None = None):
        self.loc = loc
        base = Path(root or os.environ.get("EMO_SCRATCH") or tempfile.gettempdir())
        self.dir = base / f"emo-scratch-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir(parents=True, exist_ok=True)
        # Removed when the mirror is dropped (a Ray task builds one per source: an atexit hook each
        # would pile up in a long-lived worker process, and so would their empty folders) or at exit;
        # kept with EMO_KEEP_SCRATCH=1, to look at what a worker had on its disk.
        if not os.environ.get("EMO_KEEP_SCRATCH"):
            weakref.finalize(self, shutil.rmtree, self.dir, True)
        self.synced: dict[str, tuple[int, int]] = {}  # rel -> (size, mtime_ns) as last fetched or uploaded

    def _stamp(self, rel: str) -> tuple[int, int]:
        st = (self.dir / rel).stat()
        return st.st_size, st.st_mtime_ns

    def fetch(self, *rels: str | None) -> None:
        """Bring these files (paths relative to OUT) into the mirror, unless already there."""
        for rel in filter(None, rels):
            if rel in self.synced or not self.loc.exists(rel):
                continue  # a missing input is the stage's error to report (media_missing, audio_missing)
            self.loc.get_file(rel, self.dir / rel)
            self.synced[rel] = self._stamp(rel)

    def fetch_tree(self, folder: str) -> int:
        """Every file under `folder`; how many."""
        found = self.loc.files(folder)
        for f in found:
            rel = self.loc.rel(f)
            self.loc.get_file(rel, self.dir / rel)
            self.synced[rel] = self._stamp(rel)
        return len(found)

    def _local_files(self) -> list[str]:
        rels = []
        for dirpath, _, names in os.walk(self.dir):
            for name in names:
                rel = Path(dirpath, name).relative_to(self.dir).as_posix()
                if not name.startswith(".") and not rel.startswith(NOT_UPLOADED):
                    rels.append(rel)
        # Manifests last: a shard is stored only after the files it names.
        return sorted(rels, key=lambda r: (r.startswith("manifests/"), r))

    def upload_new(self) -> list[str]:
        """Upload every file written or changed since the last sync; their names."""
        sent = []
        for rel in self._local_files():
            stamp = self._stamp(rel)
            if self.synced.get(rel) != stamp:
                self.loc.put_file(self.dir / rel, rel)
                self.synced[rel] = stamp
                sent.append(rel)
        return sent

    def delete_removed(self) -> list[str]:
        """Delete from the store what was fetched and has since been deleted here."""
        gone = [rel for rel in self.synced if not (self.dir / rel).exists()]
        for rel in gone:
            self.loc.delete(rel)
            del self.synced[rel]
        return gone

    def clear(self) -> None:
        """Empty the mirror (a worker does this after each source: its disk holds one at a time)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.synced.clear()


@contextlib.contextmanager
def mirrored(out: str | os.PathLike, folders: tuple[str, ...] = ("manifests",),
             files: tuple[str, ...] = ()) -> Iterator[Path]:
    """OUT as a local folder: itself when local; else a mirror of `folders` and `files` (those that
    exist, e.g. emo.lock), written back on success."""
    loc = Location(out)
    if loc.local:
        yield loc.path
        return
    mirror = Mirror(loc)
    try:
        for folder in folders:
            mirror.fetch_tree(folder)
        mirror.fetch(*files)
        yield mirror.dir
        mirror.upload_new()
        mirror.delete_removed()
    finally:
        shutil.rmtree(mirror.dir, ignore_errors=True)
