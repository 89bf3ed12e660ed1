"""SyncNet backend: the learned audio-visual sync network of Chung & Zisserman ("Out of time", 2016),
for users who have the published weights (syncnet_python's `syncnet_v2.model`).

The layers are laid out, and named, as in that release, so its state dict loads by name. Weights are
read as tensors only (`torch.load(weights_only=True)`, or a `.safetensors` file): no arbitrary
objects are unpickled. Nothing here ships weights; without them the offline measure
(stages/diarize/sync_measure.py) is the default; what it measures on real footage is in the README.

What the network sees (facts of the published model):
- picture: 5 consecutive frames of the face crop, 224x224, 3 channels in BGR order, pixel values
  0..255 (no normalisation), as (N, 3, 5, 224, 224);
- sound: 13 MFCCs x 20 steps of 10 ms (0.2 s, the same 5 frames at 25 fps), as (N, 1, 13, 20),
  from 16 kHz audio on the int16 scale (`mfcc`);
- both give a 1024-d embedding; the offset is the shift of the audio that minimises the mean
  Euclidean distance of the pairs, the confidence the median of those mean distances minus the least.

Sign: offset k > 0 means the sound comes k frames after the picture (audio lags video).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

SR = 16000
MFCC_HZ = 100  # MFCC steps per second (10 ms hop)
WINDOW = 5  # video frames per sample
CROP = 224

# Per layer: kind and arguments, in order; the state dict's indices follow this order (pooling and
# activations take an index each), so it must not change. conv: (in, out, kernel, stride, padding).
_AUDIO_CNN = [("conv2", 1, 64, (3, 3), (1, 1), (1, 1)), ("pool2", (1, 1), (1, 1), 0),
              ("conv2", 64, 192, (3, 3), (1, 1), (1, 1)), ("pool2", (3, 3), (1, 2), 0),
              ("conv2", 192, 384, (3, 3), (1, 1), (1, 1)), ("conv2", 384, 256, (3, 3), (1, 1), (1, 1)),
              ("conv2", 256, 256, (3, 3), (1, 1), (1, 1)), ("pool2", (3, 3), (2, 2), 0),
              ("conv2", 256, 512, (5, 4), (1, 1), (0, 0))]
_LIP_CNN = [("conv3", 3, 96, (5, 7, 7), (1, 2, 2), 0), ("pool3", (1, 3, 3), (1, 2, 2), 0),
            ("conv3", 96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), ("pool3", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
            ("conv3", 256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)), ("conv3", 256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
            ("conv3", 256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)), ("pool3", (1, 3, 3), (1, 2, 2), 0),
            ("conv3", 256, 512, (1, 6, 6), (1, 1, 1), 0)]


def _stack(spec: list) -> nn.Sequential:
    """Each conv is followed by batch norm and ReLU; pooling layers stand alone."""
    layers: list[nn.Module] = []
    for kind, *a in spec:
        if kind == "conv2":
            layers += [nn.Conv2d(a[0], a[1], a[2], a[3], a[4]), nn.BatchNorm2d(a[1]), nn.ReLU()]
        elif kind == "conv3":
            layers += [nn.Conv3d(a[0], a[1], a[2], a[3], a[4]), nn.BatchNorm3d(a[1]), nn.ReLU()]
        elif kind == "pool2":
            layers.append(nn.MaxPool2d(a[0], a[1], a[2]))
        else:
            layers.append(nn.MaxPool3d(a[0], a[1], a[2]))
    return nn.Sequential(*layers)


def _head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, dim))


class SyncNet(nn.Module):
    """Two towers, one embedding space: `audio` (N, 1, 13, 20) and `video` (N, 3, 5, 224, 224) -> (N, dim)."""

    def __init__(self, dim: int = 1024):
        super().__init__()
        self.netcnnaud, self.netfcaud = _stack(_AUDIO_CNN), _head(dim)
        self.netcnnlip, self.netfclip = _stack(_LIP_CNN), _head(dim)

    def audio(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def video(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(x).flatten(1))


class SyncNetUnavailable(RuntimeError):
    """The SyncNet backend was chosen but its weights cannot be used."""


def load_syncnet(path: str | Path | None, device: str = "cpu") -> SyncNet:
    """The network with the weights at `path` (syncnet_v2.model or a .safetensors of the same names),
    in eval mode. Raises SyncNetUnavailable with what to do when they are absent or do not fit."""
    if not path or not Path(path).is_file():
        raise SyncNetUnavailable(
            f"sync backend 'syncnet' needs the SyncNet weights (syncnet_python's syncnet_v2.model) at a path you "
            f"give (sync_weights); {path or 'no path'} is not a file. Use the offline backend, or download them.")
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with objects other than tensors is refused here, not run
        raise SyncNetUnavailable(f"{path}: not a tensor-only state dict ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise SyncNetUnavailable(f"{path}: holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module.").removeprefix("__S__."): v for k, v in state.items()}
    net = SyncNet(dim=int(state["netfcaud.3.weight"].shape[0]) if "netfcaud.3.weight" in state else 1024)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SyncNetUnavailable(f"{path}: not SyncNet's layers (missing {missing[:4]}, unexpected {unexpected[:4]})")
    return net.to(device).eval()


def _mel_bank(n_filters: int, n_fft: int, sr: int) -> np.ndarray:
    """Triangular filters from 0 Hz to sr/2, their edges on whole FFT bins (as the reference MFCC does)."""
    mel = np.linspace(0.0, 2595.0 * np.log10(1.0 + (sr / 2) / 700.0), n_filters + 2)
    bins = np.floor((n_fft + 1) * 700.0 * (10 ** (mel / 2595.0) - 1.0) / sr).astype(int)
    bank = np.zeros((n_filters, n_fft // 2 + 1))
    for j in range(n_filters):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        bank[j, lo:mid] = (np.arange(lo, mid) - lo) / max(mid - lo, 1)
        bank[j, mid:hi] = (hi - np.arange(mid, hi)) / max(hi - mid, 1)
    return bank


def mfcc(wav: np.ndarray, sr: int = SR, n_ceps: int = 13, n_filters: int = 26, n_fft: int = 512) -> np.ndarray:
    """(13, T) MFCCs, 25 ms rectangular windows every 10 ms, of float audio in -1..1: pre-emphasis
    0.97, power spectrum / n_fft, 26 mel filters, log, orthonormal DCT-II, lifter 22, and the first
    coefficient replaced by the log frame energy; computed on the int16 scale, as the network saw."""
    from scipy.fft import dct

    x = np.asarray(wav, np.float64) * 32768.0
    x = np.append(x[:1], x[1:] - 0.97 * x[:-1])
    win, hop = int(round(0.025 * sr)), int(round(0.01 * sr))
    n = 1 + max(0, int(np.ceil((len(x) - win) / hop)))
    x = np.pad(x, (0, max(0, (n - 1) * hop + win - len(x))))
    frames = x[np.arange(n)[:, None] * hop + np.arange(win)[None, :]]
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2 / n_fft
    eps = np.finfo(np.float64).eps
    energy = np.maximum(power.sum(1), eps)
    feat = np.log(np.maximum(power @ _mel_bank(n_filters, n_fft, sr).T, eps))
    ceps = dct(feat, type=2, axis=1, norm="ortho")[:, :n_ceps]
    ceps *= 1 + 11.0 * np.sin(np.pi * np.arange(n_ceps) / 22.0)
    ceps[:, 0] = np.log(energy)
    return ceps.T.astype(np.float32)


@dataclass
class SyncNetResult:
    offset_frames: int
    confidence: float  # median minus least of the mean distances over the searched shifts
    min_dist: float


@torch.no_grad()
def syncnet_offset(net: SyncNet, crops: np.ndarray, wav: np.ndarray, times: np.ndarray, max_offset: int = 15,
                   batch: int = 32) -> SyncNetResult | None:
    """Offset of one face's crops against the source audio. crops: (T, 224, 224, 3) uint8 BGR, one per
    video frame, times: (T,) each frame's clock seconds (so any frame rate works: the audio window of
    a 5-frame sample starts at its first frame's time). None when fewer than WINDOW + 1 frames."""
    if len(crops) < WINDOW + 1:
        return None
    dev = next(net.parameters()).device
    ceps = mfcc(wav)
    starts = np.round(np.asarray(times, np.float64)[: len(crops) - WINDOW + 1] * MFCC_HZ).astype(int)
    steps = 4 * WINDOW  # 20 MFCC steps = 0.2 s
    ceps = np.pad(ceps, ((0, 0), (0, max(0, starts.max() + steps - ceps.shape[1]))))
    vid, aud = [], []
    for i in range(0, len(starts), batch):
        idx = np.arange(i, min(i + batch, len(starts)))
        v = np.stack([crops[j:j + WINDOW] for j in idx]).astype(np.float32)  # (B, 5, H, W, 3)
        vid.append(net.video(torch.from_numpy(v).permute(0, 4, 1, 2, 3).to(dev)).cpu())
        a = np.stack([ceps[:, s:s + steps] for s in starts[idx]])[:, None]
        aud.append(net.audio(torch.from_numpy(a).to(dev)).cpu())
    v, a = torch.cat(vid), torch.cat(aud)
    k = max_offset
    a_pad = torch.nn.functional.pad(a, (0, 0, k, k))
    # dist[i, s]: picture window i against the sound window i + (s - k) windows on
    dist = torch.stack([torch.linalg.vector_norm(v - a_pad[s:s + len(v)], dim=1) for s in range(2 * k + 1)], 1)
    mean = dist.mean(0)
    best = int(torch.argmin(mean))
    return SyncNetResult(best - k, float(mean.median() - mean[best]), float(mean[best]))


