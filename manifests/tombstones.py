"""Opt-out tombstones: OUT/manifests/tombstones.jsonl, one JSON line per `emo optout` (pipeline/optout.py).

Read by curate (a tombstoned URI is never fetched, tombstoned bytes are refused) and by the audit
(which checkpoints learned from a source since opted out).
"""

from __future__ import annotations

import json
from pathlib import Path

from manifests.fs import Location

TOMBSTONES = "manifests/tombstones.jsonl"  # relative to OUT (a folder or a URI)


def load_tombstones(out: str | Path) -> tuple[set[str], set[str]]:
    """(blocked URIs, blocked sha256s)."""
    uris, shas = set(), set()
    for line in Location(out).read_text(TOMBSTONES, default="").splitlines():
        if line.strip():
            t = json.loads(line)
            uris.update(t.get("uris", []))
            shas.update(t.get("sha256", []))
    return uris, shas
