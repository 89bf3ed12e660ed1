"""Every kind of bad input at once, through real `curate()` on a real local Ray (tests/fixtures/bad_corpus.py).

The run completes; every input ends with the specific outcome its kind expects; nothing outside
OUT is written; a failed input leaves no bytes under OUT but its rows; no planted secret is
stored anywhere under OUT (Parquet decoded, the export and the HTML audit included); a rerun
adds nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from manifests import ManifestStore
from pipeline import audit
from pipeline.export import export
from pipeline.runner import CurateOptions, curate
from pipeline.serve import LoopbackServer
from tests.fixtures.bad_corpus import KINDS, SECRET, build_bad_corpus

STAGES = ("download", "shots", "faces", "diarize", "quality")
CONFIG = {
    # Few, quick retries: the failing URLs would otherwise spend seconds in backoff.
    "download": {"retries": 1, "backoff_s": 0.05, "read_timeout_s": 2.0, "max_bytes": 16 << 20},
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


def secret_hits(root: Path, secret: str = SECRET) -> list[str]:
    """Files under `root` that hold `secret`: Parquet decoded (values are compressed on disk), others as bytes."""
    hits = []
    for p in root.rglob("*"):
        if not p.is_file() or p.name == ".uri_key":
            continue
        data = p.read_bytes()
        if p.suffix == ".parquet":
            data = json.dumps(pq.read_table(p).to_pylist(), default=str).encode()
        if secret.encode() in data or secret.lower().encode() in data.lower():
            hits.append(str(p.relative_to(root)))
    return hits


def leftovers(out: Path, rows: list[dict]) -> list[str]:
    """Media, audio and download files no ok source owns: what failed inputs left behind."""
    owned = {r[k] for r in rows if r["status"] == "ok" for k in ("media_path", "audio_path") if r[k]}
    return sorted(str(p.relative_to(out)) for d in ("media", "audio", "downloads") if (out / d).exists()
                  for p in (out / d).rglob("*") if p.is_file() and str(p.relative_to(out)) not in owned)


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

    # A failed input leaves no bytes under OUT but its rows; the key for secret URIs is the owner's only.
    assert leftovers(out, rows) == []
    assert oct((out / ".uri_key").stat().st_mode & 0o777) == "0o600"
    # Recorded as the user wrote it: no strip, no scheme guess, no symlink resolution.
    assert by_kind["leading_space"]["uri"] == str(corpus / " lead.mp4")
    assert by_kind["colon_name"]["uri"] == str(corpus / "take:2.mp4")
    assert by_kind["symlink"]["uri"] == str(corpus / "files" / "alias.mp4")
    assert by_kind["presigned_url"]["uri"].count("REDACTED") == 3 and "X-Amz-Expires=3600" in by_kind["presigned_url"]["uri"]
    assert by_kind["nul_in_path"]["error"].startswith(f"bad_row: {sources}: line ")

    # No planted secret anywhere under OUT: manifests, summary, the export and the HTML audit.
    export(out, command="pytest")
    audit.report(out)
    assert (out / "audit" / "report.html").is_file()
    assert secret_hits(out) == []

    # A rerun is idempotent for every input (/proc/self/environ included): nothing new is written.
    with LoopbackServer(corpus / "files") as server:
        again = curate(CurateOptions(sources=str(sources), out=str(out), stages=STAGES, config=CONFIG))
    assert again.inputs == len(KINDS)
    assert sorted(r["input_id"] for r in ManifestStore(out).read("sources").to_pylist()) == sorted(by_kind[k.name]["input_id"] for k in KINDS)


def test_no_secret_reaches_a_checkpoint(tmp_path):
    """An OUT written before redaction holds a full signed URL; a checkpoint trained on it records it redacted."""
    from model.train import main as train
    from tests.fixtures.tiny_clips import build_clips

    data = tmp_path / "data"
    build_clips(data)
    url = f"https://alice:{SECRET}@bucket.example/v.mp4?X-Amz-Signature={SECRET}&part=1"
    ManifestStore(data).write_shard("sources", "carphone", [{"input_id": "0" * 16, "source_id": "carphone",
                                                             "uri": url, "status": "ok", "license": "CC-BY-4.0"}])
    (tmp_path / "cfg.json").write_text(json.dumps({"batch_size": 1}))
    train(["--data", str(data), "--stage", "1", "--out", str(tmp_path / "run"), "--steps", "1",
           "--config", str(tmp_path / "cfg.json"), "--quiet"])
    metas = list((tmp_path / "run").rglob("meta.json"))
    assert metas and secret_hits(tmp_path / "run") == []
    (src,) = json.loads(metas[-1].read_text())["sources"]
    assert src["uri"] == "https://REDACTED@bucket.example/v.mp4?X-Amz-Signature=REDACTED&part=1"


def emo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize(("text", "says"), [
    ("uri,title,uri\na.mp4,x,b.mp4\n", "line 1: the column 'uri' appears more than once"),
    ("title\na.mp4\n", "line 1: a 'uri' column is required"),
])
def test_cli_names_a_bad_sources_file_in_one_line(tmp_path, text, says):
    (tmp_path / "s.csv").write_text(text)
    done = emo("curate", "s.csv", "--out", "out", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"emo: error: s.csv: {says}") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out" / "sources").exists()


def test_cli_run_with_bad_rows_and_secret_urls_goes_on_and_prints_no_secret(tmp_path, demo_corpus):
    """`emo curate` as a user runs it: a bad row and a 404 with credentials fail alone, the good clip is ok."""
    with LoopbackServer(demo_corpus) as srv:
        bad = srv.url(f"missing.mp4?token={SECRET}").replace("http://", f"http://alice:{SECRET}@")
        (tmp_path / "s.csv").write_text(f"uri,title\n{srv.url('cuts.mp4')}?sig={SECRET},good\n,empty\n{bad},404\n")
        done = emo("curate", "s.csv", "--out", "out", "--stages", "download", "--num-cpus", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert SECRET not in done.stdout + done.stderr
    rows = {r["title"]: r for r in ManifestStore(tmp_path / "out").read("sources").to_pylist()}
    assert rows["good"]["status"] == "ok" and rows["good"]["uri"].endswith("cuts.mp4?sig=REDACTED")
    assert rows["empty"]["error"] == "bad_row: s.csv: line 3: the 'uri' cell is empty"
    assert rows["404"]["error"].startswith("http_404: http://REDACTED@127.0.0.1:")
    assert secret_hits(tmp_path / "out") == []
