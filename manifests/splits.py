"""`splits`: what `emo export` decided for each kept clip, one row per clip, one shard per source.

Written only by the export (never by a stage); the quality stage's `clips` and `rejections` are
not touched by it. A clip is either in `train` or `val` (whole identities on one side), or a
near-duplicate of an earlier clip of another source (`split` null, `near_duplicate_of` set), which
trains on nothing. Readers see clips as exported through `exported_clips`.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from manifests._schema import table_schema

SPLITS = table_schema(
    "splits",
    1,
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("track_id", pa.string()),
        pa.field("identity_id", pa.string()),  # the track's identity, clustered across the corpus
        pa.field("split", pa.string()),  # train / val, identity-disjoint; null for a near-duplicate
        pa.field("near_duplicate_of", pa.string()),  # the earlier clip (of another source) this one repeats
        pa.field("near_duplicate_distance", pa.float64()),  # mean dHash distance to it
        pa.field("near_duplicate_threshold", pa.float64()),  # at or below: a duplicate
    ],
)

# What a model trains on: a checkpoint records the content hash of these (model/train.py).
TRAINING_TABLES = ("clips", "splits")


def exported_clips(store) -> list[dict[str, Any]]:
    """`clips` rows as the export left them: identity and split from `splits`, near-duplicates out.

    A clip the export has not seen (none ran yet, or quality ran again since) keeps its own
    columns (split null), so training uses it, as it did before any export."""
    decided = {r["clip_id"]: r for r in store.read("splits").to_pylist()}
    rows = []
    for c in store.read("clips").to_pylist():
        s = decided.get(c["clip_id"])
        if s is None:
            rows.append(c)
        elif s["near_duplicate_of"] is None:
            rows.append({**c, "identity_id": s["identity_id"], "split": s["split"]})
    return rows


def near_duplicate_rejections(store) -> list[dict[str, Any]]:
    """The export's near-duplicates as `rejections`-shaped rows (rule near_duplicate), for reports."""
    dupes = {r["clip_id"]: r for r in store.read("splits").to_pylist() if r["near_duplicate_of"] is not None}
    return [{"candidate_id": c["clip_id"], "source_id": c["source_id"], "shot_id": c["shot_id"],
             "track_id": c["track_id"], "segment_id": c["segment_id"], "start_s": c["start_s"], "end_s": c["end_s"],
             "rule": "near_duplicate", "value": dupes[c["clip_id"]]["near_duplicate_distance"],
             "threshold": dupes[c["clip_id"]]["near_duplicate_threshold"], "rules": None}
            for c in store.read("clips").to_pylist() if c["clip_id"] in dupes]


def all_rejections(store) -> list[dict[str, Any]]:
    """Every rejected candidate's rows: the quality stage's `rejections` and the export's near-duplicates."""
    return store.read("rejections").to_pylist() + near_duplicate_rejections(store)


def training_hash(store) -> str:
    """The content hash of what a model trains on: `clips`, and `splits` once an export wrote it."""
    return store.content_hash([t for t in TRAINING_TABLES if t == "clips" or store.shard_keys(t)])
