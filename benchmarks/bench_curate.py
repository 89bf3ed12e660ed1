"""End-to-end `emo curate` against the decode floor, CPU scaling and memory: `python -m benchmarks.bench_curate`.

Input: `compose_talking_corpus` (benchmarks/media.py): distinct 720p talking heads with speech,
`--sources` x `--source-seconds` (10 x 60 s by default), composed once under `--dir` and reused.
In one run it measures:

- the decode floor: PyAV decode of every video frame and every audio frame of the corpus, one
  file after another in this process, with the stages' thread settings (thread_type AUTO,
  FFmpeg's own thread count); no pixel conversion, which the stages pay on top;
- the decode passes the stages make of each source, on one core (the first --pass-sources files,
  scaled to the corpus): the shot stage and the face stage's detection pass decode look-only
  (video_io.LOOK_ONLY), the face stage's mesh pass decodes exactly, and quality decodes exactly
  again up to its last kept clip. Their sum over the cores is a lower bound on curate before any
  model runs, in units of the floor;
- `curate` with every available stage, in a fresh subprocess (Ray starts once per process) on a
  fresh OUT, with Ray given every core this process may use: wall time (Ray start-up included), its ratio to the floor,
  core-seconds and measured CPU-seconds per media second, and each stage's share of the
  `stage_runs` seconds;
- the same with `--num-cpus 1` and `--num-cpus 2`, each process tree pinned to that many cores
  (unless `--no-pin`: Ray's CPU count alone does not stop FFmpeg and torch threads from using
  every core): scaling efficiency = (t1 / t2) / 2; on a 2-core machine the run above is the 2-CPU run;
- peak resident memory, sampled with psutil over the subprocess's tree: the driver (the
  subprocess), Ray's workers (`ray::...` processes) and Ray's own daemons (raylet, GCS, ...), at
  1x and 4x the corpus (4x lists 4x as many distinct sources). RSS counts the shared pages of
  Ray's object store in every process that touched them, so sums over processes overstate.

Goals (issue 9): curate <= 4x the decode floor, efficiency >= 0.8, memory flat in corpus size
(judged on the driver and the largest worker: the tree also grows with how many actors run at once).

Smoke run (about 5 minutes on 2 cores): --sources 2 --source-seconds 10 --memory-sources 1.
Every curate run leaves its OUT and log under DIR/runs/ (cpusN, memN), for a look afterwards.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import psutil

from benchmarks.media import compose_talking_corpus
from stages.media.decode import decode_only

DEFAULT_DIR = Path("bench-out/curate")  # git-ignored
REPO = Path(__file__).resolve().parents[1]
GOALS = {"ratio_to_decode": 4.0, "scaling_efficiency": 0.8, "memory_growth": 1.25}
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # named like workers, but Ray's own daemons


class RunFailed(RuntimeError):
    """A curate subprocess that exited badly or ran past its time limit."""


def corpus(root: Path, n_sources: int, seconds: float) -> tuple[Path, list[Path]]:
    """A sources CSV listing the first `n_sources` talking heads of `seconds` (composed once), and their paths."""
    paths = compose_talking_corpus(root / f"talking_{seconds:g}s", n_sources, seconds)
    sources = root / f"sources_{n_sources}x{seconds:g}s.csv"
    with open(sources, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uri", "license", "consent", "category", "title", "language"])
        for p in paths:
            w.writerow([str(p.resolve()), "CC-BY-4.0", "yes", "speech", p.stem, "en"])
    return sources, paths


def decode_floor(paths: list[Path]) -> dict:
    """Decode every video and audio frame of every file, as the stages open them; wall and CPU seconds."""
    w0, c0 = time.perf_counter(), time.process_time()
    frames, audio_s = 0, 0.0
    for path in paths:
        with av.open(str(path)) as c:
            vs = c.streams.video[0]
            vs.thread_type = "AUTO"
            vs.codec_context.thread_count = 0
            streams = [vs, *c.streams.audio[:1]]
            for packet in c.demux(*streams):
                for f in packet.decode():
                    if isinstance(f, av.AudioFrame):
                        audio_s += f.samples / f.sample_rate
                    else:
                        frames += 1
    return {"seconds": time.perf_counter() - w0, "cpu_s": time.process_time() - c0, "frames": frames,
            "audio_s": audio_s}


def decode_passes(paths: list[Path], n_files: int = 2) -> dict:
    """CPU seconds of one exact and one look-only decode (one decoder thread) of the corpus, from `n_files` of it."""
    out = {}
    for name, look_only in (("exact", False), ("look_only", True)):
        c0 = time.process_time()
        for path in paths[:n_files]:
            decode_only(path, threads=1, look_only=look_only)
        out[name] = (time.process_time() - c0) * len(paths) / min(n_files, len(paths))
    return out


class TreeSampler:
    """Polls a process tree every `interval` s: peak RSS by role, and the last CPU time seen per process."""

    def __init__(self, pid: int, interval: float = 0.25):
        self.root, self.interval = psutil.Process(pid), interval
        self.peak = {"driver_mb": 0.0, "workers_mb": 0.0, "worker_max_mb": 0.0, "ray_daemons_mb": 0.0, "tree_mb": 0.0}
        self.cpu: dict[int, float] = {}
        self.max_workers = self.max_actors = 0  # Ray worker processes; of them, Ray Data map actors
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        mb = {"driver_mb": 0.0, "workers_mb": 0.0, "ray_daemons_mb": 0.0}
        worker_max, workers, actors = 0.0, 0, 0
        for p in [self.root, *self.root.children(recursive=True)]:
            try:
                with p.oneshot():
                    rss = p.memory_info().rss / 2**20
                    t = p.cpu_times()
                    cmd = " ".join(p.cmdline()[:2])
            except psutil.Error:
                continue
            self.cpu[p.pid] = t.user + t.system
            if p.pid == self.root.pid:
                mb["driver_mb"] += rss
            elif (cmd.startswith("ray::") or "default_worker.py" in cmd) and not cmd.startswith(RAY_AGENTS):
                mb["workers_mb"] += rss
                worker_max, workers = max(worker_max, rss), workers + 1
                actors += cmd.startswith("ray::MapWorker")
            else:
                mb["ray_daemons_mb"] += rss
        mb["tree_mb"] = sum(mb.values())
        mb["worker_max_mb"] = worker_max
        self.max_workers = max(self.max_workers, workers)
        self.max_actors = max(self.max_actors, actors)
        for k, v in mb.items():
            self.peak[k] = max(self.peak[k], v)


def run_curate(sources: Path, out: Path, num_cpus: int | None, pin: bool, timeout: float, mesh_every: int = 1) -> dict:
    """`curate` in a fresh subprocess on a fresh OUT; its timings, sampled memory and CPU, stage seconds.

    A run past `timeout` seconds (a hung worker) is killed, with every process of its tree.
    """
    sources, out = sources.resolve(), out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "benchmarks.bench_curate", "--child", str(sources), str(out)]
    if num_cpus:
        cmd += ["--num-cpus", str(num_cpus)]
    if mesh_every > 1:
        cmd += ["--child-mesh-every", str(mesh_every)]
    cores = sorted(os.sched_getaffinity(0))
    affinity = cores[:num_cpus] if pin and num_cpus and num_cpus < len(cores) else None
    t0 = time.perf_counter()
    with open(out / "bench.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO,
                                preexec_fn=(lambda: os.sched_setaffinity(0, affinity)) if affinity else None)
        with TreeSampler(proc.pid) as sampler:
            try:
                stdout, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_tree(proc.pid)
                proc.communicate()
                raise RunFailed(f"{out.name}: no result after {timeout:.0f} s, killed; see {out / 'bench.log'}") from None
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RunFailed(f"{out.name}: curate subprocess exited {proc.returncode}; see {out / 'bench.log'}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, "process_s": wall, "cores": len(affinity) if affinity else len(cores),
            "cpu_s": sum(sampler.cpu.values()), "peak_workers": sampler.max_workers, "peak_actors": sampler.max_actors, **sampler.peak,
            **stage_seconds(out)}


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant, listed before the first dies so none is missed."""
    root = psutil.Process(pid)
    for p in [*root.children(recursive=True), root]:
        try:
            p.kill()
        except psutil.Error:
            pass


