"""A worker's bounded local copy of OUT when OUT is on object storage.

Stages read and write plain files under `ctx.out` (stages/base.py); on object storage that
folder is a scratch mirror on the worker's disk: the source's media and audio are fetched into
it before a stage runs, what the stage wrote is uploaded after it, and the mirror is emptied after
each source. Nothing on a worker's disk is the system of record.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from manifests import ManifestStore
from manifests.fs import Location
from stages.base import StageContext

NOT_UPLOADED = ("downloads/",)  # partial HTTP bodies: resumable on this disk only, never a product


@dataclass
class MirrorContext(StageContext):
    """A StageContext whose files are the scratch mirror and whose manifests are the real store."""

    manifests: ManifestStore | None = field(default=None, repr=False)

    @property
    def store(self) -> ManifestStore:
        return self.manifests


class Scratch:
    """A local folder mirroring part of a Location; knows which of its files are already stored."""

    def __init__(self, loc: Location, root: str | None = None):
        self.loc = loc
        base = Path(root or os.environ.get("EMO_SCRATCH") or tempfile.gettempdir())
        self.dir = base / f"emo-scratch-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir(parents=True, exist_ok=True)
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

    def upload_new(self) -> list[str]:
        """Upload every file the stages wrote or changed since the last sync; their names."""
        sent = []
        for dirpath, _, names in os.walk(self.dir):
            for name in sorted(names):
                rel = Path(dirpath, name).relative_to(self.dir).as_posix()
                if name.startswith(".") or rel.startswith(NOT_UPLOADED):
                    continue
                stamp = self._stamp(rel)
                if self.synced.get(rel) != stamp:
                    self.loc.put_file(self.dir / rel, rel)
                    self.synced[rel] = stamp
                    sent.append(rel)
        return sent

    def clear(self) -> None:
        """Empty the mirror (after each source): the disk holds one source at a time."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.synced.clear()
