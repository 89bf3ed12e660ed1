"""What a checkpoint learned from, and which checkpoints learned from a source.

The trainer writes `sources` into every checkpoint's meta.json: one entry per source of its
training clips (source_id, sha256, URI, license, consent, clip count and seconds), read from the
manifests when training starts. The record lives with the weights, so it still answers after the
manifests change or a source is opted out. A fine-tune or a later stage names its parent (path and
model sha256); what a checkpoint learned from is its own sources plus its parent's, all the way up.

Only JSON is read here: no torch, so `emo optout` and `emo detect` stay light.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from manifests.fs import Location, is_uri
from manifests.redact import redact_uri  # OUTs from before redaction hold full URIs
from manifests.store import ManifestStore

CHECKPOINT_FORMAT = "emo-forge/checkpoint/"  # the prefix of model/checkpoint.py's FORMAT


def training_sources(out: str | Path, clips: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per source of `clips` (rows of OUT's clips table), with what `sources` knows of it."""
    store = ManifestStore(out)
    known = {r["source_id"]: r for r in store.read("sources").to_pylist() if r.get("source_id")}
    per: dict[str, dict[str, Any]] = {}
    for c in clips:
        sid = c["source_id"]
        src = known.get(sid, {})
        entry = per.setdefault(sid, {
            "source_id": sid, "sha256": src.get("sha256"), "uri": redact_uri(src.get("uri")),
            "license": c.get("license") or src.get("license"), "consent": c.get("consent") or src.get("consent"),
            "clips": 0, "seconds": 0.0})
        entry["clips"] += 1
        entry["seconds"] += float(c["n_frames"]) / float(c.get("fps") or 25.0)
    return [{**e, "seconds": round(e["seconds"], 3)} for _, e in sorted(per.items())]


def merge_sources(earlier: list[dict[str, Any]], now: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A resumed run learned from both: the union by source_id, today's entry where both have one."""
    by_id = {e["source_id"]: e for e in earlier} | {e["source_id"]: e for e in now}
    return [by_id[k] for k in sorted(by_id)]


@dataclass
class Checkpoint:
    path: Path | str  # the step folder: a local Path, or its URI on object storage
    meta: dict[str, Any]

    @property
    def sources(self) -> list[dict[str, Any]] | None:
        """What its own training clips came from; None when made before checkpoints recorded it."""
        return self.meta.get("sources")

    @property
    def model_sha256(self) -> str:
        return self.meta.get("model_sha256", "")


# Folders of a curate OUT that hold data, never checkpoints: not walked (a big corpus has many files).
DATA_FOLDERS = {"media", "audio", "clips", "masks", "crops", "manifests", "cache", "downloads"}


def _metas(root: Path) -> list[Path]:
    if (root / "meta.json").is_file():
        return [root / "meta.json"]
    found = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in DATA_FOLDERS or Path(folder) != root)
        if "meta.json" in files:
            found.append(Path(folder) / "meta.json")
    return sorted(found)


def _store_metas(root: str) -> list[tuple[str, str]]:
    """(step URI, meta.json text) of each meta.json at or under a prefix on object storage."""
    loc, found = Location(root), []
    if loc.exists("meta.json"):
        return [(loc.uri, loc.read_text("meta.json"))]
    folders = [""]
    while folders:  # one listing per folder, so a corpus' data folders are never listed
        rel = folders.pop()
        sel = pafs.FileSelector(loc.full(rel), recursive=False, allow_not_found=True)
        for info in loc.fs.get_file_info(sel):
            child = loc.rel(info)
            if info.type == pafs.FileType.Directory and not (rel == "" and info.base_name in DATA_FOLDERS):
                folders.append(child)
            elif info.base_name == "meta.json":
                found.append((loc.child_uri(rel), loc.read_text(child)))
    return sorted(found)


def find_checkpoints(*roots: str | Path) -> list[Checkpoint]:
    """Every emo-forge checkpoint (a step folder with its meta.json) at or under these folders or prefixes."""
    seen, found = set(), []
    for root in roots:
        if is_uri(root):
            try:
                metas = _store_metas(str(root))
            except OSError:  # an unreachable store or a deleted bucket: nothing found there
                metas = []
        else:
            metas = [(m.resolve().parent, m) for m in _metas(Path(root))]
        for where, m in metas:
            try:
                meta = json.loads(m if isinstance(m, str) else m.read_text())
            except (OSError, ValueError):
                continue
            if not str(meta.get("format", "")).startswith(CHECKPOINT_FORMAT) or where in seen:
                continue
            seen.add(where)
            found.append(Checkpoint(where if isinstance(m, str) else m.parent, meta))
    return found


