"""Real talking heads and the bad copies bench_sync.py measures: the same picture with its audio shifted,
another clip's voice swapped in, or its own audio rotated by half its length, re-muxed into mkv / ts.

The originals are read from ../shared/real-media (never copied into the repository). Everything derived
goes under a git-ignored cache folder (bench-out/sync by default). The picture of a copy is the
original's video packets, untouched, so its face tracks are the original's: they are computed once
per original by the real download, shots and faces stages and reused for each copy (ids renamed).
"""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from manifests import ManifestStore
from pipeline.sources_file import input_id
from stages.base import StageContext
from stages.download.stage import DownloadStage

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "real-media"
CACHE = Path(__file__).resolve().parents[1] / "bench-out" / "sync"
RATE = 48000

# One face each, their own voice: the in-sync positives and the pictures of every bad copy.
# Split by file: thresholds are tuned on DEV only; HELD_OUT is reported, never tuned on.
DEV = ("r2_v03_hdtf_bobmenendez.mp4", "r2_v09_mimictalk_german.mp4", "r3_v07_voxceleb2_chrischristie.mp4",
       "r3_v12_dfrf_cnn_jimacosta_71s.mp4", "r3_v14_grid_brbk7n_youngwoman.mpg", "r3_v22_msdwild_demo1_spk_girl.mp4")
HELD_OUT = ("r2_v06_vretalk_face1.mp4", "r2_v08_vretalk_face5.mp4", "r2_v13_w2l_pr600_testmov.mov",
            "r2_v15_lrs2_00016.mp4", "r3_v08_voxceleb2_jamieoliver.mp4", "r3_v15_grid_lwbsza_olderwoman.mpg",
            "r3_v16_grid_swiz3n_blackman.mpg")
# Real faces under someone else's real voice (dev: the car triplet's listeners) and turn-taking.
SILENT = ("r3_v23_msdwild_demo1_silent_blonde.mp4", "r3_v24_msdwild_demo1_silent_youngman.mp4")
TWO_SPEAKERS = "r3_v01_visualvoice_interview_2spk.mp4"

# kind -> (container, audio codec, expected offset in frames or None when the voice is not the face's)
COPIES = {"orig": (None, None, 0), "remux": ("mkv", "aac", 0), "late5": ("mkv", "aac", 5),
          "early8": ("ts", "mp2", -8), "swap": ("mkv", "aac", None), "rotate": ("ts", "mp2", None)}

# Harder sound, the picture's own voice in sync (bench_sync --hard-audio): what a curated corpus meets
# beside clean studio speech. Each is mkv/aac, expected offset 0; none is tuned on.
#   noise10: pink noise 10 dB under the track (a fan, a street); babble: three other real voices of
#   the same set, summed, 6 dB under (a crowd, a newsroom); phone: 300-3400 Hz at 8 kHz (a call);
#   reverb: a room of 0.6 s RT60 heard from afar, the direct sound 10 dB under the reverberation (a hall).
HARD_AUDIO = {"noise10": ("mkv", "aac", 0), "babble": ("mkv", "aac", 0), "phone": ("mkv", "aac", 0),
              "reverb": ("mkv", "aac", 0)}
KINDS = {**COPIES, **HARD_AUDIO}


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) or 1e-9


