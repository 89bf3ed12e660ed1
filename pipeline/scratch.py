"""The stage's view of OUT on a worker when OUT is on object storage.

Stages read and write plain files under `ctx.out` (stages/base.py); on object storage that
folder is a scratch mirror on the worker's disk (manifests/mirror.py): the source's media and
audio are fetched into it before a stage runs, what the stage wrote is uploaded after it, and the
mirror is emptied after each source. Upstream manifests are read from the store itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from manifests import ManifestStore
from manifests.mirror import Mirror as Scratch
from stages.base import StageContext

__all__ = ["MirrorContext", "Scratch"]


@dataclass
class MirrorContext(StageContext):
    """A StageContext whose files are the scratch mirror and whose manifests are the real store."""

    manifests: ManifestStore | None = field(default=None, repr=False)

    @property
    def store(self) -> ManifestStore:
        return self.manifests
