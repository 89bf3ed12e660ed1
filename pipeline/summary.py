"""The run summary: what was seen, kept and dropped, by stage and by reason."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from manifests import TABLES, ManifestStore
from pipeline.ledger import reason_of


@dataclass
class Summary:
    inputs: int = 0
    ok: int = 0
    failed: Counter = field(default_factory=Counter)  # by reason
    skipped: Counter = field(default_factory=Counter)
    unique_sources: int = 0
    bytes: int = 0
    hours: float = 0.0
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "ok": self.ok, "failed": dict(self.failed), "skipped": dict(self.skipped),
                "unique_sources": self.unique_sources, "bytes": self.bytes, "hours": self.hours,
                "stages": self.stages, "tables": self.tables}

    def render(self) -> str:
        lines = [
            f"sources: {self.inputs} seen, {self.ok} ok ({self.unique_sources} distinct by content), "
            f"{sum(self.failed.values())} failed, {sum(self.skipped.values())} skipped",
            f"media: {self.bytes / 1e6:.1f} MB, {self.hours * 60:.2f} minutes",
        ]
        for kind, counter in (("failed", self.failed), ("skipped", self.skipped)):
            for reason, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {kind:7s} {reason:28s} {n}")
        if self.stages:
            lines.append(f"{'stage':10s} {'ok':>5s} {'failed':>7s} {'skipped':>8s} {'rows':>7s} {'seconds':>9s}")
            for name, s in self.stages.items():
                lines.append(f"{name:10s} {s['ok']:5d} {s['failed']:7d} {s['skipped']:8d} {s['rows']:7d} {s['seconds']:9.1f}")
                for reason, n in sorted(s["reasons"].items()):
                    lines.append(f"    {reason:34s} {n}")
        lines.append("tables: " + ", ".join(f"{t}={n}" for t, n in self.tables.items()))
        return "\n".join(lines)


def summarize(store: ManifestStore, input_ids: list[str], stage_names: list[str]) -> Summary:
    s = Summary(inputs=len(input_ids))
    wanted = set(input_ids)
    # Each table read once: on object storage a read costs requests per shard, not per row.
    read = {"sources": store.read("sources"), "stage_runs": store.read("stage_runs")}
    sources = [r for r in read["sources"].to_pylist() if r["input_id"] in wanted]
    seen_content: set[str] = set()
    for r in sources:
        if r["status"] == "ok":
            s.ok += 1
            if r["source_id"] not in seen_content:
                seen_content.add(r["source_id"])
                s.bytes += r["bytes"] or 0
                s.hours += (r["duration_s"] or 0.0) / 3600
        elif r["status"] == "skipped":
            s.skipped[reason_of(r["error"], "unknown")] += 1
        else:
            s.failed[reason_of(r["error"], "unknown")] += 1
    s.unique_sources = len(seen_content)
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"ok": 0, "failed": 0, "skipped": 0, "rows": 0,
                                                          "seconds": 0.0, "reasons": Counter()})
    for r in read["stage_runs"].to_pylist():
        if r["stage"] == "download" or r["stage"] not in stage_names or r["source_id"] not in seen_content:
            continue
        st = per[r["stage"]]
        st[r["status"] if r["status"] in ("ok", "failed", "skipped") else "failed"] += 1
        st["rows"] += r["n_rows"] or 0
        st["seconds"] += r["seconds"] or 0.0
        if r["status"] != "ok":
            st["reasons"][f"{r['status']}:{reason_of(r['error'], 'unknown')}"] += 1
        for k, v in (r["counters"] or []):
            if k not in ("ok",):
                st["reasons"][k] += v
    s.stages = {n: {**per[n], "reasons": dict(per[n]["reasons"])} for n in stage_names if n in per}
    s.tables = {t: (read[t] if t in read else store.read(t, columns=[TABLES[t].names[0]])).num_rows
                for t in store.tables()}
    return s
