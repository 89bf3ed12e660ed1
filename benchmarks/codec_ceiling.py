"""What a latent codec lets a perfect model show of a talking mouth: a clip re-made from its own latents.

    python -m benchmarks.codec_ceiling --data OUT [--clip CLIP_ID] [--size 128]

Every frame of a curated clip is encoded, taken as its change from the clip's first frame, and decoded
through the reference skip (model/reference_skip.py) onto that first frame: exactly what a model that
predicted every change perfectly would give at that codec. The video measures (model/video_measures.py)
then say whether the mouth still follows the clip's own audio, against the same audio rolled by half:

    the clip itself            at the model's image size
    pixel (4 ch, 1/8)          the tiny and demo models' codec
    patches d=2 (12 ch, 1/4)   PatchCodec(detail=2)
    patches d=4 (48 ch, 1/2)   codec "pixel_patches"

A codec whose re-made clip has no sync cannot show one however well the model learns.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch


def _frames(path: Path, size: int) -> tuple[torch.Tensor, float]:
    import av
    import torch.nn.functional as F

    with av.open(str(path)) as c:
        fps = float(c.streams.video[0].average_rate)
        rgb = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 127.5 - 1  # (T, 3, H, W) in [-1, 1]
    return F.interpolate(x, size=(size, size), mode="area"), fps


def _uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def codec_ceiling(clip_mp4: Path, clip_wav: Path, size: int = 128) -> dict[str, dict]:
    from model.audio_features import load_wav
    from model.curation_tools import write_mp4
    from model.latents import PatchCodec, PixelCodec
    from model.reference_skip import decode_residual, to_residual
    from model.video_measures import measure_video

    frames, fps = _frames(clip_mp4, size)
    wav = load_wav(clip_wav)
    control = np.roll(wav, len(wav) // 2)
    ref = frames[:1]
    ref_rgb = _uint8(ref)[0]
    ways = {"the clip itself": None, "pixel (4 ch, 1/8)": PixelCodec(),
            "patches d=2 (12 ch, 1/4)": PatchCodec(detail=2), "patches d=4 (48 ch, 1/2)": PatchCodec(detail=4)}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, codec in ways.items():
            if codec is None:
                remade = frames
            else:
                ref_latent = codec.encode(ref)
                change = to_residual(codec.encode(frames)[None], ref_latent, 1.0)[0]
                remade = decode_residual(codec, change, ref, ref_latent, 1.0)
            video = Path(tmp) / "remade.mp4"
            write_mp4(video, iter(_uint8(remade)), fps=fps)
            out[name] = measure_video(video, ref_rgb, wav, fps, control_wav=control)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    from manifests.store import ManifestStore

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="curated OUT folder (its clips table)")
    p.add_argument("--clip", help="a clip_id (default: the longest kept clip)")
    p.add_argument("--size", type=int, default=128, help="the model's image size")
    args = p.parse_args(argv)
    clips = ManifestStore(args.data).read("clips", ["clip_id", "crop_path", "audio_path", "n_frames"]).to_pylist()
    clip = next(c for c in clips if c["clip_id"] == args.clip) if args.clip else max(clips, key=lambda c: c["n_frames"])
    out = codec_ceiling(Path(args.data) / clip["crop_path"], Path(args.data) / clip["audio_path"], args.size)
    print(f"clip {clip['clip_id']} ({clip['n_frames']} frames) at {args.size} px, re-made from its own latents:")
    for name, m in out.items():
        print(f"  {name:26s} sync confidence {m['sync_confidence']:6.2f} at offset {m['sync_offset']} "
              f"(rolled audio: {m['sync_control']:.2f}); face {m['face_share']:.0%}, identity {m['identity_similarity']}")
    return [{"name": f"codec_ceiling/{name}", **m} for name, m in out.items()]


if __name__ == "__main__":
    main()