def face_crop(rgb: np.ndarray, box) -> np.ndarray:
    """224x224 BGR crop around a face box as the network was trained on: half-side s = the box's
    larger half-side, from s above the centre to 1.8 s below it, 1.4 s either side (mouth and chin in)."""
    import cv2

    x0, y0, x1, y1 = (float(v) for v in box)
    s, cx, cy = max(x1 - x0, y1 - y0) / 2, (x0 + x1) / 2, (y0 + y1) / 2
    pad = int(np.ceil(2.8 * s)) + 1  # a box near the edge: grey beyond the frame, not a shifted face
    img = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(110, 110, 110))
    top, left = int(cy - s) + pad, int(cx - 1.4 * s) + pad
    side = max(int(2.8 * s), 1)
    return cv2.resize(img[top:top + side, left:left + side, ::-1], (CROP, CROP), interpolation=cv2.INTER_AREA)


def track_crops(path: Path, rotation: int, tracks: list[dict]) -> dict[str, np.ndarray]:
    """(len(frames), 224, 224, 3) BGR crops per track id, by one decode of the source."""
    from stages.media.video_io import iter_frames, to_rgb

    where = {}  # frame index -> [(track id, row in its track)]
    out = {t["track_id"]: np.zeros((len(t["frames"]), CROP, CROP, 3), np.uint8) for t in tracks}
    for t in tracks:
        for k, f in enumerate(t["frames"]):
            where.setdefault(int(f), []).append((t["track_id"], k))
    boxes = {t["track_id"]: t["boxes"] for t in tracks}
    last = max(where, default=-1)
    for i, frame in iter_frames(path, rotation):
        if i in where:
            rgb = to_rgb(frame, rotation)
            for tid, k in where[i]:
                out[tid][k] = face_crop(rgb, boxes[tid][k])
        if i >= last:
            break
    return out


