"""`emo build BUILDFILE --out OUT`: bring a model up to date with a build file, redoing only what changed.

The steps, in order: curate -> export -> train/stage{k} ... -> sample/{name}. Each is keyed by the
hash of its inputs: the sources' content and metadata, its own settings, and the outputs of the
steps it reads (curate's dataset hash, export's clips hash, the parent checkpoint's weights). A step
whose key matches OUT/emo.lock and whose outputs are still there is skipped; downstream steps are
keyed on upstream *outputs*, so a step that reruns but produces the same thing stops the cascade.

    pipeline/buildfile.py   the build file parsed and checked into a BuildSpec
    pipeline/steps.py       export, train and sample steps: inputs(), run(), outputs_present()
    here                    the curate step (with what it forgets), the walk over the steps, the report

Curation resumes per source on its own (pipeline/runner.py), so a new source is the only one
processed, and it redoes by itself the runs of a stage whose settings changed (pipeline/ledger.py).
Before curating, the build forgets the sources the lock shows are stale (their content or metadata
changed, or they left the build file), so that curate redoes those too. The file format is shown in examples/build.yaml.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manifests import ManifestStore
from pipeline.buildfile import BuildSpec, load_build_file
from pipeline.ledger import Ledger
from pipeline.lock import FileHashes, Lock, changes, digest, record
from pipeline.optout import forget_inputs, remove_sources
from pipeline.steps import BuildContext, BuildOut, Step, later_steps

log = logging.getLogger(__name__)
CURATE_TABLES = ("sources", "shots", "timeline", "tracks", "segments", "clips", "rejections")


# ---------------------------------------------------------------- the steps


class _Pending(dict):
    """The outputs of a step a dry run would run first: every value says so."""

    def __init__(self, step: str):
        super().__init__()
        self.step = step

    def __getitem__(self, key: str) -> str:
        return f"<new output of {self.step}>"


class CurateStep(Step):
    """Curate the build's sources; keyed by each source's content and metadata, the stages and their config."""

    name = "curate"

    def inputs(self) -> dict[str, Any]:
        spec = self.ctx.spec
        sources = {r["uri"]: _source_hash(r, self.ctx.hashes) for r in spec.sources}
        return {"sources": sources, "stages": spec.stages, "config": spec.curate_config}

    def run(self, inputs: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
        return _run_curate(self.ctx.spec, self.ctx.out, inputs, prev)

    def outputs_present(self, record: dict[str, Any]) -> bool:
        return bool(ManifestStore(self.ctx.out.data).shard_keys("sources"))


def plan(ctx: BuildContext) -> list[Step]:
    """The build's steps in order; `ctx.outputs` fills in as they run (or are found up to date)."""
    return [CurateStep(ctx), *later_steps(ctx)]


def _source_hash(row: dict[str, Any], hashes: FileHashes) -> str:
    """A source's metadata and, for a local file, its content (a URL is known by its address)."""
    content = hashes(row["uri"]) if Path(row["uri"]).is_file() else None
    return digest({**row, "content": content})


def _run_curate(spec: BuildSpec, bo: BuildOut, inputs: dict, prev: dict | None) -> dict:
    from pipeline.runner import CurateOptions, curate

    store = ManifestStore(bo.data)
    _forget_stale(store, (prev or {}).get("inputs", {}).get("sources", {}), inputs["sources"])
    sources = bo.work / "build" / "sources.jsonl"
    sources.parent.mkdir(parents=True, exist_ok=True)
    sources.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in spec.sources))
    bo.publish("build/sources.jsonl")
    before = _run_times(store)
    summary = curate(CurateOptions(sources=str(sources), out=bo.data, stages=tuple(spec.stages),
                                   config=spec.curate_config, num_cpus=spec.num_cpus, max_workers=spec.max_workers))
    processed: dict[str, int] = {}
    for (stage, key), finished in _run_times(store).items():
        if before.get((stage, key)) != finished:
            processed[stage] = processed.get(stage, 0) + 1
    return {"dataset_hash": store.content_hash(CURATE_TABLES), "processed": processed, "sources_ok": summary.ok,
            "clips": store.read("clips").num_rows}


def _run_times(store: ManifestStore) -> dict[tuple[str, str], Any]:
    return {(r["stage"], r["source_id"]): r["finished_at"]
            for r in store.read("stage_runs", columns=["stage", "source_id", "finished_at"]).to_pylist()}


