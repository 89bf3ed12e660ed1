"""emo sample: a talking-head video from one portrait and one speech track.

    python -m model.sample --checkpoint CKPT --image portrait.jpg --audio speech.wav --out video.mp4

The face in the portrait is found and cropped as the face-crop stage does (its detector, its
crop window and margin, stages/media/crops.py), resized to the model's image size. The
audio's features cover its whole length at --fps; the video is generated in windows of f frames,
each conditioned on the last n generated frames of the window before (zeros for the first), so
the video is continuous and memory does not grow with the audio's length: each window is decoded,
watermarked and streamed to the mp4 writer, then dropped.

Classifier-free guidance, EMO-style, with separate reference and audio scales (three passes in
one batch, told apart by the keep masks):

    eps = eps(none) + s_ref * (eps(ref) - eps(none)) + s_audio * (eps(ref, audio) - eps(ref))

so s_ref pulls towards the reference identity and s_audio towards the audio, on top of it.
Every frame carries the invisible checkpoint watermark (model/watermark.py); the mp4's `comment`
metadata and a JSON sidecar (video.mp4.json) record the checkpoint, manifest and parameters.
`SampleOptions` is everything a video takes: the command line parses into it, and `emo build` and
`emo demo` construct it directly and call `sample(opts)`.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import cv2
import diffusers
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from manifests.hashing import sha256_file
from model import watermark
from model.audio_features import SAMPLE_RATE, audio_windows, build_featurizer
from model.checkpoint import load_checkpoint
from model.colour import ColourMatch
from model.curation_tools import (
    DEFAULT_MARGIN,
    FaceMesher,
    MediapipeDetector,
    StageError,
    box_mask,
    crop_frame,
    crop_window,
    decode_audio,
    lip_box,
    write_mp4,
)
from model.latents import load_codec
from model.reference_skip import decode_residual

log = logging.getLogger("emo.sample")

FACE_MASK_GROW = 0.2  # the reference face box grown by this on each side: the head's room to move
LIP_REGION_GROW = 0.5  # the portrait's lip box grown by this on each side: the open mouth's room
MIN_WATERMARK_SIZE = 256  # frames smaller than this are upscaled before the mark goes in


@dataclass(frozen=True)
class SampleOptions:
    """One video: what `emo sample` parses its command line into (see build_parser for each)."""

    checkpoint: str  # a step folder or a run folder (its latest step)
    image: str  # portrait photo
    audio: str  # speech or song, any file FFmpeg reads
    out: str  # the mp4; its JSON sidecar goes beside it
    fps: float = 25.0
    scheduler: str = "ddim"
    steps: int = 20  # denoising steps per window
    guidance_ref: float = 2.0
    guidance_audio: float = 3.5
    seed: int = 0
    speed: float = 0.0  # constant head speed, degrees per frame
    device: str = "auto"
    dtype: str = "auto"
    colour_match: bool = True  # each frame's colour pinned to the reference's (model/colour.py)

    def __post_init__(self):
        # The types the command line gives: the sidecar and the mp4's metadata record them (25 -> 25.0).
        for name in ("checkpoint", "image", "audio", "out"):
            object.__setattr__(self, name, str(getattr(self, name)))
        for name in ("fps", "guidance_ref", "guidance_audio", "speed"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("steps", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))


def largest_face(rgb: np.ndarray) -> np.ndarray | None:
    """[x0, y0, x1, y1] pixels of the largest face the face stage's detector finds, or None."""
    detector = MediapipeDetector()
    try:
        dets = detector.detect(np.ascontiguousarray(rgb))
    finally:
        detector.close()
    if not dets:
        return None
    return max((d.box for d in dets), key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))


