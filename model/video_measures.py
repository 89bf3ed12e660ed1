"""Three measures of a generated talking-head video, with the curation pipeline's own tools.

    face_share           frames in which the face stage's detector (mediapipe) finds a face
    identity_similarity  cosine similarity of the face-stage embedding (dlib ResNet, 128-d) of the
                         generated faces to the reference portrait's; the stage's own measurement
                         puts one person at >= 0.94, different people at <= 0.90 (stages/faces/detectors.py)
    sync                 stages/diarize/sync_measure.py's SyncMeasure on the mesh's mouth opening against the
                         driving audio's loudness: best offset (frames) and confidence
    mouth_darkness       the correlation of how dark the lips' box is (the mesh's, each frame) with the
                         speech's loudness over that frame, at the best offset within +-2 frames. For the
                         demo, whose puppet draws an open mouth dark (pipeline/demo_mouth.py): it sees a
                         mouth that darkens with the voice before the mesh sees its lips part. It is no
                         sync measure of real faces (teeth are bright): on 13 real talking heads of
                         ../shared/real-media it beat their own speech rolled by half on 8 (README)

These say whether a face is there, whose, and whether its mouth follows the speech; not how it looks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _frames(video: Path) -> list[np.ndarray]:
    import av

    with av.open(str(video)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _largest(dets):
    return max(dets, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1])) if dets else None


def measure_video(video: str | Path, reference_rgb: np.ndarray, wav: np.ndarray, fps: float,
                  control_wav: np.ndarray | None = None) -> dict:
    """face_share, identity_similarity (None without a face), sync_offset and sync_confidence (None
    when the mouth never moves or too few frames have a face); with `control_wav` (other audio of the
    same length, e.g. the same speech rolled by half), sync_control: the confidence against it, what a
    mouth that does not follow the speech scores."""
    from model.curation_tools import (
        DlibEmbedder,
        FaceMesher,
        MediapipeDetector,
        SyncMeasure,
        lip_box,
        mouth_open,
        visual_features,
    )

    frames = _frames(Path(video))
    detector, mesher = MediapipeDetector(), FaceMesher()
    try:
        embedder = DlibEmbedder()
    except (ImportError, FileNotFoundError):
        embedder = None
    try:
        ref_det = _largest(detector.detect(np.ascontiguousarray(reference_rgb)))
        ref_emb = embedder.embed(reference_rgb, ref_det) if embedder and ref_det else None
        found, sims, mouth = 0, [], np.full(len(frames), np.nan)
        dark = np.full(len(frames), np.nan)
        for i, rgb in enumerate(frames):
            det = _largest(detector.detect(rgb))
            if det is None:
                continue
            found += 1
            if ref_emb is not None:
                sims.append(float(embedder.embed(rgb, det) @ ref_emb))
            pts = mesher.landmarks(rgb, det.box)
            if pts is not None:
                mouth[i] = mouth_open(pts)
                dark[i] = _lip_darkness(rgb, lip_box(pts))
    finally:
        detector.close()
        mesher.close()
    # the curation's own sync measure (stages/diarize/sync_measure.py), on the mesh's mouth opening alone
    measure = SyncMeasure(max_offset=5)
    visual = visual_features({"mouth_open": mouth})
    sync = measure.score(np.arange(len(frames)), visual, measure.audio(wav, fps, len(frames)), fps=fps)
    out = {"frames": len(frames), "face_share": round(found / max(len(frames), 1), 3),
           "identity_similarity": round(float(np.mean(sims)), 3) if sims else None,
           "sync_offset": sync.offset_frames if sync else None,
           "sync_confidence": sync.confidence if sync else None}
    out["mouth_darkness"], out["mouth_darkness_offset"] = darkness_follows(dark, wav, fps)
    if control_wav is not None:
        control = measure.score(np.arange(len(frames)), visual, measure.audio(control_wav, fps, len(frames)), fps=fps)
        out["sync_control"] = control.confidence if control else None
        out["mouth_darkness_control"] = darkness_follows(dark, control_wav, fps)[0]
    return out


def _lip_darkness(rgb: np.ndarray, box: np.ndarray) -> float:
    """How dark the middle of the lips' box is: minus its mean grey level (0..255)."""
    x0, y0, x1, y1 = box
    inset = 0.2 * (x1 - x0)  # the corners' skin out
    patch = rgb[max(int(y0), 0): int(np.ceil(y1)), max(int(x0 + inset), 0): int(np.ceil(x1 - inset))]
    return -float(patch.mean()) if patch.size else np.nan


def loudness(wav: np.ndarray, fps: float, n_frames: int, rate: int = 16000) -> np.ndarray:
    """(n_frames,) dB of mono audio at `rate` over each video frame's span [i / fps, (i + 1) / fps);
    -120 for a frame past the audio's end. (The demo puppet's jaw follows the same numbers:
    pipeline/demo_mouth.py.)"""
    spans = [wav[int(round(i * rate / fps)): int(round((i + 1) * rate / fps))] for i in range(n_frames)]
    return np.array([10 * np.log10(np.mean(np.square(s, dtype=np.float64)) + 1e-12) if len(s) else -120.0
                     for s in spans])


def darkness_follows(dark: np.ndarray, wav: np.ndarray, fps: float, max_offset: int = 2) -> tuple[float | None, int | None]:
    """(r, offset): the largest correlation of the lips' darkness with the speech's loudness over
    offsets of +-max_offset frames (positive: the mouth after the sound); (None, None) with under
    25 measured frames or a box that never changes."""
    loud = loudness(wav, fps, len(dark))
    best: tuple[float | None, int | None] = (None, None)
    for k in range(-max_offset, max_offset + 1):
        d, a = (dark[k:], loud[:len(loud) - k]) if k >= 0 else (dark[:k], loud[-k:])
        ok = np.isfinite(d)
        if ok.sum() < 25 or np.std(d[ok]) == 0 or np.std(a[ok]) == 0:
            continue
        r = float(np.corrcoef(d[ok], a[ok])[0, 1])
        if best[0] is None or r > best[0]:
            best = (round(r, 3), k)
    return best


def render_measures(name: str, m: dict) -> str:
    ident = "n/a" if m["identity_similarity"] is None else f"{m['identity_similarity']:.3f}"
    sync = "n/a (mouth not measurable)" if m["sync_confidence"] is None else \
        f"confidence {m['sync_confidence']:.3f} at offset {m['sync_offset']} frames"
    if m.get("sync_control") is not None:
        sync += f" (against the same speech rolled by half: {m['sync_control']:.3f})"
    if m.get("mouth_darkness") is not None:
        sync += f"; lips darken with the loudness r {m['mouth_darkness']:.2f} at offset {m['mouth_darkness_offset']}"
        if m.get("mouth_darkness_control") is not None:
            sync += f" (rolled speech: {m['mouth_darkness_control']:.2f})"
    return (f"measures   {name}: face found in {m['face_share']:.0%} of {m['frames']} frames, identity similarity "
            f"{ident}, sync {sync}")
