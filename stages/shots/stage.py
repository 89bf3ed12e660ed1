"""The shot-detect stage: every ok source split into shots, so no training clip straddles a cut.

One decode pass per source gives small frames (stages/media/decode.py); the chosen detector turns them
into boundaries (stages/shots/detectors.py, stages/shots/transnet.py); boundaries closer than the
minimum shot length are thinned; long shots are kept whole (later stages cut clips inside them).
Frames between one shot's `end_frame` and the next one's `start_frame` are a fade or a dissolve.
"""

from __future__ import annotations

import logging
from typing import Any

from stages.base import Resources, Stage, StageContext
from stages.media.decode import SmallFrames, decode_small
from stages.shots.detectors import Boundary, ContentShotDetector, suppress_close
from stages.shots.transnet import INPUT_SIZE, TransNetV2ShotDetector

log = logging.getLogger(__name__)
DETECTORS = ("content", "transnetv2")


class ShotStage(Stage):
    name = "shots"
    reads = ("sources",)
    writes = ("shots", "timeline")  # the decode that finds the cuts numbers and times every frame
    unhashed = ("decode_threads",)  # speed only, same output

    def __init__(
        self,
        detector: str = "content",
        min_shot_s: float = 0.5,
        cut_threshold: float = 0.12,
        cut_ratio: float = 3.0,
        jump_threshold: float = 0.02,
        jump_ratio: float = 10.0,
        motion_ratio: float = 2.0,
        dissolve_frames: int = 12,
        transnet_threshold: float = 0.5,
        batch_size: int = 8,
        device: str = "auto",
        frame_size: tuple[int, int] = INPUT_SIZE,
        decode_threads: int = 0,
        gpus_per_worker: float = 0.25,
    ):
        """
        detector: "content" (fast, CPU) or "transnetv2" (learned; on the GPU when there is one).
        min_shot_s: boundaries that would leave a shorter shot between them keep only the more confident.
        cut_threshold: content detector; least mean RGB change (0..1) between two frames that may be a cut.
        cut_ratio: content detector; a cut's change must also be this many times the local median change.
        jump_threshold, jump_ratio: jump cuts (the background stays, the person jumps), both detectors: a
            change of at least jump_threshold that is jump_ratio times the local median change.
        motion_ratio: both detectors' cut rules; a cut's change must also be this many times the larger
            of the steps just before and after it (camera motion, a turning head or a hand change those
            alike), unless the frame beside it is a blend of the two shots (a cut blended over two steps).
        dissolve_frames: content detector; the span (frames) over which dissolves are looked for.
        transnet_threshold: TransNetV2; per-frame transition probability that marks a boundary.
        batch_size: TransNetV2; 100-frame windows per forward pass.
        device: TransNetV2; "auto" (cuda when available), "cuda" or "cpu".
        frame_size: (w, h) the decoder scales frames to; TransNetV2 needs (48, 27).
        decode_threads: decoder threads; 0 lets FFmpeg choose.
        gpus_per_worker: GPU share a TransNetV2 worker asks for (the model is small; decoding dominates).
        """
        if detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
        frame_size = (int(frame_size[0]), int(frame_size[1]))
        if detector == "transnetv2" and frame_size != INPUT_SIZE:
            raise ValueError(f"transnetv2 needs frame_size {INPUT_SIZE}, got {frame_size}")
        self.detector = detector
        self.min_shot_s = float(min_shot_s)
        self.cut_threshold = float(cut_threshold)
        self.cut_ratio = float(cut_ratio)
        self.jump_threshold = float(jump_threshold)
        self.jump_ratio = float(jump_ratio)
        self.motion_ratio = float(motion_ratio)
        self.dissolve_frames = int(dissolve_frames)
        self.transnet_threshold = float(transnet_threshold)
        self.batch_size = int(batch_size)
        self.device = device
        self.frame_size = frame_size
        self.decode_threads = int(decode_threads)
        self._gpus = float(gpus_per_worker) if detector == "transnetv2" and device != "cpu" else 0.0
        self._detector: ContentShotDetector | TransNetV2ShotDetector | None = None

    @property
    def uses_model(self) -> bool:  # an actor pool keeps TransNetV2 loaded across sources
        return self.detector == "transnetv2"

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=1.0, num_gpus=self._gpus)

    def setup(self) -> None:
        if self.detector == "transnetv2":
            det = TransNetV2ShotDetector(self.transnet_threshold, batch_size=self.batch_size, device=self.device,
                                         jump_threshold=self.jump_threshold, jump_ratio=self.jump_ratio,
                                         motion_ratio=self.motion_ratio)
            det.load()
            self._detector = det
        else:
            self._detector = ContentShotDetector(self.cut_threshold, self.cut_ratio, dissolve_frames=self.dissolve_frames,
                                                 jump_threshold=self.jump_threshold, jump_ratio=self.jump_ratio,
                                                 motion_ratio=self.motion_ratio)

    def process(self, source: dict[str, Any], ctx: StageContext) -> dict[str, list[dict[str, Any]]]:
        if self._detector is None:
            self.setup()
        video = decode_small(ctx.out / source["media_path"], self.frame_size, threads=self.decode_threads)
        if video.corrupt_packets:
            ctx.count("corrupt_frames", video.corrupt_packets)
            log.warning("%s: %d packets did not decode; went on past them", source["source_id"], video.corrupt_packets)
        ctx.count("frames", len(video))
        timeline = video.timeline()
        if len(timeline.sizes) > 1:
            ctx.count("size_changes", len(timeline.sizes) - 1)
        fps = timeline.fps
        bounds = suppress_close(self._detector.detect(video), max(1, round(self.min_shot_s * fps)))
        rows = shot_rows(source["source_id"], video, bounds, self.detector)
        ctx.count("shots", len(rows))
        for r in rows[1:]:
            ctx.count(f"transition_{r['transition_in']}")
        return {"shots": rows, "timeline": [timeline.row(source["source_id"])]}


def shot_rows(source_id: str, video: SmallFrames, bounds: list[Boundary], detector: str) -> list[dict[str, Any]]:
    """`shots` rows: one per span between boundaries, times from the frames' PTS."""
    starts = [(0, "start", None)] + [(b.start, b.kind, b.confidence) for b in bounds]
    ends = [b.prev_end for b in bounds] + [len(video)]
    rows = []
    for k, ((start, kind, conf), end) in enumerate(zip(starts, ends, strict=True)):
        rows.append({
            "source_id": source_id, "shot_id": f"{source_id}-s{k:04d}", "shot_index": k,
            "start_s": video.time_at(start), "end_s": video.time_at(end),
            "start_frame": start, "end_frame": end, "transition_in": kind,
            "confidence": conf, "detector": detector,
        })
    return rows

