"""`emo optout OUT --source URI_OR_SHA256`: remove a source and everything derived from it, for good.

Files and rows go; a tombstone (OUT/manifests/tombstones.jsonl) keeps a rerun from bringing the
source back: its URI is never fetched again, and the same bytes from another URI are refused.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from manifests.lineage import learned_from
from manifests.redact import redact_uri
from manifests.store import ManifestStore
from manifests.tombstones import TOMBSTONES
from pipeline.ledger import Ledger

DERIVED_TABLES = ("shots", "timeline", "tracks", "segments", "clips", "rejections", "splits")
def forget_inputs(store: ManifestStore, inputs: list[dict[str, Any]]) -> None:
    """Drop these inputs' `sources` rows, download runs and partial downloads; their media stay."""
    store.delete_shards("sources", [r["input_id"] for r in inputs])
    Ledger(store).forget([r["input_id"] for r in inputs], ["download"])
    for r in inputs:
        store.loc.delete(f"downloads/{r['input_id']}.part")


def remove_sources(store: ManifestStore, sids: set[str], inputs: list[dict[str, Any]]) -> int:
    """Delete everything these sources gave: rows of every derived table, stage runs, masks, clips and the
    trainer's cached features of their clips, and the stored media and audio that `inputs` name.
    Returns the number of files deleted."""
    loc = store.loc
    removed = sum(loc.delete(rel) for r in inputs for rel in {r["media_path"], r["audio_path"]} if rel)
    for table in DERIVED_TABLES:
        store.delete_shards(table, sids)
    Ledger(store).forget(sids)  # every stage's run on them
    for sid in sids:
        for folder in ("masks", "clips", "crops"):  # crops/: written by earlier versions
            removed += loc.delete_tree(f"{folder}/{sid}")
    # The trainer's per-clip audio features (model/data.py), named by clip id.
    for f in loc.files("cache"):
        if any(f.base_name.startswith(f"{sid}-") for sid in sids):
            loc.fs.delete_file(f.path)
            removed += 1
    return removed


def optout(out: str | Path, ref: str, reason: str = "opt-out request",
           checkpoints: list[str | Path] = ()) -> dict[str, Any]:
    """Remove every source whose URI, sha256 or source_id is `ref`, with all it produced.

    Checkpoints are not deleted, but the ones that learned from the source (found under OUT and
    `checkpoints`, by what their meta.json records, parents included) are named in the result and
    the tombstone: they need retraining, or deleting, for the opt-out to reach the model."""
    store = ManifestStore(out)
    sources = store.read("sources").to_pylist()
    refs = {ref, redact_uri(ref)}  # stored URIs are redacted; the owner may quote the full signed URL
    hits = [r for r in sources if refs & {r["uri"], r["final_url"], r["sha256"], r["source_id"]}]
    if not hits:
        raise KeyError(f"no source matches {ref!r} in {store.root}")
    shas = {r["sha256"] for r in hits if r["sha256"]}
    # The same bytes under any other URI go too: consent is about the content.
    victims = [r for r in sources if r in hits or (r["sha256"] and r["sha256"] in shas)]
    sids = {r["source_id"] for r in victims if r["source_id"]}
    forget_inputs(store, victims)
    removed_files = remove_sources(store, sids, victims)
    learned = learned_from([store.loc.uri, *checkpoints], sids)  # a folder, or a prefix on object storage
    tomb = {"at": datetime.now(UTC).isoformat(), "reason": reason, "ref": ref,
            "uris": sorted({r["uri"] for r in victims} | {r["final_url"] for r in victims if r["final_url"]}),
            "sha256": sorted(shas), "checkpoints": [a["checkpoint"] for a in learned["affected"]]}
    # Appended by rewriting the whole file: an object store has no append, and a reader sees old or new.
    store.loc.write_text(TOMBSTONES, store.loc.read_text(TOMBSTONES, default="") + json.dumps(tomb) + "\n")
    return {"sources_removed": len(victims), "source_ids": sorted(sids), "files_removed": removed_files,
            "manifest_hash": store.content_hash(), "checkpoints_affected": learned["affected"],
            "checkpoints_unknown": learned["unknown"]}
