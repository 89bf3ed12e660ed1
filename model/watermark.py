"""An invisible, re-encode and resize tolerant watermark for generated video.

Dither-modulation QIM on mid-low DCT coefficients of the luma, taken at a canonical 256x256
view of each frame: geometry is normalised by resizing, so a resized copy is read at the same
grid; low frequencies survive H.264 at CRF 28. Each of the 64 payload bits is spread over
many coefficients and soft-decided over every frame of the video.

Payload (64 bits): a 16-bit magic pattern, a 32-bit checkpoint id, a 16-bit CRC of the id.
A video is called watermarked only when the magic pattern and the CRC both read back.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.fft import dctn, idctn

CANON = 256
MAGIC = 0xE30F
N_BITS = 64
STEP = 96.0  # QIM step in orthonormal DCT units (codec noise at CRF 28 is ~17 per coefficient)
BAND = (2, 40)  # u + v range of the coefficients used: smooth, low-frequency undulations
SEED = 20240227  # the EMO paper's arXiv date; public on purpose: detection needs no secret


def _layout() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coefficient positions, the bit each carries, and its dither; fixed by SEED."""
    u, v = np.meshgrid(np.arange(CANON), np.arange(CANON), indexing="ij")
    s = u + v
    pos = np.flatnonzero((s >= BAND[0]) & (s <= BAND[1]) & (u > 0) & (v > 0))
    rng = np.random.default_rng(SEED)
    pos = rng.permutation(pos)
    bit_of = np.arange(len(pos)) % N_BITS
    dither = rng.uniform(0, STEP, size=len(pos))
    return pos, bit_of, dither


_POS, _BIT_OF, _DITHER = _layout()


def checkpoint_id(checkpoint_hash: str) -> int:
    """The 32-bit id carried in the mark: the first 8 hex digits of the checkpoint's hash."""
    return int(checkpoint_hash[:8], 16)


def payload_bits(ident: int) -> np.ndarray:
    crc = binascii.crc_hqx(ident.to_bytes(4, "big"), 0)
    word = (MAGIC << 48) | ((ident & 0xFFFFFFFF) << 16) | crc
    return np.array([(word >> (N_BITS - 1 - i)) & 1 for i in range(N_BITS)], dtype=np.uint8)


def _luma_canon(frame_rgb: np.ndarray) -> np.ndarray:
    y = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2YCrCb)[..., 0].astype(np.float64)
    shrink = y.shape[0] >= CANON and y.shape[1] >= CANON
    return cv2.resize(y, (CANON, CANON), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def embed(frame_rgb: np.ndarray, ident: int) -> np.ndarray:
    """The frame with the payload for `ident` embedded (uint8 RGB in, uint8 RGB out, same size)."""
    bits = payload_bits(ident)
    coefs = dctn(_luma_canon(frame_rgb), norm="ortho").reshape(-1)
    c = coefs[_POS]
    b = bits[_BIT_OF].astype(np.float64)
    # Quantise (c - dither - b*STEP/2) to the lattice of STEP, then add the offsets back.
    shift = _DITHER + b * STEP / 2
    target = np.round((c - shift) / STEP) * STEP + shift
    delta = np.zeros(CANON * CANON)
    delta[_POS] = target - c
    d_img = idctn(delta.reshape(CANON, CANON), norm="ortho")
    h, w = frame_rgb.shape[:2]
    d_full = cv2.resize(d_img, (w, h), interpolation=cv2.INTER_CUBIC)
    ycc = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2YCrCb).astype(np.float64)
    ycc[..., 0] += d_full
    return cv2.cvtColor(np.clip(np.round(ycc), 0, 255).astype(np.uint8), cv2.COLOR_YCrCb2RGB)


def soft_bits(frame_rgb: np.ndarray) -> np.ndarray:
    """Per-bit evidence in [-1, 1] from one frame: positive means 1."""
    c = dctn(_luma_canon(frame_rgb), norm="ortho").reshape(-1)[_POS]
    # Distance to the bit-0 lattice vs the bit-1 lattice, as a cosine on the lattice phase.
    phase = 2 * np.pi * (c - _DITHER) / STEP
    ev = -np.cos(phase)  # +1 at the bit-1 points (half a step off), -1 at the bit-0 points
    return np.bincount(_BIT_OF, weights=ev, minlength=N_BITS) / np.bincount(_BIT_OF, minlength=N_BITS)


@dataclass
class Detection:
    present: bool
    checkpoint_id: str | None  # 8 hex digits
    bit_accuracy: float  # agreement of the read bits with the payload they decode to
    magic_ok: bool
    crc_ok: bool
    frames: int

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def detect_frames(frames: Iterable[np.ndarray]) -> Detection:
    total = np.zeros(N_BITS)
    n = 0
    for f in frames:
        total += soft_bits(f)
        n += 1
    if n == 0:
        return Detection(False, None, 0.0, False, False, 0)
    bits = (total > 0).astype(np.uint8)
    word = int("".join(map(str, bits)), 2)
    magic, ident, crc = word >> 48, (word >> 16) & 0xFFFFFFFF, word & 0xFFFF
    magic_ok = magic == MAGIC
    crc_ok = binascii.crc_hqx(ident.to_bytes(4, "big"), 0) == crc
    # Bit accuracy against what was most likely embedded: the magic + decoded id + its CRC.
    expected = payload_bits(ident)
    acc = float((expected == bits).mean())
    present = bool(magic_ok and crc_ok)
    return Detection(present, f"{ident:08x}" if present else None, acc, bool(magic_ok), bool(crc_ok), n)


def detect_video(path: str, max_frames: int = 250) -> Detection:
    """Read up to `max_frames` frames of a video file and look for the mark."""
    import av

    def frames():
        try:
            c = av.open(str(path))
        except av.error.FFmpegError as e:
            raise ValueError(f"{path}: not a video that can be read ({e.strerror or e})") from None
        with c:
            if not c.streams.video:
                raise ValueError(f"{path}: has no video stream")
            for i, fr in enumerate(c.decode(video=0)):
                if i >= max_frames:
                    break
                yield fr.to_ndarray(format="rgb24")

    return detect_frames(frames())
