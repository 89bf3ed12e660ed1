"""Speed of the diarize stage on pyannote.audio's sample.wav (30 s, two speakers) and a 2-minute tiling of it.

Prints the real-time factor (processing seconds per audio second; below 1 is faster than real time)
of the whole stage (VAD, embeddings, clustering, resegmentation, vocal type, sync) and of its parts.
Run: .venv/bin/python -m benchmarks.bench_diarize
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def _sample() -> np.ndarray:
    import pyannote.audio

    wav, _ = sf.read(Path(pyannote.audio.__file__).parent / "sample" / "sample.wav", dtype="float32")
    return wav


def _time(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main() -> list[dict]:
    import torch

    from stages.base import StageContext
    from stages.diarize.offline import speech_regions
    from stages.diarize.stage import DiarizeStage
    from stages.diarize.vocal import vocal_features

    stage = DiarizeStage()
    setup_s, _ = _time(stage.setup)
    wav = _sample()
    results = [{"name": "setup (load silero-vad + resemblyzer)", "seconds": setup_s}]
    for name, audio in (("sample.wav 30 s", wav), ("sample.wav x4, 2 min", np.tile(wav, 4))):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            sf.write(out / "a.wav", audio, SR, subtype="FLOAT")
            source = {"source_id": "bench", "audio_path": "a.wav", "has_audio": True, "fps": 25.0,
                      "category": "speech", "duration_s": len(audio) / SR, "media_path": None}
            stage.process(source, StageContext(out=out))  # warm-up
            seconds, rows = _time(stage.process, source, StageContext(out=out))
        dur = len(audio) / SR
        vad_s, _ = _time(speech_regions, audio, stage._diarizer.vad)
        vocal_s, _ = _time(vocal_features, audio)
        results.append({"name": name, "audio_s": dur, "seconds": seconds, "rtf": seconds / dur,
                        "vad_rtf": vad_s / dur, "vocal_rtf": vocal_s / dur, "segments": len(rows),
                        "threads": torch.get_num_threads()})
    for r in results:
        print("  " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    return results


if __name__ == "__main__":
    main()
