"""Manifest tables: explicit, versioned Parquet schemas and their atomic sharded store.

Where each column is born:
  sources     manifests/sources.py   (stages/download/stage.py)
  stage_runs  manifests/runs.py      (pipeline/ledger.py, one row per stage and source)
  shots       manifests/shots.py     (stages/shots/stage.py)
  timeline    manifests/timeline.py  (stages/shots/stage.py: each frame's time on the media clock)
  tracks      manifests/tracks.py    (stages/faces/stage.py)
  segments    manifests/segments.py  (stages/diarize/stage.py)
  clips       manifests/clips.py     (stages/quality/stage.py)
  rejections  manifests/clips.py     (stages/quality/stage.py)
  splits      manifests/splits.py    (pipeline/export.py: identity, train/val, near-duplicates)
"""

from manifests.clips import CLIPS, REJECTIONS
from manifests.runs import STAGE_RUNS
from manifests.segments import SEGMENTS
from manifests.shots import SHOTS
from manifests.sources import SOURCES
from manifests.splits import SPLITS
from manifests.timeline import TIMELINE
from manifests.tracks import TRACKS

TABLES = {
    "sources": SOURCES,
    "stage_runs": STAGE_RUNS,
    "shots": SHOTS,
    "timeline": TIMELINE,
    "tracks": TRACKS,
    "segments": SEGMENTS,
    "clips": CLIPS,
    "rejections": REJECTIONS,
    "splits": SPLITS,
}

from manifests.store import ManifestStore, rows_to_table  # noqa: E402

__all__ = ["TABLES", "ManifestStore", "rows_to_table"]
