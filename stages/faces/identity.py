"""Identities across the corpus: tracks clustered by their face embeddings, so the export splits by person.

Each backend's embeddings are clustered on their own (ArcFace and dlib live in different spaces),
with that model's same-person distance. Tracks without an embedding cannot be told apart by face;
each source's embedding-less tracks become one identity, `src-<source_id>`, so a split by identity
is at worst a split by source: the same video never lands on both sides.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

# Cosine distance under which two ArcFace track embeddings are one person (similarity 0.4 or more);
# a track's embedding is the mean of several frames, which makes it steadier than a single face.
ARCFACE_SAME_PERSON = 0.6
# dlib's ResNet descriptors (the mediapipe backend's embedder), unit length: measured on the packaged
# photos and videos, one person's faces were <= 0.055 apart, different people >= 0.100.
DLIB_SAME_PERSON = 0.075
SAME_PERSON = {"insightface": ARCFACE_SAME_PERSON, "mediapipe": DLIB_SAME_PERSON}


def cluster_corpus(tracks: pa.Table) -> list[str]:
    """`cluster_identities` per backend, each at its own threshold; ids in row order."""
    backends = tracks.column("backend").to_pylist() if "backend" in tracks.column_names else [None] * tracks.num_rows
    ids: list[str] = [""] * tracks.num_rows
    for backend in sorted(set(backends), key=str):
        rows = [i for i, b in enumerate(backends) if b == backend]
        sub = cluster_identities(tracks.take(rows), SAME_PERSON.get(backend, ARCFACE_SAME_PERSON))
        for i, ident in zip(rows, sub, strict=True):
            ids[i] = ident
    return ids


def cluster_identities(tracks: pa.Table, max_distance: float = ARCFACE_SAME_PERSON) -> list[str]:
    """One identity id per row of a `tracks` table, in row order.

    Average-linkage agglomerative clustering on cosine distance; tracks that appear together in
    one shot are different people, so a cluster holding two of them is split at that point by
    giving the later track its own cluster. Ids are `id-<first track_id of the cluster>`, stable
    across runs over the same manifests.
    """
    rows = tracks.select(["source_id", "shot_id", "track_id", "start_frame", "end_frame", "embedding"]).to_pylist()
    ids = [f"src-{r['source_id']}" for r in rows]
    with_emb = [i for i, r in enumerate(rows) if r["embedding"]]
    if not with_emb:
        return ids
    x = np.array([rows[i]["embedding"] for i in with_emb], np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
    if len(with_emb) == 1:
        labels = np.array([1])
    else:
        labels = fcluster(linkage(pdist(x, "cosine"), "average"), t=max_distance, criterion="distance")
    labels = _split_co_occurring(labels, [rows[i] for i in with_emb])
    names: dict[int, str] = {}
    for label, i in sorted(zip(labels, with_emb, strict=True), key=lambda p: rows[p[1]]["track_id"]):
        names.setdefault(int(label), f"id-{rows[i]['track_id']}")
        ids[i] = names[int(label)]
    return ids


def _split_co_occurring(labels: np.ndarray, rows: list[dict]) -> np.ndarray:
    """Two tracks on screen at the same time in one shot cannot be one person: the later one moves out."""
    labels = labels.copy()
    next_label = int(labels.max()) + 1
    by_shot: dict[str, list[int]] = {}
    for i in sorted(range(len(rows)), key=lambda i: rows[i]["track_id"]):
        by_shot.setdefault(rows[i]["shot_id"], []).append(i)
    for members in by_shot.values():
        for pos, a in enumerate(members):
            for b in members[pos + 1 :]:
                ra, rb = rows[a], rows[b]
                if labels[a] == labels[b] and ra["start_frame"] < rb["end_frame"] and rb["start_frame"] < ra["end_frame"]:
                    labels[b] = next_label
                    next_label += 1
    return labels