def crop_reference(rgb: np.ndarray, size: int, face_fraction: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(size, size, 3) face crop of a portrait and its (size, size) face-region mask in {0, 1}.

    Cropped as the face stage crops a track (stages/media/crops.py): a square window around the
    face. With the checkpoint's `face_fraction` (the face's side over the crop's side in its
    training clips, model/data.py), the face fills that share of the crop, as it did in training;
    a photo too tight for it gives the largest square it holds, with a warning (pixels that are
    not in the photo are not made up: a backdrop came out as speckle). Without it (older
    checkpoints), DEFAULT_MARGIN around the face, shifted to stay inside the photo. The stage's face
    mask is the union of a clip's boxes; one photo has one box, grown by 20% to leave the head room
    to move. With no face found: the centre square and a whole-frame mask, with a warning.
    """
    h, w = rgb.shape[:2]
    box = largest_face(rgb)
    if box is None:
        log.warning("no face found in the portrait: using its centre square crop")
        side = min(h, w)
        window = np.array([(w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2])
        return crop_frame(rgb, window, size), np.ones((size, size), np.float32)
    if face_fraction:
        margin = (1 / float(np.clip(face_fraction, 0.1, 0.95)) - 1) / 2
        window, clipped = crop_window(box[None], margin, w, h)  # inside the photo, as a track's inside its frame
        if clipped:
            share = max(box[2] - box[0], box[3] - box[1]) / (window[2] - window[0])
            log.warning("the portrait is cropped too tightly for this checkpoint: its face fills %.2f of the "
                        "largest square it allows, the training crops' faces %.2f; a photo with more room "
                        "around the face matches training better", share, face_fraction)
    else:
        window, _ = crop_window(box[None], DEFAULT_MARGIN, w, h)
    mask = box_mask(box[None], window, size, grow=FACE_MASK_GROW) > 0
    return crop_frame(rgb, window, size), mask.astype(np.float32)


def lip_region(crop: np.ndarray) -> np.ndarray:
    """(size, size) mask in {0, 1} of the crop's lips, as the face stage boxes a track's lips (the
    face mesh's outer lip contour), grown by LIP_REGION_GROW; the whole crop, with a warning, when
    no face or mesh is found (the voice may then reach the whole frame)."""
    size = crop.shape[0]
    box = largest_face(crop)
    mesher = FaceMesher()
    try:
        pts = mesher.landmarks(np.ascontiguousarray(crop), box) if box is not None else None
    finally:
        mesher.close()
    if pts is None:
        log.warning("no lips found in the portrait's crop: the voice acts on the whole frame")
        return np.ones((size, size), np.float32)
    window = np.array([0, 0, size, size], np.float64)
    return (box_mask(lip_box(pts)[None], window, size, grow=LIP_REGION_GROW) > 0).astype(np.float32)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return x.permute(0, 2, 3, 1).cpu().numpy()  # (N, 3, H, W) -> (N, H, W, 3)


def checkpoint_hash(meta: dict) -> str:
    """The model weights' sha256: from meta.json, or hashed from the file for older checkpoints."""
    return meta.get("model_sha256") or sha256_file(Path(meta["dir"]) / "model.safetensors")


@torch.no_grad()
def denoise(scheduler, steps: int, shape: tuple[int, ...], eps_fn, generator: torch.Generator,
            device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One window's reverse diffusion with any diffusers scheduler: noise in, latents out.

    `eps_fn(model_input, t)` predicts the noise of the scheduler-scaled input. The noise is drawn
    on the CPU generator, so a seed gives the same video on any device.
    """
    scheduler.set_timesteps(steps, device=device)
    latents = torch.randn(shape, generator=generator).to(device, dtype) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = eps_fn(scheduler.scale_model_input(latents, t), t)
        latents = scheduler.step(eps, t, latents.float()).prev_sample.to(dtype)
    return latents


def guided_eps(model, conditions: dict[str, torch.Tensor], guidance_ref: float, guidance_audio: float,
               x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance over the batch of three (unconditional, reference, reference + audio)."""
    eps = model(x.expand(3, -1, -1, -1, -1), t.reshape(1).to(x.device), **conditions)  # (1, f, ...) -> (3, f, ...)
    e_none, e_ref, e_full = eps.float().chunk(3)
    return e_none + guidance_ref * (e_ref - e_none) + guidance_audio * (e_full - e_ref)


@torch.no_grad()
def generate(model, codec, config, scheduler, ref_image: torch.Tensor, face_mask: torch.Tensor,
             audio: torch.Tensor, speed: float, steps: int, guidance_ref: float, guidance_audio: float,
             generator: torch.Generator, device, dtype, ident: int,
             colour: ColourMatch | None = None, audio_region: torch.Tensor | None = None) -> Iterator[np.ndarray]:
    """Watermarked uint8 RGB frames, one window of f frames at a time, len(audio) in all.
    colour: matches each frame's colour to the reference before the watermark (model/colour.py).

    ref_image (1, 3, H, W) in [-1, 1]; face_mask (1, 1, H, W); audio (T, 2m+1, L*D) windows;
    audio_region (1, 1, H, W): where the audio attention writes (config.audio_region "lips").
    """
    f, n, total = config.num_frames, config.num_motion_frames, audio.shape[0]
    c, hw = config.unet["in_channels"], config.latent_size
    ref_latent = codec.encode(ref_image.to(device)).to(dtype)  # (1, C, h, w)
    # Batch of three: unconditional, reference only, reference + audio (see the module docstring).
    reference_keep = torch.tensor([0.0, 1.0, 1.0], device=device, dtype=dtype)
    audio_keep = torch.tensor([0.0, 0.0, 1.0], device=device, dtype=dtype)
    face_mask = face_mask.to(device, dtype).expand(3, -1, -1, -1)  # (1, 1, H, W) -> (3, 1, H, W)
    speeds = torch.full((3, f), speed, device=device, dtype=dtype)  # constant head speed
    motion = torch.zeros(1, n, c, hw, hw, device=device, dtype=dtype)  # no frames before the first window
    starts = range(0, total, f)
    for start in tqdm(starts, desc="windows", unit="window"):
        count = min(f, total - start)
        # The last window is padded with its last audio frame and trimmed after decoding.
        index = torch.arange(start, start + f).clamp(max=total - 1)
        window_audio = audio[index].to(device, dtype)[None].expand(3, -1, -1, -1)  # (3, f, 2m+1, L*D)
        reference = model.encode_reference(ref_latent.expand(3, -1, -1, -1), motion.expand(3, -1, -1, -1, -1))
        conditions = {"audio": window_audio, "face_mask": face_mask, "speed": speeds, "reference": reference,
                      "reference_keep": reference_keep, "audio_keep": audio_keep}
        if audio_region is not None:
            conditions["audio_region"] = audio_region.to(device, dtype).expand(3, -1, -1, -1)  # (3, 1, H, W)
        eps_fn = partial(guided_eps, model, conditions, guidance_ref, guidance_audio)
        latents = denoise(scheduler, steps, (1, f, c, hw, hw), eps_fn, generator, device, dtype)
        motion = latents[:, -n:]  # (1, f, C, h, w) -> (1, n, C, h, w): the next window's motion frames
        if config.reference_skip:  # the latents are changes from the reference (model/reference_skip.py)
            images = decode_residual(codec, latents[0, :count], ref_image.to(device), ref_latent, config.residual_scale)
        else:
            images = codec.decode(latents[0, :count].float())
        frames = to_uint8(images)  # (count, H, W, 3)
        if colour is not None:
            frames = colour(frames)
        for frame in frames:
            if frame.shape[0] < MIN_WATERMARK_SIZE:
                frame = cv2.resize(frame, (MIN_WATERMARK_SIZE, MIN_WATERMARK_SIZE), interpolation=cv2.INTER_CUBIC)
            yield watermark.embed(frame, ident)


SCHEDULERS = {"ddim": "DDIMScheduler", "dpm++": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler",
              "unipc": "UniPCMultistepScheduler"}


def make_scheduler(name: str, noise_schedule: dict):
    """A diffusers scheduler by short name, on the noise schedule the checkpoint was trained with."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    return getattr(diffusers, SCHEDULERS[name]).from_config(noise_schedule)


def read_portrait(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, or a ValueError that names the file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such portrait file")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not an image that can be read ({e})") from None


def read_speech(path: str | Path) -> np.ndarray:
    """16 kHz mono float32 samples of the first audio stream of any file FFmpeg reads (wav, mp3,
    m4a, flac, a video's sound track), resampled as the download stage resamples; or a ValueError."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such audio file")
    try:
        wav, _ = decode_audio(Path(path), SAMPLE_RATE)
    except StageError as e:
        raise ValueError(f"{path}: {e}") from None
    return wav


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def model_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU that has it, else fp16 on a GPU, fp32 on the CPU."""
    if name != "auto":
        return DTYPES[name]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def sample(opts: SampleOptions) -> dict:
    """Write the video `opts` describes; returns its provenance record (also in the sidecar)."""
    rgb, wav = read_portrait(opts.image), read_speech(opts.audio)  # bad input fails before the model loads
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if opts.device == "auto" else torch.device(opts.device)
    dtype = model_dtype(opts.dtype, device)
    model, config, meta = load_checkpoint(opts.checkpoint, ema=True, device=device)
    model = model.to(dtype)
    codec = load_codec(config.codec, meta["vae_path"]).to(device)
    scheduler = make_scheduler(opts.scheduler, meta["noise_schedule"])
    model_hash = checkpoint_hash(meta)
    ident = watermark.checkpoint_id(model_hash)

    crop, mask = crop_reference(rgb, config.image_size, meta.get("face_fraction"))
    ref_image = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # (1, 3, H, W) in [-1, 1]
    face_mask = torch.from_numpy(mask)[None, None]  # (H, W) -> (1, 1, H, W)
    lips = torch.from_numpy(lip_region(crop))[None, None] if config.audio_region == "lips" else None

    seconds = len(wav) / SAMPLE_RATE
    n_frames = round(seconds * opts.fps)
    if n_frames < 1:
        raise SystemExit(f"{opts.audio}: {seconds:.3f} s is shorter than one frame at {opts.fps} fps")
    feats = build_featurizer(config, device)(wav, n_frames)  # (T, L, D) at the video's frame rate
    audio = audio_windows(feats, config.audio_context)  # (T, 2m+1, L*D)

    generator = torch.Generator().manual_seed(opts.seed)
    params = {k: getattr(opts, k) for k in ("image", "audio", "fps", "scheduler", "steps", "guidance_ref",
                                            "guidance_audio", "seed", "speed", "dtype", "colour_match")}
    record = {"checkpoint": meta["dir"], "checkpoint_sha256": model_hash, "checkpoint_id": f"{ident:08x}",
              "manifest_hash": meta.get("manifest_hash"), "stage": meta.get("stage"), "step": meta.get("step"),
              "params": params, "frames": n_frames, "audio_seconds": seconds, "device": str(device),
              "created": datetime.now(UTC).isoformat()}
    frames = generate(model, codec, config, scheduler, ref_image, face_mask, audio, opts.speed, opts.steps,
                      opts.guidance_ref, opts.guidance_audio, generator, device, dtype, ident,
                      ColourMatch(crop) if opts.colour_match else None, audio_region=lips)
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = write_mp4(out, frames, fps=opts.fps, audio=wav, audio_rate=SAMPLE_RATE,
                        metadata={"comment": json.dumps(record, sort_keys=True)})
    if written != n_frames:
        raise RuntimeError(f"wrote {written} frames, expected {n_frames}")
    Path(f"{out}.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    log.info("%s: %d frames, %.2f s, checkpoint id %08x", out, written, seconds, ident)
    return record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emo sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a step folder or a run folder (its latest step)")
    p.add_argument("--image", required=True, help="portrait photo (jpg or png)")
    p.add_argument("--audio", required=True, help="speech or song: any audio file (or video) FFmpeg reads, resampled to 16 kHz mono")
    p.add_argument("--out", required=True, help="output mp4; a JSON provenance sidecar goes next to it")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--scheduler", default="ddim", choices=list(SCHEDULERS), help="diffusers sampler")
    p.add_argument("--steps", type=int, default=20, help="denoising steps per window")
    p.add_argument("--guidance-ref", type=float, default=2.0, help="classifier-free guidance scale on the reference")
    p.add_argument("--guidance-audio", type=float, default=3.5, help="classifier-free guidance scale on the audio")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", type=float, default=0.0, help="constant head speed, degrees per frame")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="the model's weights and activations (auto: bf16 or fp16 on CUDA, fp32 on the CPU)")
    p.add_argument("--no-colour-match", dest="colour_match", action="store_false",
                   help="keep each frame's colour as generated (default: pinned to the reference's, model/colour.py)")
    return p


def parse_options(argv: list[str] | None = None) -> SampleOptions:
    """The command line as SampleOptions (argparse's dests are its field names)."""
    return SampleOptions(**vars(build_parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sample(opts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
