"""Shot boundary detectors over small decoded frames: a fast content detector and the gradual rules.

Every detector takes the frames of one decode pass (stages/media/decode.py) and returns `Boundary`s.
A boundary says where the new shot starts and where the old one ended: the same frame for a
cut, a span of blended frames between them for a fade or a dissolve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.media.decode import SmallFrames

# A cut blended into one frame fits a mix of the frames beside it to 0.01-0.02; a hand or a pan to 0.2-0.7.
BLENDED_CUT_RESIDUAL = 0.1


@dataclass(frozen=True)
class Boundary:
    start: int  # first frame of the new shot
    prev_end: int  # end (exclusive) of the old shot; < start for a gradual transition
    kind: str  # cut / fade / dissolve
    confidence: float


def frame_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute RGB difference in [0, 1], over the last three axes (H, W, C)."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=(-3, -2, -1)) / 255.0


def dark_frames(frames: np.ndarray, level: float = 0.07, spread: float = 0.05) -> np.ndarray:
    """(N,) bool: frames that are (near) uniform black, the middle of a fade."""
    f = frames.reshape(len(frames), -1).astype(np.float32) / 255.0
    return (f.mean(1) < level) & (f.std(1) < spread)


def find_fades(frames: np.ndarray, max_frames: int, min_frames: int = 3) -> list[Boundary]:
    """Fades through black: a run of dark frames with brightness falling into it or rising out of it."""
    dark = dark_frames(frames)
    luma = frames.reshape(len(frames), -1).mean(1) / 255.0
    eps = 0.002
    out, i, n = [], 0, len(frames)
    while i < n:
        if not dark[i]:
            i += 1
            continue
        d0 = i
        while i < n and dark[i]:
            i += 1
        d1 = i
        a = d0
        while a > 0 and d0 - a < max_frames and luma[a - 1] > luma[a] + eps:
            a -= 1
        b = d1
        while b < n and b - d1 < max_frames and luma[b] > luma[b - 1] + eps:
            b += 1
        if (d0 - a) + (b - d1) >= min_frames and 0 < b < n:
            # a is the last frame at full brightness (when it moved); b the first one again
            out.append(Boundary(start=b, prev_end=a + 1 if a < d0 else d0, kind="fade", confidence=1.0))
    return out


def blend_fit(frames: np.ndarray, a: int, b: int) -> tuple[np.ndarray, float]:
    """How well frames a..b are explained as (1 - alpha) * frame a + alpha * frame b.

    Returns alpha per frame (0 at a, 1 at b) and the worst residual relative to |b - a|: a
    dissolve is such a blend, camera motion is not.
    """
    x = frames[a : b + 1].reshape(b - a + 1, -1).astype(np.float32)
    d = x[-1] - x[0]
    norm = float(d @ d)
    if norm == 0:
        return np.zeros(len(x)), np.inf
    alpha = (x - x[0]) @ d / norm
    resid = np.abs(x - x[0] - alpha[:, None] * d).mean(1) / np.abs(d).mean()
    return alpha, float(resid.max())


def classify_gradual(frames: np.ndarray, prev_end: int, start: int) -> str:
    """A gradual transition through a dark frame is a fade, else a dissolve."""
    lo, hi = max(0, prev_end - 1), min(len(frames), start + 1)
    return "fade" if dark_frames(frames[lo:hi]).any() else "dissolve"


def suppress_close(bounds: list[Boundary], min_gap: int) -> list[Boundary]:
    """Minimum shot length: of two boundaries that leave less than `min_gap` frames of shot between
    them (or overlap), keep the more confident."""
    kept: list[Boundary] = []
    for bd in sorted(bounds, key=lambda x: (-x.confidence, x.start)):
        if all((b.prev_end - a.start) >= min_gap for k in kept for a, b in [sorted((k, bd), key=lambda x: x.start)]):
            kept.append(bd)
    return sorted(kept, key=lambda x: x.start)


class ContentShotDetector:
    """Hard cuts from frame-to-frame colour change against a local, adaptive baseline; fades and
    dissolves from separate rules (dark runs; frames that are a linear blend of their neighbours)."""

    name = "content"

    def __init__(self, cut_threshold: float = 0.12, cut_ratio: float = 3.0, window: int = 12,
                 flash_frames: int = 3, dissolve_frames: int = 12, dissolve_threshold: float = 0.12,
                 blend_residual: float = 0.35, max_fade_frames: int = 50,
                 jump_threshold: float = 0.02, jump_ratio: float = 10.0, motion_ratio: float = 2.0):
        self.cut_threshold = cut_threshold
        self.cut_ratio = cut_ratio
        self.jump_threshold = jump_threshold
        self.jump_ratio = jump_ratio
        self.motion_ratio = motion_ratio
        self.window = window
        self.flash_frames = flash_frames
        self.half = max(2, dissolve_frames // 2)
        self.dissolve_threshold = dissolve_threshold
        self.blend_residual = blend_residual
        self.max_fade_frames = max_fade_frames

    def detect(self, video: SmallFrames) -> list[Boundary]:
        frames = video.frames
        fades = find_fades(frames, self.max_fade_frames)
        in_fade = _mask(len(frames), fades)
        cuts = [c for c in self.cuts(frames) if not in_fade[c.start]]
        busy = _mask(len(frames), fades, cuts, pad=self.half)
        return sorted(fades + cuts + self.dissolves(frames, busy), key=lambda b: b.start)

    def gradual(self, frames: np.ndarray) -> list[Boundary]:
        """Fades and dissolves alone, for typing another detector's boundaries."""
        fades = find_fades(frames, self.max_fade_frames)
        return sorted(fades + self.dissolves(frames, _mask(len(frames), fades)), key=lambda b: b.start)

    def cuts(self, frames: np.ndarray) -> list[Boundary]:
        """Frame i starts a shot when its change from i-1 is far above the change around it.

        Two rules: a large change a few times the local one (a cut to other content), or a small
        change many times the local one (a jump cut: the background stays, the person jumps). Either
        way the change happens in one step: camera motion, a head turning or a hand passing the face
        change the steps just before and after almost as much (see `_one_step`).
        """
        s = frame_distance(frames[1:], frames[:-1])  # s[i-1]: change from frame i-1 to i
        w = self.window
        out = []
        for j in np.flatnonzero(s >= min(self.cut_threshold, self.jump_threshold)):
            ctx = np.r_[s[max(0, j - w) : max(0, j - 1)], s[j + 2 : j + w + 1]]
            base = float(np.median(ctx)) if len(ctx) else 0.0
            big = s[j] >= self.cut_threshold and s[j] >= self.cut_ratio * base
            jump = s[j] >= self.jump_threshold and s[j] >= self.jump_ratio * base
            if not (big or jump) or s[j] < s[max(0, j - 1) : j + 2].max() or not self._one_step(frames, s, int(j)):
                continue
            i = int(j) + 1
            if self._is_flash(frames, i, float(s[j])):
                continue
            conf = float(min(1.0, s[j] / (2 * max(self.cut_threshold, self.cut_ratio * base))))
            out.append(Boundary(start=i, prev_end=i, kind="cut", confidence=conf))
        return out

    def _one_step(self, frames: np.ndarray, s: np.ndarray, j: int) -> bool:
        """The change from frame j to j+1 is `motion_ratio` times the larger step beside it, or it is a cut
        blended over two steps (the frame between them a mix of the frames either side, as frame-rate
        conversion leaves it). Measured as the larger step beside over the step: a fast pan (half the frame
        in 10 frames) 0.9-1.0, a hand raised to the mouth in 0.2 s 0.65-0.9; the demo reels' 26 cuts 0.11
        at most, but 0.26-0.42 for the three out of their fastest pan (bikes)."""
        beside = [s[k] for k in (j - 1, j + 1) if 0 <= k < len(s)]
        if not beside or s[j] >= self.motion_ratio * max(beside):
            return True
        k = j - 1 if j > 0 and (j + 1 >= len(s) or s[j - 1] >= s[j + 1]) else j  # frames k, k+1, k+2 hold the pair
        return k + 2 < len(frames) and blend_fit(frames, k, k + 2)[1] < BLENDED_CUT_RESIDUAL

    def _is_flash(self, frames: np.ndarray, i: int, jump: float) -> bool:
        """A flash (or a frame or two of glitch): the picture before the jump comes back right after it."""
        k, n = self.flash_frames, len(frames)
        for a in range(max(0, i - k - 1), i):
            for b in range(i, min(n, a + k + 2)):
                if (a, b) != (i - 1, i) and frame_distance(frames[a], frames[b]) < 0.4 * jump:
                    return True
        return False

    def dissolves(self, frames: np.ndarray, busy: np.ndarray) -> list[Boundary]:
        """Spans where frames far apart differ like a cut, no single step does, and the frames between
        are blends of the two ends."""
        h, n = self.half, len(frames)
        if n <= 2 * h:
            return []
        far = frame_distance(frames[2 * h :], frames[: n - 2 * h])  # far[c - h]: frame c-h vs c+h
        out: list[Boundary] = []
        for j in np.argsort(-far):
            if far[j] < self.dissolve_threshold:
                break
            a, b = int(j), int(j) + 2 * h
            if busy[a : b + 1].any():
                continue
            alpha, resid = blend_fit(frames, a, b)
            steps = np.diff(alpha)
            if resid > self.blend_residual or steps.min() < -0.08 or steps.max() > 0.5:
                continue  # not a blend, or one step does most of the change (a flash, a cut)
            prev_end = a + int(np.argmax(alpha > 0.04))
            start = a + int(np.argmax(alpha >= 0.96))
            if start - prev_end < 3:
                continue
            out.append(Boundary(start=start, prev_end=prev_end, kind="dissolve",
                                confidence=float(min(1.0, 1.0 - resid))))
            busy[a : b + 1] = True
        return sorted(out, key=lambda x: x.start)


def _mask(n: int, *groups: list[Boundary], pad: int = 0) -> np.ndarray:
    """(n + 1,) bool: frames covered by the boundaries' spans, widened by `pad` around cuts."""
    m = np.zeros(n + 1, bool)
    for group in groups:
        for b in group:
            lo, hi = (b.prev_end, b.start + 1) if b.start > b.prev_end else (b.start - pad, b.start + pad)
            m[max(0, lo) : hi] = True
    return m