class SyncNetMeasure:
    """stages/diarize_sync.assign_faces' measure, by SyncNet: `features` gives a track's crops (from
    `crops`, filled by track_crops), `audio` the wav and frame times, `score` the network's offset and
    confidence (median minus least mean distance; no null: null columns stay NaN)."""

    def __init__(self, net: SyncNet, crops: dict[str, np.ndarray], max_offset: int = 15, min_frames: int = 20):
        self.net, self.crops, self.max_offset, self.min_frames = net, crops, max_offset, min_frames

    def features(self, track: dict) -> np.ndarray | None:
        return self.crops.get(track["track_id"])

    def audio(self, wav: np.ndarray, fps: float, n_frames: int | None = None, times: np.ndarray | None = None):
        n = n_frames if n_frames is not None else int(len(wav) / SR * fps)
        return wav, (np.arange(n) / fps if times is None else np.asarray(times, np.float64))

    def score(self, frames, visual: np.ndarray, audio, start: int | None = None, end: int | None = None,
              fps: float = 25.0):
        from stages.diarize.sync_measure import SyncResult

        wav, times = audio
        frames = np.asarray(frames, int)
        keep = (frames >= 0) & (frames < len(times))
        if start is not None:
            keep &= (frames >= start) & (frames < end)
        idx = np.flatnonzero(keep)
        if len(idx) < self.min_frames:
            return None
        # consecutive frames only: a 5-frame window must not bridge a gap in the track
        run = np.split(idx, np.flatnonzero(np.diff(frames[idx]) != 1) + 1)
        run = max(run, key=len)
        res = syncnet_offset(self.net, visual[run], wav, times[frames[run]], self.max_offset)
        if res is None:
            return None
        nan = float("nan")
        return SyncResult(res.offset_frames, round(res.confidence, 3), round(res.min_dist, 4), nan, nan, 0)