def _exists(root: str | Path) -> bool:
    return is_uri(root) or Path(root).exists()


def _search(roots: list[str | Path]) -> tuple[list[Checkpoint], dict[str, Checkpoint]]:
    """The checkpoints under the roots that exist, and the same by model sha256 (to find parents)."""
    found = find_checkpoints(*[r for r in roots if _exists(r)])
    return found, {c.model_sha256: c for c in found if c.model_sha256}


def _parent(ck: Checkpoint, index: dict[str, Checkpoint]) -> Checkpoint | None:
    """The checkpoint this one started from: among those found, by model sha256, else at its recorded path."""
    parent = ck.meta.get("parent")
    if not parent:
        return None
    if parent.get("model_sha256") in index:
        return index[parent["model_sha256"]]
    found = find_checkpoints(parent["path"]) if parent.get("path") and _exists(parent["path"]) else []
    return found[0] if found else Checkpoint(Path(parent.get("path") or "?"), parent)  # the record: no sources


def learned_sources(ck: Checkpoint, index: dict[str, Checkpoint] | None = None) -> tuple[list[dict], list[str]]:
    """(the sources this checkpoint and its ancestors learned from, the ancestors whose sources are unknown)."""
    index = index if index is not None else {}
    out: dict[str, dict] = {}
    unknown: list[str] = []
    hops: set[str] = set()
    node: Checkpoint | None = ck
    while node is not None and str(node.path) not in hops:
        hops.add(str(node.path))
        if node.sources is None:
            unknown.append(str(node.path))
        for e in node.sources or []:
            out.setdefault(e["source_id"], e)
        node = _parent(node, index)
    return [out[k] for k in sorted(out)], unknown


def learned_from(roots: list[str | Path], source_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Checkpoints under `roots` that learned from any of these sources, directly or through a parent:
    {"affected": [{checkpoint, stage, step, sources, via}], "unknown": [{checkpoint, why}]}."""
    found, index = _search(roots)
    affected, unknown = [], []
    for ck in found:
        own = {e["source_id"] for e in ck.sources or []} & source_ids
        sources, missing = learned_sources(ck, index)
        hit = sorted({e["source_id"] for e in sources} & source_ids)
        if hit:
            affected.append({"checkpoint": str(ck.path), "stage": ck.meta.get("stage"), "step": ck.meta.get("step"),
                             "sources": hit, "via": "its own training clips" if own else "a parent checkpoint"})
        elif missing:
            unknown.append({"checkpoint": str(ck.path),
                            "why": f"no record of what {missing[0]} learned from (made before checkpoints kept one)"})
    return {"affected": affected, "unknown": unknown}


def describe_checkpoints(roots: list[str | Path], ident: str) -> list[dict[str, Any]]:
    """For `emo detect --checkpoints`: each checkpoint with this watermark id and what it learned from,
    with its licenses and consent tallied by clip seconds."""
    found, index = _search(roots)
    described = []
    for ck in (c for c in found if c.model_sha256[:8] == ident.lower()):
        sources, unknown = learned_sources(ck, index)
        tally: dict[str, dict[str, float]] = {"licenses": {}, "consent": {}}
        for e in sources:
            for key, value in (("licenses", e.get("license")), ("consent", e.get("consent"))):
                name = str(value or "unknown")
                tally[key][name] = round(tally[key].get(name, 0.0) + e["seconds"], 3)
        described.append({"checkpoint": str(ck.path), "stage": ck.meta.get("stage"), "step": ck.meta.get("step"),
                          "model_sha256": ck.model_sha256, "sources": sources, **tally,
                          "unrecorded_ancestors": unknown})
    return described


def checkpoints_of(out: str | Path) -> list[dict[str, Any]]:
    """For the audit: every checkpoint under OUT, what it learned from, and which of those sources
    have since been opted out (OUT's tombstones, by sha256)."""
    from manifests.tombstones import load_tombstones

    _, gone = load_tombstones(out)
    found, index = _search([out])
    rows = []
    for ck in found:
        sources, unknown = learned_sources(ck, index)
        rel = isinstance(ck.path, Path) and ck.path.is_relative_to(out)
        rows.append({"checkpoint": str(ck.path.relative_to(out)) if rel else str(ck.path),
                     "stage": ck.meta.get("stage"), "step": ck.meta.get("step"), "sources": len(sources),
                     "seconds": round(sum(e["seconds"] for e in sources), 1),
                     "opted_out": sorted(e["source_id"] for e in sources if e.get("sha256") in gone),
                     "unrecorded_ancestors": unknown})
    return rows
