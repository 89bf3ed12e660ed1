"""`clips` (kept training clips) and `rejections` (one row per failed rule of each rejected candidate).

Written by stages/quality/stage.py, and only there; the export reads `clips` and writes `splits`.
Paths are relative to OUT.
"""

import pyarrow as pa

from manifests._schema import table_schema

# Every rule evaluated for a candidate, kept or not: the decision in full, so a clip's record
# holds the thresholds it was judged by. value is null when the rule could not be measured
# (no diarization, no pose), which counts as passed.
RULE_RESULTS = pa.list_(pa.struct([
    pa.field("rule", pa.string()), pa.field("value", pa.float64()), pa.field("threshold", pa.float64()),
    pa.field("passed", pa.bool_()),
]))

CLIPS = table_schema(
    "clips",
    4,  # 3: audio_shift_frames. 4: resampled, av_lag_ms; times from the source's timeline
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("shot_id", pa.string()),
        pa.field("track_id", pa.string()),
        pa.field("segment_id", pa.string()),
        pa.field("start_frame", pa.int64(), nullable=False),  # source frame index, inclusive
        pa.field("end_frame", pa.int64(), nullable=False),  # exclusive
        pa.field("start_s", pa.float64(), nullable=False),  # clock time of start_frame (the timeline table)
        pa.field("end_s", pa.float64(), nullable=False),  # clock time of end_frame
        pa.field("n_frames", pa.int64(), nullable=False),  # frames of the crop mp4: (end_s - start_s) * fps
        pa.field("fps", pa.float64(), nullable=False),  # the crop mp4's constant frame rate
        # True: the crop's frames are not the source's one for one (a variable-rate source, or a
        # quality clip_fps other than the source's): each shows the source frame nearest its instant.
        pa.field("resampled", pa.bool_()),
        # Mean (sound instant - instant of the source frame shown) over the crop's frames, ms: what
        # timestamp resampling leaves of audio-visual lag (0 for frames taken one for one).
        pa.field("av_lag_ms", pa.float32()),
        pa.field("crop_path", pa.string(), nullable=False),  # square face-region mp4 of exactly this clip
        pa.field("audio_path", pa.string(), nullable=False),  # 16 kHz mono wav of exactly this clip
        pa.field("face_mask_path", pa.string()),  # PNG, crop resolution
        pa.field("lip_mask_path", pa.string()),
        pa.field("head_speed", pa.list_(pa.float32())),  # degrees per frame, one per clip frame
        pa.field("face_size_px", pa.float32()),
        pa.field("sync_confidence", pa.float32()),
        # The wav was moved by this many frames into step (0: none): frames of the source's nominal rate
        # (timeline.fps, what the sync measure counts), not of the crop's fps when the clip was resampled.
        pa.field("audio_shift_frames", pa.int32()),
        pa.field("vocal_type", pa.string()),
        pa.field("category", pa.string()),
        pa.field("language", pa.string()),
        pa.field("license", pa.string()),
        pa.field("consent", pa.string()),
        # The track's identity_id (a label the user gave) and a split quality leaves null: the export's
        # identity and train / val are in `splits` (manifests/splits.py; join: splits.exported_clips).
        pa.field("identity_id", pa.string()),
        pa.field("split", pa.string()),
        pa.field("sha256", pa.string()),  # of crop_path, for --verify
        pa.field("rules", RULE_RESULTS),  # every rule, all passed
    ],
)

REJECTIONS = table_schema(
    "rejections",
    2,
    [
        pa.field("candidate_id", pa.string(), nullable=False),
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("shot_id", pa.string()),
        pa.field("track_id", pa.string()),
        pa.field("segment_id", pa.string()),
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
        pa.field("rule", pa.string(), nullable=False),  # reason code, e.g. "face_too_small"
        pa.field("value", pa.float64()),  # the measured value
        pa.field("threshold", pa.float64()),
        pa.field("rules", RULE_RESULTS),  # every rule for this candidate, passed or failed
    ],
)