def stage_seconds(out: Path) -> dict:
    from manifests import ManifestStore

    runs = ManifestStore(out).read("stage_runs", columns=["stage", "status", "seconds"]).to_pylist()
    by_stage: dict[str, float] = {}
    for r in runs:
        by_stage[r["stage"]] = by_stage.get(r["stage"], 0.0) + (r["seconds"] or 0.0)
    return {"stage_s": by_stage, "runs": len(runs), "runs_not_ok": sum(r["status"] != "ok" for r in runs)}


def child(sources: str, out: str, num_cpus: int | None, mesh_every: int = 1) -> None:
    """Inside the subprocess: start Ray, run curate with every available stage, print timings as JSON."""
    from pipeline.plan import available_stages
    from pipeline.runner import CurateOptions, curate, init_ray

    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    init_ray(None, num_cpus)
    t1 = time.perf_counter()
    config = {"faces": {"mesh_every": mesh_every}} if mesh_every > 1 else None
    curate(CurateOptions(sources=sources, out=out, stages=tuple(available_stages()), num_cpus=num_cpus, config=config))
    t2 = time.perf_counter()
    print(json.dumps({"ray_init_s": t1 - t0, "curate_s": t2 - t1, "e2e_s": t2 - t0}), flush=True)


class Runner:
    """Composes corpora on demand and runs curate on them, each run with a time limit that grows with its media."""

    def __init__(self, out: Path, seconds: float, timeout_factor: float):
        self.out, self.seconds, self.timeout_factor = out, seconds, timeout_factor

    def __call__(self, label: str, n_sources: int, num_cpus: int, pin: bool, mesh_every: int = 1) -> dict:
        sources, _ = corpus(self.out, n_sources, self.seconds)
        timeout = 600 + self.timeout_factor * n_sources * self.seconds
        return run_curate(sources, self.out / "runs" / label, num_cpus, pin, timeout, mesh_every)


