"""`emo`: the one command-line entry point. `emo SUBCOMMAND --help` is the manual."""

from __future__ import annotations

import argparse
import logging
import os
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


def _cmd_manifest_compact(args: argparse.Namespace) -> int:
    from manifests import ManifestStore
    from manifests.compact import compact

    before = ManifestStore(args.out).content_hash()
    result = compact(args.out, [args.table] if args.table else None)
    after = ManifestStore(args.out).content_hash()
    for table, r in result.items():
        print(f"{table}: {r['live_shards']} shards merged, now {r['parts']} part(s)")
    print(f"content hash {after} ({'unchanged' if after == before else 'CHANGED: ' + before})")
    return 0 if after == before else 1


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
    from pipeline.demo import DemoOptions, render, run_demo

    result = run_demo(DemoOptions(root=Path(args.dir), num_cpus=args.num_cpus,
                                  train_steps=tuple(args.train_steps), sample_seconds=args.sample_seconds,
                                  sample_steps=args.sample_steps))
    print(render(result))
    return 0 if result["watermark"]["present"] else 3


def _cmd_export(args: argparse.Namespace) -> int:
    from manifests.fs import Location
    from manifests.mirror import mirrored
    from pipeline.export import export, render_card

    with mirrored(args.out, ("manifests", "clips")) as local:  # OUT itself when it is a folder
        card = export(local, val_fraction=args.val_fraction, command=" ".join(sys.argv), near_duplicate=args.near_duplicate)
    print(render_card(card).split("## Configuration")[0])
    print(f"card: {Location(args.out).child_uri('export/dataset_card.md')}")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    import json

    from manifests.fs import Location, is_uri
    from manifests.mirror import mirrored
    from pipeline import audit
    from pipeline.lock import LOCK_NAME

    if not is_uri(args.out) and not Path(args.out).is_dir():  # the report of a missing folder would be an empty page
        raise FileNotFoundError(f"{args.out}: no such folder (an output folder of emo curate)")
    # On object storage each mode works on a local mirror of what it reads (--verify: every file).
    if args.verify:
        with mirrored(args.out, ("manifests", "media", "clips")) as local:
            problems = audit.verify(local)
        for p in problems:
            print(p)
        print(f"verify: {len(problems)} problem(s)")
        return 1 if problems else 0
    if args.trace:
        with mirrored(args.out) as local:
            print(json.dumps(audit.trace(local, args.trace), indent=2, default=str))
        return 0
    # emo.lock too: the build lineage (printed and in the report) is read from it.
    with mirrored(args.out, ("manifests", "export"), files=(LOCK_NAME,)) as local:
        for line in audit.build_lineage(local):  # when OUT was made by `emo build`
            print(line)
        for m in audit.checkpoints_of(args.out):  # checkpoints in the bucket too, not only in the mirror
            if m["opted_out"]:
                print(f"warning: checkpoint {m['checkpoint']} learned from opted-out source(s) "
                      f"{', '.join(m['opted_out'])}: retrain or delete it", file=sys.stderr)
        report = audit.report(local)
    loc = Location(args.out)
    print(report if loc.local else loc.child_uri("audit/report.html"))
    return 0


def _cmd_optout(args: argparse.Namespace) -> int:
    import json

    from pipeline.optout import optout

    result = optout(args.out, args.source, reason=args.reason, checkpoints=args.checkpoints)
    print(json.dumps(result, indent=2))
    for a in result["checkpoints_affected"]:
        print(f"warning: checkpoint {a['checkpoint']} learned from it ({a['via']}): retrain or delete it",
              file=sys.stderr)
    return 0


def _cmd_detect(args: argparse.Namespace) -> int:
    import json

    from manifests.lineage import describe_checkpoints
    from model.watermark import detect_video

    det = detect_video(args.video, max_frames=args.max_frames)
    found = det.as_dict()
    if det.present and args.checkpoints:
        found["checkpoints"] = describe_checkpoints(args.checkpoints, det.checkpoint_id)
    print(json.dumps(found, indent=2))
    if det.present:
        print(f"watermark present: checkpoint id {det.checkpoint_id}, bit accuracy {det.bit_accuracy:.3f}")
        for c in found.get("checkpoints", []):
            print(f"made by {c['checkpoint']}: learned from {len(c['sources'])} source(s), licenses "
                  f"{c['licenses']}, consent {c['consent']}")
        if args.checkpoints and not found["checkpoints"]:
            print(f"no checkpoint with id {det.checkpoint_id} under {', '.join(args.checkpoints)}")
    else:
        print("no emo-forge watermark found")
    return 0 if det.present else 3


