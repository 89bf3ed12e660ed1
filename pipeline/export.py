"""`emo export OUT`: the kept clips as a training set you can defend.

Judges the corpus-level rule (near-duplicates across sources), splits train/validation so that
no identity is on both sides, and writes both decisions into its own table, `splits`
(manifests/splits.py): the quality stage's `clips` and `rejections` are read, never rewritten.
Writes a dataset card (Markdown and JSON) that names the manifest hash of this exact dataset.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from manifests.clips import CLIPS
from manifests.splits import TRAINING_TABLES, all_rejections, exported_clips, training_hash
from manifests.store import ManifestStore


def dhash_frames(path: Path, n: int = 8) -> np.ndarray:
    """64-bit difference hashes of `n` frames spread over a video, as a (n, 64) bool array."""
    import cv2

    from stages.media.video_io import read_frames

    frames = [f for _, f in read_frames(path)]
    if not frames:
        return np.zeros((0, 64), bool)
    picks = np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int)
    out = []
    for i in picks:
        g = cv2.resize(cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY), (9, 8), interpolation=cv2.INTER_AREA)
        out.append((g[:, 1:] > g[:, :-1]).reshape(-1))
    return np.array(out)


def hash_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over a's frames of the Hamming distance to the closest frame of b."""
    if not len(a) or not len(b):
        return 64.0
    d = (a[:, None, :] != b[None, :, :]).sum(-1)
    return float(d.min(1).mean())


def find_near_duplicates(store: ManifestStore, clips: list[dict], threshold: float) -> dict[str, tuple[str, float]]:
    """clip_id -> (earlier clip it duplicates, distance), across sources; the first by clip order is kept."""
    hashes = {c["clip_id"]: dhash_frames(store.out / c["crop_path"]) for c in clips}
    dupes: dict[str, tuple[str, float]] = {}
    kept: list[dict] = []
    for c in sorted(clips, key=lambda c: (c["source_id"], c["clip_id"])):
        best = min(((hash_distance(hashes[c["clip_id"]], hashes[k["clip_id"]]), k["clip_id"]) for k in kept
                    if k["source_id"] != c["source_id"]), default=None)
        if best is not None and best[0] <= threshold:
            dupes[c["clip_id"]] = (best[1], best[0])
        else:
            kept.append(c)
    return dupes


def corpus_identities(store: ManifestStore) -> dict[str, str]:
    """track_id -> identity over the whole corpus: the same person in two sources is one identity.

    Clustered afresh at every export (a new source can join two clusters); an identity already
    on a track row (a label the user gave) is kept as it is.
    """
    from stages.faces.identity import cluster_corpus

    tracks = store.read("tracks", columns=["source_id", "shot_id", "track_id", "start_frame", "end_frame",
                                           "embedding", "backend", "identity_id"])
    if not tracks.num_rows:
        return {}
    given = tracks.column("identity_id").to_pylist()
    clustered = cluster_corpus(tracks)
    return {t: g or c for t, g, c in zip(tracks.column("track_id").to_pylist(), given, clustered, strict=True)}


