"""`emo`: the one command-line entry point. `emo SUBCOMMAND --help` is the manual."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

log = logging.getLogger("emo")


def _cmd_curate(args: argparse.Namespace) -> int:
    from pipeline.plan import available_stages, load_config
    from pipeline.runner import CurateOptions, curate

    stages = tuple(s.strip() for s in args.stages.split(",")) if args.stages else tuple(available_stages())
    opts = CurateOptions(sources=args.sources, out=args.out, stages=stages, config=load_config(args.config),
                         address=args.address, num_cpus=args.num_cpus, max_workers=args.max_workers)
    summary = curate(opts)
    print(summary.render())
    return 0


def _cmd_manifest_show(args: argparse.Namespace) -> int:
    from manifests import TABLES, ManifestStore

    store = ManifestStore(args.out)
    tables = [args.table] if args.table else store.tables()
    if not tables:
        print(f"no manifests under {store.root}")
        return 1
    for t in tables:
        if t not in TABLES:
            print(f"unknown table {t!r}; known: {', '.join(TABLES)}", file=sys.stderr)
            return 2
        tbl = store.read(t)
        print(f"== {t}: {tbl.num_rows} rows, schema version {store.version_of(t)}, {len(store.shard_keys(t))} shards")
        if tbl.num_rows:
            cols = [c for c in tbl.column_names if c not in ("boxes", "landmarks", "embedding", "meta", "counters")]
            print(tbl.select(cols).slice(0, args.rows).to_pandas().to_string(max_colwidth=40))
    return 0


def _cmd_demo_corpus(args: argparse.Namespace) -> int:
    from pipeline.demo_corpus import build_demo_corpus

    print(build_demo_corpus(args.dir, port=args.port))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import time

    from pipeline.serve import LoopbackServer

    with LoopbackServer(args.dir, port=args.port) as srv:
        print(f"serving {args.dir} on {srv.url('')} (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo_corpus import DEMO_PORT, build_demo_corpus
    from pipeline.plan import available_stages
    from pipeline.runner import CurateOptions, curate
    from pipeline.serve import LoopbackServer

    root = Path(args.dir)
    sources = build_demo_corpus(root, port=DEMO_PORT)
    with LoopbackServer(root, port=DEMO_PORT):
        summary = curate(CurateOptions(sources=str(sources), out=str(root / "out"), stages=tuple(available_stages()),
                                       num_cpus=args.num_cpus))
    print(summary.render())
    print(f"\nmanifests: {root / 'out' / 'manifests'}   (emo manifest show {root / 'out'})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emo", description="emo-forge: curate talking-head data, train and sample EMO, with provenance.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("curate", help="run the curation pipeline over a list of sources",
                       description="Download, shot-detect, face-crop, diarize and filter SOURCES into Parquet manifests under OUT. "
                                   "Rerunning resumes: finished work is skipped.")
    c.add_argument("sources", help="a .csv, .jsonl or .parquet sources file (column 'uri' required), or a folder of media files")
    c.add_argument("--out", required=True, help="output folder (manifests, media, crops)")
    c.add_argument("--stages", help="comma-separated stages to run (default: all available)")
    c.add_argument("--config", help="YAML of {stage: {setting: value}}")
    c.add_argument("--address", help="join an existing Ray cluster ('auto' or host:port); default starts a local Ray")
    c.add_argument("--num-cpus", type=int, help="cap the CPUs of a local Ray")
    c.add_argument("--max-workers", type=int, help="most actors per model stage (default: CPUs in the cluster)")
    c.set_defaults(func=_cmd_curate)

    m = sub.add_parser("manifest", help="inspect manifests")
    msub = m.add_subparsers(dest="manifest_command", required=True)
    ms = msub.add_parser("show", help="row counts, schema versions and a few rows of each table")
    ms.add_argument("out", help="an output folder of `emo curate`")
    ms.add_argument("--table", help="only this table")
    ms.add_argument("--rows", type=int, default=5, help="rows to print per table")
    ms.set_defaults(func=_cmd_manifest_show)

    d = sub.add_parser("demo-corpus", help="build the demo corpus from media shipped inside installed packages")
    d.add_argument("dir")
    d.add_argument("--port", type=int, default=8642, help="port of the loopback server its URLs point at")
    d.set_defaults(func=_cmd_demo_corpus)

    s = sub.add_parser("serve", help="serve a folder on 127.0.0.1 (with /fault/... paths that misbehave)")
    s.add_argument("dir")
    s.add_argument("--port", type=int, default=8642)
    s.set_defaults(func=_cmd_serve)

    dm = sub.add_parser("demo", help="build the demo corpus, serve it on loopback and curate it end to end")
    dm.add_argument("--dir", default="demo")
    dm.add_argument("--num-cpus", type=int)
    dm.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=UserWarning, module="pyannote")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"emo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