def degraded(wav: np.ndarray, kind: str, others: list[np.ndarray], rate: int = RATE, seed: int = 0) -> np.ndarray:
    """`wav` made harder to hear as `kind` (HARD_AUDIO), the same length and at the same time."""
    from scipy import signal

    rng = np.random.default_rng(seed)
    if kind == "noise10":
        spec = np.fft.rfft(rng.standard_normal(len(wav)))
        spec /= np.sqrt(np.maximum(np.fft.rfftfreq(len(wav), 1 / rate), 20.0))  # 1/f power: pink
        noise = np.fft.irfft(spec, len(wav))
        out = wav + noise * (_rms(wav) / _rms(noise)) * 10 ** (-10 / 20)
    elif kind == "babble":
        crowd = sum(np.resize(o, len(wav)) / _rms(o) for o in others)
        out = wav + crowd * (_rms(wav) / _rms(crowd)) * 10 ** (-6 / 20)
    elif kind == "phone":
        narrow = signal.resample_poly(wav, 1, rate // 8000)
        narrow = signal.sosfilt(signal.butter(4, (300, 3400), "bandpass", fs=8000, output="sos"), narrow)
        out = signal.resample_poly(narrow, rate // 8000, 1)[:len(wav)]
        out = np.pad(out, (0, len(wav) - len(out)))
    elif kind == "reverb":
        t = np.arange(int(0.6 * rate)) / rate
        ir = rng.standard_normal(len(t)) * 10 ** (-3 * t / 0.6)  # -60 dB at 0.6 s
        ir[0] = 4.0 * np.abs(ir).max()  # the direct sound
        out = signal.fftconvolve(wav, ir)[:len(wav)]
    else:
        raise ValueError(kind)
    return (out * (0.5 / max(float(np.abs(out).max()), 1e-9))).astype(np.float32)


def available() -> bool:
    return (REAL / "videos").is_dir()


def video(name: str) -> Path:
    """A video of the shared folder by its name, or any video by its absolute path (bench_sync --videos)."""
    return Path(name) if Path(name).is_absolute() else REAL / "videos" / name


def audio_on_video_clock(path: Path, rate: int = RATE) -> tuple[np.ndarray, float]:
    """(mono float32 samples, fps) with sample 0 at the first video frame's time, by the streams' pts.

    Audio that starts before the picture is cut, audio that starts after it is preceded by silence,
    so a copy muxed from these samples at the video's first pts carries the original's alignment.
    """
    with av.open(str(path)) as c:
        vs, st = c.streams.video[0], c.streams.audio[0]
        fps = float(vs.average_rate)
        v0 = next(f.time for f in c.decode(vs))
    with av.open(str(path)) as c:
        st = c.streams.audio[0]
        res = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks, a0 = [], None
        for frame in c.decode(st):
            if a0 is None:
                a0 = frame.time if frame.time is not None else 0.0
            chunks.extend(o.to_ndarray().reshape(-1) for o in res.resample(frame))
        chunks.extend(o.to_ndarray().reshape(-1) for o in res.resample(None))
    wav = np.concatenate(chunks).astype(np.float32)
    lead = int(round((a0 - v0) * rate))
    wav = np.concatenate([np.zeros(lead, np.float32), wav]) if lead > 0 else wav[-lead:]
    return wav, fps


def shifted(wav: np.ndarray, frames: int, fps: float, rate: int = RATE) -> np.ndarray:
    """The same length of audio, heard `frames` video frames later (positive) or earlier (negative)."""
    n = int(round(abs(frames) * rate / fps))
    pad = np.zeros(n, np.float32)
    return np.concatenate([pad, wav[:len(wav) - n]]) if frames > 0 else np.concatenate([wav[n:], pad])


def remux(src: Path, dst: Path, wav: np.ndarray, codec: str, rate: int = RATE) -> None:
    """dst: src's video packets as they are, and `wav` encoded with `codec`, starting with the first frame."""
    with av.open(str(src)) as ic, av.open(str(dst), "w") as oc:
        ivs = ic.streams.video[0]
        ovs = oc.add_stream_from_template(ivs)
        oas = oc.add_stream(codec, rate=rate, layout="mono")
        first = None
        for pkt in ic.demux(ivs):
            if pkt.dts is None and pkt.pts is None:
                continue
            if first is None:
                first = pkt.pts if pkt.pts is not None else pkt.dts
            pkt.stream = ovs
            oc.mux(pkt)
        v0 = float(first * ivs.time_base) if first is not None else 0.0
        tb = Fraction(1, rate)
        start, step = int(round(v0 * rate)), 1152
        for i in range(0, len(wav), step):
            frame = av.AudioFrame.from_ndarray(wav[None, i:i + step].astype(np.float32), format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start + i, tb
            for p in oas.encode(frame):
                oc.mux(p)
        for p in oas.encode(None):
            oc.mux(p)


def original(name: str, cache: Path = CACHE) -> Path:
    """The real file; for MPEG program streams (.mpg), which the download stage's sniffer refuses
    (reported), its packets copied unchanged into mkv."""
    src = video(name)
    if src.suffix != ".mpg":
        return src
    dst = cache / "copies" / f"{src.stem}.orig.mkv"
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".part.mkv")
        with av.open(str(src)) as ic, av.open(str(tmp), "w") as oc:
            streams = [ic.streams.video[0], ic.streams.audio[0]]
            out = {s.index: oc.add_stream_from_template(s) for s in streams}
            for pkt in ic.demux(streams):
                if pkt.dts is None and pkt.pts is None:
                    continue
                pkt.stream = out[pkt.stream.index]
                oc.mux(pkt)
        tmp.replace(dst)
    return dst


def make_copy(name: str, kind: str, donor: str, cache: Path = CACHE, crowd: tuple[str, ...] = ()) -> Path:
    """The `kind` copy of video `name` (see COPIES, HARD_AUDIO), built once; `donor` gives the swapped-in
    voice, `crowd` the voices of the babble."""
    src = video(name)
    container, codec, _ = KINDS[kind]
    if container is None:
        return original(name, cache)
    with av.open(str(src)) as c:
        if container == "ts" and c.streams.video[0].codec_context.name == "mpeg4":
            container = "mkv"  # MPEG-4 part 2 in TS needs its headers repeated in-band; PyAV cannot add them
    dst = cache / "copies" / f"{Path(name).stem}.{kind}.{container}"
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    wav, fps = audio_on_video_clock(src)
    if kind == "late5":
        wav = shifted(wav, 5, fps)
    elif kind == "early8":
        wav = shifted(wav, -8, fps)
    elif kind == "rotate":
        wav = np.roll(wav, len(wav) // 2)
    elif kind == "swap":
        other, _ = audio_on_video_clock(video(donor))
        wav = np.resize(other, len(wav))  # repeated when the donor is shorter
    elif kind in HARD_AUDIO:
        others = [audio_on_video_clock(video(n))[0] for n in crowd] if kind == "babble" else []
        wav = degraded(wav, kind, others)
    tmp = dst.with_name(dst.name + ".part" + dst.suffix)
    remux(src, tmp, wav, codec)
    tmp.replace(dst)
    return dst


def ingest(path: Path, out: Path) -> dict:
    """The real download stage (probe, audio extraction) on one file into OUT."""
    ctx = StageContext(out=out)
    (row,) = DownloadStage().process({"uri": str(path), "input_id": input_id(str(path)), "license": "unknown",
                                      "consent": "yes", "category": "speech"}, ctx)
    if row["status"] != "ok":
        raise RuntimeError(f"{path.name}: {row['error']}")
    ManifestStore(out).write_shard("sources", row["input_id"], [row])
    return row


def picture(name: str, cache: Path = CACHE) -> tuple[Path, dict]:
    """OUT folder holding the original's sources, shots and tracks rows (computed once by the real stages)."""
    out = cache / "orig" / Path(name).stem
    return out, picture_at(original(name, cache), out)


def picture_at(path: Path, out: Path) -> dict:
    """The sources row of `path` in OUT, with its shots and tracks rows: the real download, shot and
    face stages, run once (OUT/picture.json marks them done; a folder without it is redone)."""
    from stages.faces.stage import FaceStage
    from stages.shots.stage import ShotStage

    done = out / "picture.json"
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(out, ignore_errors=True)
    src = ingest(path, out)
    store, ctx = ManifestStore(out), StageContext(out=out)
    for table, rows in ShotStage().process(src, ctx).items():
        store.write_shard(table, src["source_id"], rows)
    store.write_shard("tracks", src["source_id"], FaceStage().process(src, ctx))
    done.write_text(json.dumps(src, default=str))
    return src


def copy_with_picture(name: str, kind: str, donor: str, cache: Path = CACHE,
                      crowd: tuple[str, ...] = ()) -> tuple[Path, dict]:
    """OUT folder of a copy: its own sources row and wav, the original's shots and tracks under its ids."""
    orig_out, orig = picture(name, cache)
    path = make_copy(name, kind, donor, cache, crowd)
    out = cache / "runs" / f"{Path(name).stem}.{kind}"
    shutil.rmtree(out, ignore_errors=True)
    src = ingest(path, out)
    old, new = orig["source_id"], src["source_id"]
    store = ManifestStore(out)
    for table in ("shots", "tracks"):
        rows = ManifestStore(orig_out).read_shard(table, old).to_pylist()
        for r in rows:
            for k in ("source_id", "shot_id", "track_id"):
                if isinstance(r.get(k), str):
                    r[k] = r[k].replace(old, new, 1)
        store.write_shard(table, new, rows)
    return out, src