def identity_split(clips: list[dict], val_fraction: float, seed: str = "emo-forge") -> dict[str, str]:
    """identity -> train/val; whole identities move, so no person is on both sides.

    Identities in a seeded hash order go to validation while they fit in `val_fraction` of the
    clip time. When none fits (few identities, as in small corpora) and there are at least two,
    the smallest goes to validation anyway: a validation set of nobody measures nothing.
    """
    seconds: dict[str, float] = defaultdict(float)
    for c in clips:
        seconds[c["identity_id"] or f"source:{c['source_id']}"] += c["end_s"] - c["start_s"]
    order = sorted(seconds, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    total = sum(seconds.values())
    split, val = {}, 0.0
    for ident in order:
        if len(seconds) > 1 and val + seconds[ident] <= val_fraction * total and len(split) < len(order) - 1:
            split[ident], val = "val", val + seconds[ident]
        else:
            split[ident] = "train"
    if len(seconds) > 1 and "val" not in split.values() and val_fraction > 0:
        split[min(seconds, key=lambda i: (seconds[i], i))] = "val"
    return split


def near_duplicate_threshold(store: ManifestStore, given: float | None) -> tuple[float, str, dict[str, Any]]:
    """(threshold, where it came from, the quality settings it sits in): `given` (emo export
    --near-duplicate), else the one curate's quality stage ran with, else quality.yaml's."""
    from pipeline.ledger import Ledger
    from stages.quality.stage import DEFAULTS

    recorded = Ledger(store).settings("quality")
    quality = {k: v for k, v in (recorded or DEFAULTS).items() if k in DEFAULTS}
    if given is not None:
        value, origin = float(given), "emo export --near-duplicate"
    elif recorded is not None:
        value, origin = float(recorded["rules"]["near_duplicate"]), "the quality settings curate ran with"
    else:
        value, origin = float(DEFAULTS["rules"]["near_duplicate"]), "quality.yaml (curate recorded no quality settings)"
    return value, origin, {**quality, "rules": {**quality["rules"], "near_duplicate": value}}


def export(out: str | Path, val_fraction: float = 0.1, command: str | None = None,
           near_duplicate: float | None = None) -> dict[str, Any]:
    """Judge near-duplicates, split by identity, write `splits` and the card; returns the card as a dict.

    near_duplicate: the rule's threshold (mean dHash distance); default: the one curate's quality
    settings held (quality.yaml's unless overridden). It is a corpus-level rule, judged here.
    `clips` and `rejections` are the quality stage's and are only read."""
    store = ManifestStore(out)
    clips = store.read("clips").to_pylist()
    identities = corpus_identities(store)
    for c in clips:
        c["identity_id"] = identities.get(c["track_id"], c["identity_id"])
    threshold, origin, quality = near_duplicate_threshold(store, near_duplicate)
    dupes = find_near_duplicates(store, clips, threshold)
    split = identity_split([c for c in clips if c["clip_id"] not in dupes], val_fraction)
    by_source: dict[str, list[dict]] = defaultdict(list)
    for c in clips:
        other, dist = dupes.get(c["clip_id"], (None, None))
        by_source[c["source_id"]].append({
            "clip_id": c["clip_id"], "source_id": c["source_id"], "track_id": c["track_id"],
            "identity_id": c["identity_id"],
            "split": None if other else split[c["identity_id"] or f"source:{c['source_id']}"],
            "near_duplicate_of": other, "near_duplicate_distance": dist,
            "near_duplicate_threshold": threshold if other else None})
    for sid, rows in by_source.items():
        store.write_shard("splits", sid, rows)
    store.delete_shards("splits", store.shard_keys("splits") - set(by_source))  # sources with no clips now
    exported = exported_clips(store)
    card = dataset_card(store, exported, command or " ".join(sys.argv),
                        {"val_fraction": val_fraction, "near_duplicate": threshold, "near_duplicate_from": origin,
                         "quality": quality})
    exp = Path(out) / "export"
    exp.mkdir(exist_ok=True)
    (exp / "dataset_card.json").write_text(json.dumps(card, indent=2, default=str))
    (exp / "dataset_card.md").write_text(render_card(card))
    pa.Table.from_pylist(exported, schema=CLIPS).to_pandas().to_parquet(exp / "clips.parquet")
    return card


def dataset_card(store: ManifestStore, clips: list[dict[str, Any]], command: str, config: dict[str, Any]) -> dict[str, Any]:
    """The card of `clips` (the clips as exported: splits.exported_clips) and what was rejected."""
    rej = all_rejections(store)
    hours: dict[str, Counter] = {k: Counter() for k in ("category", "language", "license", "split")}
    for c in clips:
        for k in hours:
            hours[k][c[k] or "unknown"] += (c["end_s"] - c["start_s"]) / 3600
    per_candidate: dict[str, set[str]] = defaultdict(set)
    for r in rej:
        per_candidate[r["candidate_id"]].add(r["rule"])
    return {
        "created_at": datetime.now(UTC).isoformat(),
        "manifest_hash": store.content_hash(["sources", *TRAINING_TABLES]),
        "clips_hash": training_hash(store),  # what a checkpoint trained on this export records
        "clips": len(clips),
        "hours": sum((c["end_s"] - c["start_s"]) for c in clips) / 3600,
        "identities": len({c["identity_id"] or c["source_id"] for c in clips}),
        "hours_by": {k: dict(v) for k, v in hours.items()},
        "rejected_candidates": len(per_candidate),
        "rejections_by_rule": dict(Counter(r["rule"] for r in rej)),
        "command": command,
        "config": config,  # with the quality settings curate ran with and the near-duplicate threshold judged by
    }


def render_card(card: dict[str, Any]) -> str:
    lines = ["# Dataset card", "", f"- manifest hash: `{card['manifest_hash']}`",
             f"- clips hash (recorded by checkpoints trained on it): `{card['clips_hash']}`", f"- created: {card['created_at']}",
             f"- clips kept: {card['clips']} ({card['hours'] * 60:.2f} minutes, {card['identities']} identities)",
             f"- candidates rejected: {card['rejected_candidates']}", f"- command: `{card['command']}`", ""]
    for key, table in card["hours_by"].items():
        lines += [f"## Minutes by {key}", "", f"| {key} | minutes |", "|---|---|"]
        lines += [f"| {k} | {v * 60:.2f} |" for k, v in sorted(table.items())] + [""]
    lines += ["## Rejections by rule", "", "| rule | failures |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(card["rejections_by_rule"].items(), key=lambda kv: -kv[1])]
    lines += ["", "## Configuration", "", "```json", json.dumps(card["config"], indent=2), "```", ""]
    return "\n".join(lines)