def main(out: str | Path = DEFAULT_DIR, sources: int = 10, source_seconds: float = 60.0, scaling: bool = True,
         memory: bool = True, memory_sources: int | None = None, pin: bool = True,
         timeout_factor: float = 4.0, pass_sources: int = 2, mesh_every: int = 2) -> list[dict]:
    """Every measurement above; returns run_all rows (floor, curate, scaling, memory) and prints the report."""
    out = Path(out)
    run = Runner(out, source_seconds, timeout_factor)
    media_s = sources * source_seconds
    _, paths = corpus(out, sources, source_seconds)
    floor = decode_floor(paths)
    print(f"corpus: {sources} x {source_seconds:g} s of 1280x720 at 25 fps = {media_s / 60:.1f} min, "
          f"{floor['frames']} frames; decode floor {floor['seconds']:.1f} s ({floor['frames'] / floor['seconds']:.0f} fps)")
    rows = [{"name": "decode floor", "media_s": media_s, "frames": floor["frames"], "seconds": floor["seconds"],
             "fps": floor["frames"] / floor["seconds"]}]
    cores = len(os.sched_getaffinity(0))
    passes = decode_passes(paths, pass_sources)
    bound = (2 * passes["look_only"] + passes["exact"]) / cores  # shots + faces detection, faces mesh
    print(f"one decode on one core: exact {passes['exact']:.1f} CPU-s, look-only {passes['look_only']:.1f} CPU-s. "
          f"Shots, faces' detection pass and faces' mesh pass alone: {bound:.1f} s on {cores} cores = "
          f"{bound / floor['seconds']:.2f}x the floor, before any model runs and before quality's decode")
    rows.append({"name": "decode passes", "exact_cpu_s": passes["exact"], "look_only_cpu_s": passes["look_only"],
                 "lower_bound_s": bound, "lower_bound_ratio": bound / floor["seconds"]})
    try:
        main_run = run(f"cpus{cores}", sources, cores, pin)
    except RunFailed as e:
        print(f"curate: {e}")
        return [*rows, {"name": "curate, all stages", "error": str(e)}]
    rows.append({"name": "curate, all stages", "cores": main_run["cores"], "seconds": main_run["e2e_s"],
                 "ray_init_s": main_run["ray_init_s"], "ratio_to_decode": main_run["e2e_s"] / floor["seconds"],
                 "core_s_per_media_s": main_run["e2e_s"] * main_run["cores"] / media_s,
                 "cpu_s_per_media_s": main_run["cpu_s"] / media_s, "runs_not_ok": main_run["runs_not_ok"],
                 **{f"share_{k}": v / (sum(main_run["stage_s"].values()) or 1.0) for k, v in main_run["stage_s"].items()}})
    print(render_curate(main_run, floor, media_s))
    if mesh_every > 1:
        rows.append(mesh_every_row(run, main_run, floor, sources, cores, pin, mesh_every))
    if scaling:
        rows.append(scaling_row(run, main_run, sources, cores, pin))
    if memory:
        rows += memory_rows(run, main_run, sources, memory_sources or sources, cores)
    return rows


