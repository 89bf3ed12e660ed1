"""`emo optout OUT --source URI_OR_SHA256`: remove a source and everything derived from it, for good.

Files and rows go; a tombstone (OUT/manifests/tombstones.jsonl) keeps a rerun from bringing the
source back: its URI is never fetched again, and the same bytes from another URI are refused.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from manifests.lineage import learned_from
from manifests.redact import redact_uri
from manifests.store import ManifestStore

DERIVED_TABLES = ("shots", "tracks", "segments", "clips", "rejections")


def tombstones_path(out: str | Path) -> Path:
    return Path(out) / "manifests" / "tombstones.jsonl"


def load_tombstones(out: str | Path) -> tuple[set[str], set[str]]:
    """(blocked URIs, blocked sha256s)."""
    p = tombstones_path(out)
    uris, shas = set(), set()
    if p.exists():
        for line in p.read_text().splitlines():
            if line.strip():
                t = json.loads(line)
                uris.update(t.get("uris", []))
                shas.update(t.get("sha256", []))
    return uris, shas


def forget_inputs(store: ManifestStore, inputs: list[dict[str, Any]]) -> None:
    """Drop these inputs' `sources` rows, download runs and partial downloads; their media stay."""
    for r in inputs:
        store.shard_path("sources", r["input_id"]).unlink(missing_ok=True)
        store.shard_path("stage_runs", f"download-{r['input_id']}").unlink(missing_ok=True)
        (store.out / "downloads" / f"{r['input_id']}.part").unlink(missing_ok=True)


def remove_sources(store: ManifestStore, sids: set[str], inputs: list[dict[str, Any]]) -> int:
    """Delete everything these sources gave: rows of every derived table, stage runs, masks, clips and the
    trainer's cached features of their clips, and the stored media and audio that `inputs` name.
    Returns the number of files deleted."""
    removed = 0
    for r in inputs:
        for rel in (r["media_path"], r["audio_path"]):
            if rel and (store.out / rel).exists():
                (store.out / rel).unlink()
                removed += 1
    for sid in sids:
        for table in DERIVED_TABLES:
            store.shard_path(table, sid).unlink(missing_ok=True)
        for key in store.shard_keys("stage_runs"):
            if key.endswith(f"-{sid}"):
                store.shard_path("stage_runs", key).unlink()
        for folder in ("masks", "clips", "crops"):  # crops/: written by earlier versions
            d = store.out / folder / sid
            if d.exists():
                removed += sum(1 for p in d.rglob("*") if p.is_file())
                shutil.rmtree(d)
        cache = store.out / "cache"  # the trainer's per-clip audio features (model/data.py), named by clip id
        for p in list(cache.rglob(f"{sid}-*")) if cache.is_dir() else []:
            p.unlink()
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
    learned = learned_from([out, *checkpoints], sids)
    tomb = {"at": datetime.now(UTC).isoformat(), "reason": reason, "ref": ref,
            "uris": sorted({r["uri"] for r in victims} | {r["final_url"] for r in victims if r["final_url"]}),
            "sha256": sorted(shas), "checkpoints": [a["checkpoint"] for a in learned["affected"]]}
    p = tombstones_path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a") as fh:
        fh.write(json.dumps(tomb) + "\n")
    return {"sources_removed": len(victims), "source_ids": sorted(sids), "files_removed": removed_files,
            "manifest_hash": store.content_hash(), "checkpoints_affected": learned["affected"],
            "checkpoints_unknown": learned["unknown"]}
