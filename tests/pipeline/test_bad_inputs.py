"""Every kind of bad input at once, through real `curate()` on a real local Ray (pipeline/bad_corpus.py).

The run completes; every input ends with the specific outcome its kind expects; nothing outside
OUT is written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from manifests import ManifestStore
from pipeline.bad_corpus import KINDS, build_bad_corpus
from pipeline.runner import CurateOptions, curate
from pipeline.serve import LoopbackServer

STAGES = ("download", "shots", "faces", "diarize", "quality")
CONFIG = {
    # Few, quick retries: the failing URLs would otherwise spend seconds in backoff.
    "download": {"retries": 1, "backoff_s": 0.05, "read_timeout_s": 2.0},
    # The dripping URL meets the download limit; the media stages get room on a busy machine.
    "pipeline": {"download_timeout_s": 8.0, "source_timeout_s": 60.0, "timeout_per_media_s": 10.0},
}


def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int, int]]:
    """Every entry under `root` (links and pipes not followed): (mode, size, mtime)."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and Path(dirpath) == skip.parent:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            st = os.lstat(Path(dirpath, name))
            seen[str(Path(dirpath, name).relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return seen


def counters(stage: str, run: dict) -> set[str]:
    return {f"{stage}:{k}" for k, _ in run["counters"]} | {f"{stage}:{k}={v}" for k, v in run["counters"]}


def outcome(src: dict, runs: dict[str, dict], rejected: dict[str, set[str]]) -> tuple[str | None, set[str]]:
    """(first failure as "stage:reason", or None; evidence: counters, what the probe found, rejection rules)."""
    reason = (src["error"] or "").split(":", 1)[0]
    evidence = counters("download", runs[src["input_id"]]["download"])
    if src["status"] != "ok":
        return f"download:{reason}", evidence
    evidence |= {f"download:rotation={src['rotation']}", f"download:mime={src['mime']}"}
    first = None
    for stage in STAGES[1:]:
        run = runs[src["source_id"]][stage]
        evidence |= counters(stage, run)
        if run["status"] == "failed" and first is None:
            first = f"{stage}:{run['error'].split(':', 1)[0]}"
    evidence |= {f"quality:{rule}" for rule in rejected.get(src["source_id"], ())}
    return first, evidence


def test_every_bad_input_ends_with_its_reason_and_nothing_leaks(ray_local, tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    (corpus / "files").mkdir(parents=True)
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    with LoopbackServer(corpus / "files") as server:
        sources = build_bad_corpus(corpus, server.url(""))
        before = snapshot(tmp_path)
        summary = curate(CurateOptions(sources=str(sources), out=str(out), stages=STAGES, config=CONFIG))

    store = ManifestStore(out)
    rows = store.read("sources").to_pylist()
    runs: dict[str, dict] = {}
    for r in store.read("stage_runs").to_pylist():
        assert r["stage"] not in runs.setdefault(r["source_id"], {}), r
        runs[r["source_id"]][r["stage"]] = r
    rejected: dict[str, set[str]] = {}
    for r in store.read("rejections").to_pylist():
        rejected.setdefault(r["source_id"], set()).add(r["rule"])

    by_kind = {r["title"]: r for r in rows}
    assert len(rows) == len(by_kind) == summary.inputs == len(KINDS)  # one row per input, none lost
    report, wrong = [], []
    for kind in KINDS:
        first, evidence = outcome(by_kind[kind.name], runs, rejected)
        got = first or ("passed, showing " + kind.expect if kind.expect in evidence else f"passed: {sorted(evidence)}")
        report.append(f"  {kind.name:24s} {got}")
        if not (kind.expect == first or (first is None and kind.expect in evidence)):
            wrong.append(kind.name)
    print(f"\n{len(KINDS)} kinds of bad input, {len({k.expect.split(':')[0] for k in KINDS})} stages of outcome:")
    print("\n".join(report))
    assert not wrong, f"unexpected outcomes for {wrong}"

    # Nothing outside OUT: the corpus and the test's folder are as they were, and no temporary file of
    # ours appeared in the system's temporary folder (other processes on this machine may add theirs).
    assert snapshot(tmp_path, skip=out) == {k: v for k, v in before.items()}
    tokens = {r["input_id"] for r in rows} | {r["source_id"] for r in rows if r["source_id"]}
    tokens |= {Path(p).stem for p in os.listdir(corpus / "files") if len(Path(p).stem) >= 8}
    ours = [e for e in set(os.listdir(tempfile.gettempdir())) - tmp_before if any(t in e for t in tokens)]
    assert not ours, ours
    for p in out.rglob("*"):  # names inside OUT come from ids, never from the inputs' names
        assert p.name.isascii() and not set(p.name) & set(" ;$`'\"\n"), p