def _forget_stale(store: ManifestStore, old: dict[str, str], new: dict[str, str]) -> None:
    """Forget changed or dropped sources, so curate fetches and processes them anew. (Runs made with
    other settings curate redoes by itself: pipeline/ledger.py.)"""
    gone = {uri for uri, h in old.items() if new.get(uri) != h}
    rows = store.read("sources").to_pylist()
    stale = [r for r in rows if r["uri"] in gone]
    forget_inputs(store, stale)
    redo = {r["source_id"] for r in stale if r["source_id"]}  # source_ids every media stage redoes
    # Bytes no remaining input has: everything they gave goes, files included.
    orphans = redo - {r["source_id"] for r in rows if r["uri"] not in gone}
    remove_sources(store, orphans, [r for r in stale if r["source_id"] in orphans])
    Ledger(store).forget(redo)
    if gone:
        log.info("curate: forgetting %d changed or dropped inputs (%d sources redo every stage)", len(gone), len(redo))


# ---------------------------------------------------------------- the build


@dataclass
class StepResult:
    name: str
    action: str  # "ran", "up to date" or "would run"
    reason: str = ""
    seconds: float | None = None


@dataclass
class BuildReport:
    build_file: Path
    out: Path | str  # a folder, or the URI of a bucket prefix
    dry_run: bool
    steps: list[StepResult]
    lock: Lock

    @property
    def ran(self) -> list[str]:
        return [s.name for s in self.steps if s.action != "up to date"]

    def render(self) -> str:
        lines = [f"emo build {self.build_file} -> {self.out}" + (" (dry run)" if self.dry_run else "")]
        width = max(len(s.name) for s in self.steps)
        for s in self.steps:
            took = f" ({s.seconds:.1f} s)" if s.seconds is not None else ""
            lines.append(f"  {s.name:<{width}}  {s.action:<10}  {s.reason}{took}".rstrip())
        n, k = len(self.steps), len(self.ran)
        if not k:
            lines.append(f"nothing to do: all {n} steps are up to date")
        else:
            lines.append(f"{k} of {n} steps would run" if self.dry_run else
                         f"ran {k} of {n} steps; lock: {self.out}/emo.lock")
        return "\n".join(lines)


def build(build_file: str | Path, out: str | Path, dry_run: bool = False) -> BuildReport:
    """Run the steps whose inputs changed (or only say which and why, with dry_run)."""
    spec = load_build_file(build_file)
    bo = BuildOut(out)
    out = bo.work  # the lock and build/ are written here (and uploaded when OUT is a bucket)
    old = Lock.load(out)
    new = Lock(build_file=str(spec.file))
    hashes = FileHashes(out / "build" / "file_hashes.json")
    outputs: dict[str, dict] = {}
    results = []
    for step in plan(BuildContext(spec, bo, hashes, outputs)):
        prev = old.steps.get(step.name)
        inputs = step.inputs()
        if prev is None:
            reason = "never run"
        elif prev["key"] != digest(inputs):
            reason = "; ".join(changes(prev["inputs"], inputs))
        else:
            reason = None if step.outputs_present(prev) else "its outputs are missing or changed"
        if reason is None:
            new.steps[step.name], outputs[step.name] = prev, prev["outputs"]
            results.append(StepResult(step.name, "up to date"))
        elif dry_run:
            outputs[step.name] = _Pending(step.name)
            results.append(StepResult(step.name, "would run", reason))
        else:
            log.info("%s: %s", step.name, reason)
            t0 = time.perf_counter()
            produced = step.run(inputs, prev)
            new.steps[step.name] = record(inputs, produced, time.perf_counter() - t0)
            outputs[step.name] = produced
            Lock({**old.steps, **new.steps}, new.build_file).save(out)  # a crash keeps what finished
            bo.publish("emo.lock")
            results.append(StepResult(step.name, "ran", reason, time.perf_counter() - t0))
    if not dry_run and (new.steps != old.steps or new.build_file != old.build_file):
        new.save(out)
        bo.publish("emo.lock")
    if not dry_run:
        hashes.save()
        bo.publish("build/file_hashes.json")
    return BuildReport(spec.file, out if not bo.remote else bo.data, dry_run, results, new)
