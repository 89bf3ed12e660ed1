"""Split screens made from pairs of real single-speaker videos, with known turns: who speaks when.

Left half: video A's picture, right half: video B's (each centre-cropped to a square and scaled to
the half), both on one 25 fps grid (each output frame shows the source frame shown at that instant).
The audio alternates between the two in seeded turns of 2-5 s, each turn carrying the speaking
side's own audio at the same time range as its frames, so that side's mouth is in sync. The
listener either keeps playing its own video (`talking`: its mouth moves to words nobody hears, the
hard case) or is still (`frozen`: the easy case; each side's video then plays only while it speaks,
resuming where it stopped, so its picture never jumps and its voice always has its own frames).
Each source is read from the start of its longest shot (START), so the split screen has no cut.

Sources are read from ../shared/real-media (never copied into the repository); pairs are made within
benchmarks/sync_corpus.py's split (dev files with dev files, held-out with held-out). Everything
derived goes under a git-ignored cache (bench-out/active_speaker), the truth beside each file
(`<stem>.truth.json`: turns, sides, sources).
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np

from benchmarks.sync_corpus import REAL, audio_on_video_clock, picture_at
from manifests import ManifestStore
from stages.base import StageContext

CACHE = Path(__file__).resolve().parents[1] / "bench-out" / "active_speaker"
FPS, RATE, HALF = 25.0, 48000, 320
TURN_S = (2.0, 5.0)
VARIANTS = ("talking", "frozen")
# Seconds into a source where its longest shot begins (r3_v12 cuts at 7.04 s, r3_v22's face is lost
# around 2.2 s; benchmarks/sync_corpus.py's shots and tracks).
START = {"r3_v12_dfrf_cnn_jimacosta_71s.mp4": 7.1, "r3_v22_msdwild_demo1_spk_girl.mp4": 2.6}
# (left, right, seconds at most). Each file speaks on both sides where the split has enough of them.
DEV_PAIRS = (("r2_v09_mimictalk_german.mp4", "r3_v12_dfrf_cnn_jimacosta_71s.mp4", 12.0),
             ("r3_v12_dfrf_cnn_jimacosta_71s.mp4", "r3_v22_msdwild_demo1_spk_girl.mp4", 10.0),
             ("r3_v22_msdwild_demo1_spk_girl.mp4", "r2_v03_hdtf_bobmenendez.mp4", 8.0),
             ("r2_v03_hdtf_bobmenendez.mp4", "r3_v07_voxceleb2_chrischristie.mp4", 7.0))
HELD_PAIRS = (("r2_v15_lrs2_00016.mp4", "r2_v13_w2l_pr600_testmov.mov", 10.0),  # r2_v13 cuts to B-roll at 10.6 s
              ("r2_v06_vretalk_face1.mp4", "r3_v08_voxceleb2_jamieoliver.mp4", 5.2),
              ("r3_v08_voxceleb2_jamieoliver.mp4", "r2_v08_vretalk_face5.mp4", 4.9),
              ("r2_v08_vretalk_face5.mp4", "r2_v15_lrs2_00016.mp4", 4.9))


def turns(seconds: float, seed: int, first: str | None = None) -> list[dict]:
    """Alternating turns of TURN_S seconds covering [0, seconds); a last piece under the shortest
    turn joins the one before it."""
    rng = np.random.default_rng(seed)
    side = first or ("left", "right")[int(rng.integers(2))]
    out, t = [], 0.0
    while t < seconds - 1e-6:
        end = min(seconds, t + float(rng.uniform(*TURN_S)))
        if seconds - end < TURN_S[0]:
            end = seconds
        out.append({"start_s": round(t, 3), "end_s": round(end, 3), "side": side})
        side, t = ("right" if side == "left" else "left"), end
    return out


def _square(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return cv2.resize(frame[y:y + s, x:x + s], (HALF, HALF), interpolation=cv2.INTER_AREA)


def _frames_on_grid(path: Path, start: float, seconds: float) -> list[np.ndarray]:
    """The source's picture at each 1/FPS instant from `start` seconds after its first frame (the frame
    shown then), squared."""
    with av.open(str(path)) as c:
        decoded = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)
                   if f.time is not None and f.time < start + seconds + 1.0]
    decoded.sort(key=lambda x: x[0])
    times = np.array([t for t, _ in decoded]) - decoded[0][0] - start
    n = int(round(seconds * FPS))
    pick = np.clip(np.searchsorted(times, np.arange(n) / FPS + 1e-4, side="right") - 1, 0, len(times) - 1)
    squares: dict[int, np.ndarray] = {}
    return [squares.setdefault(int(i), _square(decoded[int(i)][1])) for i in pick]


def _level(wav: np.ndarray) -> np.ndarray:
    """Both voices at one loudness (RMS of the louder half of 20 ms blocks)."""
    blocks = wav[: len(wav) // 960 * 960].reshape(-1, 960)
    rms = np.sqrt((blocks ** 2).mean(1))
    loud = np.sqrt((np.sort(rms)[len(rms) // 2:] ** 2).mean()) if len(rms) else 1.0
    return wav * (0.1 / max(loud, 1e-6))


def compose(left: str, right: str, seconds: float, variant: str, seed: int, out_dir: Path) -> Path:
    """The split screen of `left` and `right` (names under ../shared/real-media/videos), built once."""
    stem = f"{Path(left).stem[:6]}-{Path(right).stem[:6]}.{seconds:g}s.{variant}.s{seed}"
    dst = out_dir / f"{stem}.mp4"
    if dst.is_file() and dst.with_suffix(".truth.json").is_file():
        return dst
    from stages.media.video_io import write_mp4

    out_dir.mkdir(parents=True, exist_ok=True)
    names = {"left": left, "right": right}
    wavs = {s: _level(audio_on_video_clock(REAL / "videos" / n, RATE)[0])[int(START.get(n, 0) * RATE):]
            for s, n in names.items()}
    seconds = min(seconds, *(len(w) / RATE for w in wavs.values()))
    pics = {s: _frames_on_grid(REAL / "videos" / n, START.get(n, 0.0), seconds) for s, n in names.items()}
    n = min(len(p) for p in pics.values())
    spoken = turns(n / FPS, seed)
    frames, audio = [], np.zeros(int(round(n / FPS * RATE)), np.float32)
    played = {"left": 0, "right": 0}  # frozen: frames of its own video each side has shown
    for turn in spoken:
        a, b = int(round(turn["start_s"] * FPS)), min(n, int(round(turn["end_s"] * FPS)))
        at = {s: (played[s] if variant == "frozen" else a) for s in pics}  # each side's own frame at a
        for i in range(b - a):
            half = {s: pics[s][at[s] + i if s == turn["side"] or variant == "talking" else max(at[s] - 1, 0)]
                    for s in pics}
            frames.append(np.concatenate([half["left"], half["right"]], axis=1))
        own = at[turn["side"]]  # the speaker's voice over the time range of its own frames
        piece = wavs[turn["side"]][int(round(own / FPS * RATE)):int(round((own + b - a) / FPS * RATE))].copy()
        ramp = np.linspace(0, 1, min(int(0.01 * RATE), len(piece) // 2), dtype=np.float32)
        piece[:len(ramp)] *= ramp
        piece[len(piece) - len(ramp):] *= ramp[::-1]
        start = int(round(a / FPS * RATE))
        audio[start:start + len(piece)] = piece[:len(audio) - start]
        played[turn["side"]] = own + b - a
    write_mp4(dst, frames, FPS, audio=audio, audio_rate=RATE, crf=18)
    truth = {"left": left, "right": right, "variant": variant, "seed": seed, "fps": FPS, "width": 2 * HALF,
             "start_s": {s: START.get(nm, 0.0) for s, nm in names.items()}, "seconds": n / FPS, "turns": spoken}
    dst.with_suffix(".truth.json").write_text(json.dumps(truth, indent=1))
    return dst


def curated(path: Path, out: Path, diarize=None) -> tuple[dict, ManifestStore]:
    """The real download, shots, faces, diarize and quality (dry run) stages, default settings, on one
    file into OUT; shots and tracks are kept between runs (picture.json), diarize and quality redone
    (diarize: a set-up DiarizeStage to reuse, else a default one)."""
    from stages.diarize.stage import DiarizeStage
    from stages.quality.stage import QualityStage

    src = picture_at(path, out)
    store, ctx = ManifestStore(out), StageContext(out=out)
    store.write_shard("segments", src["source_id"], (diarize or DiarizeStage()).process(src, ctx))
    store.write_shard("clips", src["source_id"], QualityStage(write_media=False).process(src, ctx)["clips"])
    return src, store