def _cmd_build(args: argparse.Namespace) -> int:
    from pipeline.build import build

    report = build(args.buildfile, args.out, dry_run=args.dry_run)
    print(report.render())
    return 0


def _delegate(module: str):
    def run(args: argparse.Namespace) -> int:
        import importlib

        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            print(f"emo: {module} is not available in this installation ({e})", file=sys.stderr)
            return 2
        status = mod.main(args.rest)
        # main() returns an exit status; anything else (e.g. a checkpoint path) is success.
        return status if isinstance(status, int) else 0

    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emo", description="emo-forge: curate talking-head data, train and sample EMO, with provenance.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    storage = [_add_curate(sub), *_add_manifest(sub)]
    _add_demo(sub)
    _add_corpus_tools(sub, storage)
    _add_model_tools(sub)
    return p


def _add_curate(sub) -> argparse.ArgumentParser:
    c = sub.add_parser("curate", help="run the curation pipeline over a list of sources",
                       description="Download, shot-detect, face-crop, diarize and filter SOURCES into Parquet manifests under OUT. "
                                   "Rerunning resumes: finished work is skipped; work done with other settings or by an "
                                   "earlier revision of a stage, and downloads that failed for a passing reason, are redone.")
    c.add_argument("sources", help="a .csv, .jsonl or .parquet sources file (column 'uri' required), or a folder of media files")
    c.add_argument("--out", required=True, help="output folder or URI: s3://bucket/prefix, gs://..., any fsspec "
                                                "filesystem (manifests, media, masks, clips)")
    c.add_argument("--stages", help="comma-separated stages to run (default: all available): download, shot-detect, "
                                    "face-crop, speaker-diarize, quality-filter (or shots, faces, diarize, quality)")
    c.add_argument("--config", help="YAML of {stage: {setting: value}}, plus a `pipeline:` section of time limits and retries (see README)")
    c.add_argument("--address", help="join an existing Ray cluster ('auto' or host:port); default starts a local Ray")
    c.add_argument("--num-cpus", type=int, help="cap the CPUs of a local Ray")
    c.add_argument("--max-workers", type=int, help="most actors per model stage (default: CPUs in the cluster)")
    c.set_defaults(func=_cmd_curate)

    return c


def _add_manifest(sub) -> list[argparse.ArgumentParser]:
    m = sub.add_parser("manifest", help="inspect manifests")
    msub = m.add_subparsers(dest="manifest_command", required=True)
    ms = msub.add_parser("show", help="row counts, schema versions and a few rows of each table")
    ms.add_argument("out", help="an output folder of `emo curate`")
    ms.add_argument("--table", help="only this table")
    ms.add_argument("--rows", type=int, default=5, help="rows to print per table")
    ms.set_defaults(func=_cmd_manifest_show)
    mc = msub.add_parser("compact", help="merge per-source shards into a few Parquet files per table (same content hash)",
                         description="Reads stay fast at 100k sources. Run it when no `emo curate` writes to OUT.")
    mc.add_argument("out", help="an output folder or URI of `emo curate`")
    mc.add_argument("--table", help="only this table")
    mc.set_defaults(func=_cmd_manifest_compact)
    return [ms, mc]



def _add_demo(sub) -> None:
    d = sub.add_parser("demo-corpus", help="build the demo corpus from media shipped inside installed packages")
    d.add_argument("dir")
    d.add_argument("--port", type=int, default=8642, help="port of the loopback server its URLs point at")
    d.set_defaults(func=_cmd_demo_corpus)

    s = sub.add_parser("serve", help="serve a folder on 127.0.0.1 (with /fault/... paths that misbehave)")
    s.add_argument("dir")
    s.add_argument("--port", type=int, default=8642)
    s.set_defaults(func=_cmd_serve)

    from pipeline.demo import DEMO_TRAIN_STEPS  # light: the demo's heavy imports are inside run_demo

    dm = sub.add_parser("demo", help="sources to video: demo corpus, curate, export, train, sample, measure, detect, audit",
                        description="The whole path on the bundled demo corpus, on one machine without a GPU "
                                    "(about 12 minutes on 2 idle cores). Writes everything under --dir.")
    dm.add_argument("--dir", default="demo")
    dm.add_argument("--num-cpus", type=int)
    dm.add_argument("--train-steps", type=int, nargs=3, default=list(DEMO_TRAIN_STEPS), metavar=("S1", "S2", "S3"),
                    help="training steps of stages 1, 2 and 3")
    dm.add_argument("--sample-seconds", type=float, default=6.0, help="seconds of speech to animate")
    dm.add_argument("--sample-steps", type=int, default=8, help="DDIM steps per window")
    dm.set_defaults(func=_cmd_demo)