def mesh_every_row(run: Runner, main_run: dict, floor: dict, sources: int, cores: int, pin: bool, k: int) -> dict:
    """The same curate with the face stage's opt-in `mesh_every=k` (the mesh on every k-th frame)."""
    name = f"curate, faces mesh_every={k}"
    try:
        r = run(f"cpus{cores}-mesh{k}", sources, cores, pin, mesh_every=k)
    except RunFailed as e:
        print(f"{name}: {e}")
        return {"name": name, "error": str(e)}
    total = sum(r["stage_s"].values()) or 1.0
    faces_speedup = main_run["stage_s"].get("faces", 0.0) / max(r["stage_s"].get("faces", 0.0), 1e-9)
    print(f"{name}: {r['e2e_s']:.1f} s = {r['e2e_s'] / floor['seconds']:.2f}x the floor, "
          f"{main_run['e2e_s'] / r['e2e_s']:.2f}x as fast as every frame end to end, face stage "
          f"{faces_speedup:.2f}x (faces {r['stage_s'].get('faces', 0.0) / total:.0%} of stage-seconds)")
    return {"name": name, "seconds": r["e2e_s"], "ratio_to_decode": r["e2e_s"] / floor["seconds"],
            "speedup_vs_every_frame": main_run["e2e_s"] / r["e2e_s"], "faces_speedup": faces_speedup,
            "runs_not_ok": r["runs_not_ok"]}


def scaling_row(run: Runner, main_run: dict, sources: int, cores: int, pin: bool) -> dict:
    """Scaling efficiency from 1 to 2 CPUs; on a 2-core machine the main run is the 2-CPU run."""
    try:
        r1 = run("cpus1", sources, 1, pin)
        r2 = main_run if cores == 2 else run("cpus2", sources, 2, pin)
    except RunFailed as e:
        print(f"scaling: {e}")
        return {"name": "scaling 1 -> 2 CPUs", "error": str(e)}
    t1, t2 = r1["e2e_s"], r2["e2e_s"]
    eff = (t1 / t2) / 2
    print(f"scaling: 1 CPU {t1:.1f} s, 2 CPUs {t2:.1f} s"
          f"{' (process trees pinned to 1 and 2 cores)' if pin else ' (not pinned)'}: "
          f"efficiency {eff:.2f} (goal >= {GOALS['scaling_efficiency']}) {_verdict(eff >= GOALS['scaling_efficiency'])}; "
          f"map actors at once: {r1['peak_actors']} and {r2['peak_actors']}")
    return {"name": "scaling 1 -> 2 CPUs", "t1_s": t1, "t2_s": t2, "efficiency": eff, "pinned": pin,
            "actors_1cpu": r1["peak_actors"], "actors_2cpu": r2["peak_actors"]}


