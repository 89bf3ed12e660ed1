"""Does the model learn EMO's task (appearance from the reference, mouth from the audio), not only a falling loss?

    python -m benchmarks.bench_learn [--minutes 30] [--data OUT] [--work DIR] [--model demo]

Trains the three stages for --minutes on CPU (stage 1 half the time, stage 2 four tenths, stage 3
a tenth; in chunks that resume bit-exactly), then samples a portrait of a training identity and a
held-out one and measures each video with the pipeline's own tools (model/video_measures.py): the
share of frames with a face, identity similarity to the reference, and audio-visual sync. Baselines
measured in the same run:

    untrained        the same architecture at step 0 (new layers at zero, backbone random)
    reference copy   the reference crop repeated: the ceiling for face and identity, a mouth that never moves
    wrong audio      the trained video's sync against the same speech rotated by half its length
                     (same voice, wrong words): if the mouth follows the audio, the right speech
                     must score higher

Without --data it builds and curates the demo corpus under --work first (as `emo demo` does), whose
jaws follow its audio (pipeline/demo_mouth.py); pass --data with a curation of real footage in sync,
and --portrait with a still of someone in it. The speech is the demo's: the voiced end of
pyannote's sample. benchmarks/audio_use.py says, without sampling, whether a checkpoint uses the
audio's timing at all.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

STAGE_SHARE = {1: 0.5, 2: 0.4, 3: 0.1}
CHUNK_SECONDS = 60  # a stage trains in chunks of about this long, resuming from its last checkpoint


def curated_demo(work: Path) -> Path:
    """The demo corpus, curated and exported under work/ (skipped when already there)."""
    from pipeline.demo_corpus import DEMO_PORT, build_demo_corpus
    from pipeline.export import export
    from pipeline.plan import available_stages, load_config
    from pipeline.runner import CurateOptions, curate
    from pipeline.serve import LoopbackServer

    out = work / "out"
    if not (out / "export").is_dir():
        sources = build_demo_corpus(work, port=DEMO_PORT)
        with LoopbackServer(work, port=DEMO_PORT):
            curate(CurateOptions(sources=str(sources), out=str(out), stages=tuple(available_stages()),
                                 config=load_config(work / "config.yaml")))
        export(out, command="python -m benchmarks.bench_learn")
    return out


def train_for(data: Path, runs: Path, model: str, seconds: float) -> Path:
    """Stages 1-3 for `seconds` in all; each stage in chunks until its share of the time is spent."""
    from model import train as trainer
    from model.checkpoint import latest_checkpoint, read_meta

    parent = None
    for stage, share in STAGE_SHARE.items():
        run, start, step_s, steps = runs / f"stage{stage}", time.perf_counter(), None, 0
        while time.perf_counter() - start < share * seconds:
            chunk = 10 if step_s is None else max(1, int(min(CHUNK_SECONDS, share * seconds - (time.perf_counter() - start)) / step_s))
            t0 = time.perf_counter()
            argv = ["--data", str(data), "--stage", str(stage), "--model", model, "--out", str(run),
                    "--steps", str(steps + chunk), "--quiet"]
            argv += ["--resume"] if steps else (["--init-from", str(parent)] if parent else [])
            trainer.main(argv)
            steps += chunk
            step_s = (time.perf_counter() - t0) / chunk
        print(f"stage {stage}: {read_meta(latest_checkpoint(run))['step']} steps", flush=True)
        parent = run
    return parent


def untrained(data: Path, runs: Path, model: str) -> Path:
    """A step-1 checkpoint trained at learning rate 0: the initial weights, sampled as any checkpoint."""
    from model import train as trainer

    config = runs / "learning_rate_0.json"
    config.write_text(json.dumps({"learning_rate": 0.0}))
    run = runs / "untrained"
    trainer.main(["--data", str(data), "--stage", "1", "--model", model, "--out", str(run), "--steps", "1",
                  "--config", str(config), "--quiet"])
    return run


def reference_copy(portrait: Path, speech: Path, out: Path, size: int, frames: int,
                   face_fraction: float | None = None) -> Path:
    """The reference crop, as the sampler crops it, repeated for every frame, with the speech."""
    from model.sample import crop_reference, read_portrait, read_speech
    from stages.media.video_io import write_mp4

    crop, _ = crop_reference(read_portrait(portrait), size, face_fraction)
    write_mp4(out, (crop for _ in range(frames)), fps=25.0, audio=read_speech(speech), audio_rate=16_000)
    return out


def measure(video: Path, portrait: Path, wav: np.ndarray, wrong: np.ndarray) -> dict:
    from model.sample import read_portrait
    from model.video_measures import measure_video

    m = measure_video(video, read_portrait(portrait), wav, 25.0, control_wav=wrong)  # the video is read once
    return {**m, "sync_wrong_audio": m.pop("sync_control")}


def run(args) -> list[dict]:
    from model import sample as sampler
    from model.checkpoint import read_meta
    from model.config import load_config
    from pipeline.demo import training_portrait, write_voiced_speech

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else curated_demo(work)
    demo_root = work if not args.data else Path(args.portraits_from)
    runs = work / f"runs-{args.model}-{args.minutes:g}min"
    t0 = time.perf_counter()
    trained = train_for(data, runs, args.model, args.minutes * 60)
    train_s = time.perf_counter() - t0
    baseline = untrained(data, runs, args.model)

    speech = write_voiced_speech(demo_root, runs / "speech.wav", args.seconds)  # as the demo's, not its silent start
    wav = sampler.read_speech(speech)
    wrong = np.roll(wav, len(wav) // 2)  # same voice, wrong words
    trained_on = Path(args.portrait) if args.portrait else training_portrait(demo_root)
    portraits = {"training identity": trained_on, "held out": demo_root / "portraits" / "hanks.png"}
    size, frames = load_config(args.model).image_size, round(args.seconds * 25)
    rows = []
    for who, portrait in portraits.items():
        for what, ckpt in (("trained", trained), ("untrained", baseline), ("reference copy", None)):
            video = runs / f"{who.replace(' ', '_')}-{what.replace(' ', '_')}.mp4"
            if ckpt is None:
                reference_copy(portrait, speech, video, size, frames, read_meta(trained).get("face_fraction"))
            else:
                sampler.sample(sampler.SampleOptions(checkpoint=ckpt, image=portrait, audio=speech, out=video,
                                                     steps=args.sample_steps))
            rows.append({"name": f"{who}: {what}", **measure(video, portrait, wav, wrong),
                         "train_minutes": round(train_s / 60, 1) if what == "trained" else 0.0})
    return rows


def render(rows: list[dict]) -> str:
    def f(x):
        return "  n/a" if x is None else f"{x:5.3f}"

    lines = [f"{'video':<34} {'face':>5} {'ident':>6} {'sync':>6} {'sync(wrong audio)':>18}"]
    for r in rows:
        lines.append(f"{r['name']:<34} {r['face_share']:5.2f} {f(r['identity_similarity']):>6} "
                     f"{f(r['sync_confidence']):>6} {f(r['sync_wrong_audio']):>18}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_learn", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="training time, all three stages together")
    p.add_argument("--model", default="demo", help="named size (model/config.py)")
    p.add_argument("--data", help="a curated and exported OUT folder; default: the demo corpus, curated under --work")
    p.add_argument("--portraits-from", default="demo", help="with --data: an `emo demo` folder (speech.wav, portraits/)")
    p.add_argument("--portrait", help="with --data: a still of a person in its training clips (default: the demo's "
                   "carphone man, who is in the demo corpus)")
    p.add_argument("--work", default="bench_learn", help="working folder (corpus, runs, videos)")
    p.add_argument("--seconds", type=float, default=6.0, help="seconds of speech to animate")
    p.add_argument("--sample-steps", type=int, default=8)
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    import logging

    logging.basicConfig(level=logging.WARNING)
    rows = run(build_parser().parse_args(argv))
    print(render(rows))
    return rows


if __name__ == "__main__":
    main()