def _add_corpus_tools(sub, storage: list[argparse.ArgumentParser]) -> None:
    """export, audit and optout; they and `storage` (curate, manifest) take --endpoint-url."""
    e = sub.add_parser("export", help="judge near-duplicates, split train/val by identity, write the dataset card")
    e.add_argument("out")
    e.add_argument("--val-fraction", type=float, default=0.1, help="share of clip time for validation")
    e.add_argument("--near-duplicate", type=float, default=None,
                   help="near-duplicate threshold, mean dHash bits (default: quality.yaml's)")
    e.set_defaults(func=_cmd_export)

    a = sub.add_parser("audit", help="HTML report of a curated corpus, or --verify files, or --trace a clip")
    a.add_argument("out")
    a.add_argument("--verify", action="store_true", help="re-hash every file against the manifests")
    a.add_argument("--trace", metavar="CLIP_ID", help="print the full lineage of one clip")
    a.set_defaults(func=_cmd_audit)

    o = sub.add_parser("optout", help="remove a source and all it produced; a rerun never brings it back")
    o.add_argument("out")
    o.add_argument("--source", required=True, help="the source's URI, sha256 or source_id")
    o.add_argument("--reason", default="opt-out request")
    o.add_argument("--checkpoints", action="append", default=[], metavar="DIR",
                   help="also look here (besides OUT) for checkpoints that learned from the source; repeatable")
    o.set_defaults(func=_cmd_optout)
    for sp in [*storage, e, a, o]:
        sp.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, R2, Ceph); default: $AWS_ENDPOINT_URL, "
                                               "else AWS. Credentials: the standard AWS_* variables or profile")


def _add_model_tools(sub) -> None:
    dt = sub.add_parser("detect", help="look for the emo-forge watermark in a video")
    dt.add_argument("video")
    dt.add_argument("--max-frames", type=int, default=250)
    dt.add_argument("--checkpoints", action="append", default=[], metavar="DIR",
                    help="find the checkpoint the mark names under DIR and list what it learned from; repeatable")
    dt.set_defaults(func=_cmd_detect)

    b = sub.add_parser("build", help="curate, export, train and sample from a build file, redoing only what changed",
                       description="Bring OUT up to date with BUILDFILE (YAML: sources, curate, export, train, samples; "
                                   "see examples/build.yaml). Each step is keyed by the hash of its inputs and settings; "
                                   "OUT/emo.lock records every step's inputs, outputs and versions.")
    b.add_argument("buildfile", help="the build file (YAML)")
    b.add_argument("--out", required=True, help="output folder: manifests, export, train/, samples/, emo.lock")
    b.add_argument("--dry-run", action="store_true", help="print what would run and why; change nothing")
    b.set_defaults(func=_cmd_build)

    for name, module, text in (("train", "model.train", "train EMO from a curated OUT (see emo train --help)"),
                               ("sample", "model.sample", "generate a talking video (see emo sample --help)")):
        t = sub.add_parser(name, help=text, add_help=False)
        t.add_argument("rest", nargs=argparse.REMAINDER)
        t.set_defaults(func=_delegate(module))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("train", "sample"):  # their own parsers are the manual: emo train --help
        run, args = _delegate(f"model.{argv[0]}"), argparse.Namespace(rest=argv[1:])
    else:
        args = build_parser().parse_args(argv)
        run = args.func
        if getattr(args, "endpoint_url", None):  # read by manifests/fs.py here and, forwarded, on Ray workers
            os.environ["AWS_ENDPOINT_URL"] = args.endpoint_url
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=UserWarning, module="pyannote")
    try:
        return run(args)
    except (ValueError, FileNotFoundError, KeyError) as e:  # bad input: one line that names it, no traceback
        print(f"emo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