def memory_rows(run: Runner, main_run: dict, sources: int, n: int, cores: int) -> list[dict]:
    """Peak RSS at 1x and 4x `n` sources; the main run is the 1x run when `n` is the main corpus."""
    if n != sources:
        print(f"memory: on a smaller base of {n} sources ({n * run.seconds / 60:.1f} min), not the main corpus")
    try:
        one = main_run if n == sources else run(f"mem{n}", n, cores, False)
        four = run(f"mem{4 * n}", 4 * n, cores, False)
    except RunFailed as e:
        print(f"memory: {e}")
        return [{"name": "memory 1x vs 4x", "error": str(e)}]
    rows = []
    print(f"{'peak RSS MiB':16} {'driver':>8} {'workers':>8} {'1 worker':>9} {'ray daemons':>12} {'tree':>8} {'workers n':>10}")
    for label, r in ((f"1x ({n} src)", one), (f"4x ({4 * n} src)", four)):
        print(f"{label:16} {r['driver_mb']:8.0f} {r['workers_mb']:8.0f} {r['worker_max_mb']:9.0f} "
              f"{r['ray_daemons_mb']:12.0f} {r['tree_mb']:8.0f} {r['peak_workers']:10d}")
        rows.append({"name": f"memory {label}", "seconds": r["e2e_s"],
                     **{k: r[k] for k in ("driver_mb", "workers_mb", "worker_max_mb", "ray_daemons_mb", "tree_mb")}})
    # Judged per process: the tree also grows when a bigger corpus keeps more actors busy at once.
    growth = {k: four[k] / max(one[k], 1.0) for k in ("driver_mb", "worker_max_mb", "tree_mb")}
    flat = growth["driver_mb"] <= GOALS["memory_growth"] and growth["worker_max_mb"] <= GOALS["memory_growth"]
    print("growth 4x/1x: " + ", ".join(f"{k[:-3]} {g:.2f}" for k, g in growth.items())
          + f" (flat: driver and largest worker <= {GOALS['memory_growth']}; the tree also counts how many"
          f" actors ran at once) {_verdict(flat)}")
    rows.append({"name": "memory growth 4x/1x", **{k[:-3]: g for k, g in growth.items()}, "flat": flat})
    return rows


def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def render_curate(r: dict, floor: dict, media_s: float) -> str:
    ratio = r["e2e_s"] / floor["seconds"]
    total = sum(r["stage_s"].values()) or 1.0
    shares = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(r["stage_s"].items(), key=lambda kv: -kv[1]))
    return "\n".join([
        f"curate, all stages, {r['cores']} cores: {r['e2e_s']:.1f} s (Ray start {r['ray_init_s']:.1f} s), "
        f"{r['runs']} stage runs, {r['runs_not_ok']} not ok",
        f"  ratio to decode floor {ratio:.2f} (goal <= {GOALS['ratio_to_decode']:g}) {_verdict(ratio <= GOALS['ratio_to_decode'])}",
        f"  real-time factor per core {r['e2e_s'] * r['cores'] / media_s:.3f} core-s per media s "
        f"(measured CPU {r['cpu_s'] / media_s:.3f} CPU-s per media s; below 1: one core keeps up with real time)",
        f"  stage shares of {total:.0f} stage-seconds: {shares}",
        f"  stages fill {total / (r['curate_s'] * r['cores']):.0%} of curate's core-seconds "
        "(the rest: Ray Data start-up, actor set-up and model loading, idle cores)",
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(DEFAULT_DIR), help="work folder: the corpus is composed there once")
    parser.add_argument("--sources", type=int, help="number of talking-head sources (default 10, or from --minutes)")
    parser.add_argument("--minutes", type=float, help="corpus length; sets --sources from --source-seconds")
    parser.add_argument("--source-seconds", type=float, default=60.0, help="length of each source")
    parser.add_argument("--skip-scaling", action="store_true", help="skip the 1- and 2-CPU runs")
    parser.add_argument("--skip-memory", action="store_true", help="skip the 4x memory run")
    parser.add_argument("--memory-sources", type=int,
                        help="base for the memory comparison (1x vs 4x), when 4x the main corpus is too slow")
    parser.add_argument("--no-pin", action="store_true", help="scaling runs: do not pin the tree to N cores")
    parser.add_argument("--timeout-factor", type=float, default=4.0,
                        help="a curate run is killed after 600 s + this many seconds per media second")
    parser.add_argument("--pass-sources", type=int, default=2,
                        help="files timed for the one-core decode passes (scaled to the corpus)")
    parser.add_argument("--mesh-every", type=int, default=2,
                        help="also curate with the face stage's mesh on every k-th frame (1: skip that run)")
    parser.add_argument("--child", nargs=2, metavar=("SOURCES", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--num-cpus", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-mesh-every", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.num_cpus, args.child_mesh_every)
        sys.exit(0)
    logging.basicConfig(level=logging.WARNING)
    n = args.sources or (max(1, round(args.minutes * 60 / args.source_seconds)) if args.minutes else 10)
    main(args.dir, n, args.source_seconds, scaling=not args.skip_scaling, memory=not args.skip_memory,
         memory_sources=args.memory_sources, pin=not args.no_pin, timeout_factor=args.timeout_factor,
         pass_sources=args.pass_sources, mesh_every=args.mesh_every)
