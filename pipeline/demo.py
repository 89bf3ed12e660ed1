"""`emo demo`: sources in, talking video out, on one machine, in minutes.

    corpus   the demo corpus from media inside installed packages (pipeline/demo_corpus.py)
    curate   every stage, over local paths and a loopback HTTP server, with the corpus's config.yaml
    export   near-duplicates, identity-disjoint split, dataset card
    train    the `demo` size of EMO (model/config.py), stages 1, 2 and 3, each from the one before
    sample   Tom Hanks' portrait (never in the corpus) speaking the last, voiced 6 s of pyannote's sample
    measure  that video and one of the carphone man (in the training clips): face found, identity, sync,
             the lips' darkness against the loudness
    detect   the watermark in that video
    audit    the HTML report

The `demo` model is tiny's UNet on 16x16 latents of 128-px crops that denoises each frame's change
from the reference (model/reference_skip.py): appearance comes through the skip, so minutes of CPU
training give a face, and the network learns only what moves. The corpus's jaws follow its audio
(pipeline/demo_mouth.py), so the mouth has something to learn, and a lip-sync expert fitted on the
corpus's clips judges the mouths it predicts (model/sync_expert.py): in minutes on CPU the
carphone man's lips part with the voice, at offset 0, and the face mesh sees it; Hanks' held-out
mouth does not follow (README, "The demo corpus"). Every measure is printed beside the same speech
rolled by half. The demo proves
the path and the provenance chain (video -> checkpoint -> manifest -> sources, with their licenses and consent).
Every step's seconds go to DIR/demo.json. A rerun skips training stages that are finished.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("emo.demo")


def training_portrait(root: Path) -> Path:
    """A still of the carphone man, who is in the training clips: the first frame of talking.mp4."""
    import av
    from PIL import Image

    path = root / "portrait_training_identity.png"
    if not path.is_file():
        with av.open(str(root / "talking.mp4")) as c:
            Image.fromarray(next(f.to_ndarray(format="rgb24") for f in c.decode(video=0))).save(path)
    return path


# Where the demo's speech starts in sample.wav: its last six seconds, where both speakers talk (91% voiced).
SPEECH_FROM_S = 24.0


def write_voiced_speech(root: Path, out: Path, seconds: float) -> Path:
    """`seconds` of the demo corpus's speech.wav from SPEECH_FROM_S (its first 6.7 s are silence),
    starting earlier where the file would end first, written to `out`."""
    import soundfile as sf

    wav, rate = sf.read(root / "speech.wav", dtype="float32")
    n = int(seconds * rate)
    start = min(int(SPEECH_FROM_S * rate), max(0, len(wav) - n))
    sf.write(out, wav[start: start + n], rate)
    return out


# Took 113 + 370 + 48 s on 2 cores with nothing else running, stage 2 with its sync expert (README).
DEMO_TRAIN_STEPS = (600, 600, 40)


@dataclass
class DemoOptions:
    root: Path
    num_cpus: int | None = None
    train_steps: tuple[int, int, int] = DEMO_TRAIN_STEPS  # stages 1, 2, 3
    sample_seconds: float = 6.0
    sample_steps: int = 8
    model: str = "demo"


def _finished(run: Path, steps: int) -> bool:
    from model.checkpoint import latest_checkpoint, read_meta

    last = latest_checkpoint(run) if run.is_dir() else None
    return last is not None and read_meta(last).get("step") == steps


class _Timings(dict):
    """Each demo step's seconds, for DIR/demo.json."""

    def start(self, name: str) -> None:
        self[name] = time.perf_counter()
        log.info("demo: %s", name)

    def done(self, name: str) -> None:
        self[name] = round(time.perf_counter() - self[name], 2)


def _train(opts: DemoOptions, out: Path, runs: Path, timings: _Timings) -> Path:
    """Stages 1, 2 and 3, each from the one before; finished stages are skipped. Returns the last run."""
    from model.train import TrainOptions, train

    parent = None
    for stage, steps in zip((1, 2, 3), opts.train_steps, strict=True):
        name, run = f"train_stage{stage}", runs / f"stage{stage}"
        timings.start(name)
        if not _finished(run, steps):
            train(TrainOptions(data=out, stage=stage, out=run, steps=steps, model=opts.model, init_from=parent,
                               resume=run.is_dir()))
        parent = run
        timings.done(name)
    return parent


def _sample(opts: DemoOptions, root: Path, checkpoint: Path, timings: _Timings) -> tuple[Path, dict, dict]:
    """Hanks' portrait speaking, then the measures of it and of the carphone man: (video, record, measures)."""
    import numpy as np

    from model.sample import SampleOptions, read_portrait, read_speech, sample
    from model.video_measures import measure_video

    timings.start("sample")
    speech = write_voiced_speech(root, root / "sample_speech.wav", opts.sample_seconds)
    hanks, video = root / "portraits" / "hanks.png", root / "video.mp4"
    record = sample(SampleOptions(checkpoint=checkpoint, image=hanks, audio=speech, out=video,
                                  steps=opts.sample_steps))
    timings.done("sample")

    timings.start("measure")  # is there a face, whose, does its mouth follow the speech (model/video_measures.py)
    wav = read_speech(speech)
    control = np.roll(wav, len(wav) // 2)  # the same voice, other words: what a mouth deaf to the speech scores
    measures = {"hanks (held out)": measure_video(video, read_portrait(hanks), wav, 25.0, control)}
    portrait = training_portrait(root)
    video2 = root / "video_training_identity.mp4"
    sample(SampleOptions(checkpoint=checkpoint, image=portrait, audio=speech, out=video2, steps=opts.sample_steps))
    measures["carphone man (in the training clips)"] = measure_video(video2, read_portrait(portrait), wav, 25.0, control)
    timings.done("measure")
    return video, record, measures


def run_demo(opts: DemoOptions) -> dict:
    # cli.py imports this module to build its parser: torch, ray and mediapipe load only when the demo runs.
    from manifests.lineage import describe_checkpoints
    from model.watermark import detect_video
    from pipeline.audit import report
    from pipeline.demo_corpus import DEMO_PORT, build_demo_corpus
    from pipeline.export import export
    from pipeline.plan import available_stages, load_config
    from pipeline.runner import CurateOptions, curate
    from pipeline.serve import LoopbackServer

    root = Path(opts.root).resolve()
    out, runs = root / "out", root / "runs"
    timings = _Timings()

    timings.start("corpus")
    sources = build_demo_corpus(root, port=DEMO_PORT)
    timings.done("corpus")

    timings.start("curate")
    with LoopbackServer(root, port=DEMO_PORT):
        summary = curate(CurateOptions(sources=str(sources), out=str(out), stages=tuple(available_stages()),
                                       config=load_config(root / "config.yaml"), num_cpus=opts.num_cpus))
    print(summary.render())
    timings.done("curate")

    timings.start("export")
    # Both people train (no validation split): the astronaut's still head, whose mouth alone moves,
    # teaches the mouth best; Hanks' portrait is the held-out face (README, "The demo corpus").
    card = export(out, val_fraction=0.0, command="emo demo")
    if not card["clips"]:
        raise RuntimeError(f"the demo kept no clips; see {out / 'summary.json'} and `emo audit {out}`")
    timings.done("export")

    checkpoint = _train(opts, out, runs, timings)
    video, record, measures = _sample(opts, root, checkpoint, timings)

    timings.start("detect")
    detection = detect_video(str(video))
    made_by = describe_checkpoints([runs], detection.checkpoint_id) if detection.present else []
    timings.done("detect")

    timings.start("audit")
    page = report(out)
    timings.done("audit")

    result = {"video": str(video), "frames": record["frames"], "checkpoint": record["checkpoint"],
              "checkpoint_id": record["checkpoint_id"], "manifest_hash": record["manifest_hash"],
              "dataset_manifest_hash": card["manifest_hash"], "clips": card["clips"],
              "watermark": detection.as_dict(), "made_by": made_by, "measures": measures, "audit": str(page),
              "seconds": dict(timings), "total_seconds": round(sum(timings.values()), 1)}
    (root / "demo.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def render(result: dict) -> str:
    from model.video_measures import render_measures

    wm = result["watermark"]
    lines = [
        "", "== emo demo",
        f"video      {result['video']}  ({result['frames']} frames)",
        f"watermark  {'present' if wm['present'] else 'NOT FOUND'}: checkpoint id {wm.get('checkpoint_id')}, "
        f"bit accuracy {wm.get('bit_accuracy', 0):.3f} (sampled with {result['checkpoint_id']})",
        f"lineage    video -> {result['checkpoint']} -> clips manifest {str(result['manifest_hash'])[:16]}… "
        f"({result['clips']} clips)",
        *[f"learned    from {len(m['sources'])} source(s), by seconds of training clips: licenses {m['licenses']}, "
          f"consent {m['consent']} (its meta.json and its parents')" for m in result.get("made_by", [])],
        *[render_measures(name, m) for name, m in result.get("measures", {}).items()],
        f"audit      {result['audit']}",
        "seconds    " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items())
        + f"; total {result['total_seconds']:.0f}",
    ]
    return "\n".join(lines)
