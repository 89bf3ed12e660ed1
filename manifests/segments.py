"""`segments`: one row per speech (or singing, or music) segment, written by stages/diarize/stage.py."""

import pyarrow as pa

from manifests._schema import table_schema

VOCAL_TYPES = ("speech", "singing", "music", "silence")  # a source with no audio track: one silence row
ON_SCREEN = ("synced", "voice_over", "off_screen", "no_faces")

SEGMENTS = table_schema(
    "segments",
    3,  # 2: sync_peak and the null's statistics (stages/diarize/sync_measure.py). 3: sync_track_id
    [
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("segment_id", pa.string(), nullable=False),  # f"{source_id}-g{index:04d}"
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("speaker", pa.string()),  # unique within the corpus: f"{source_id}-spk{k}"
        pa.field("track_id", pa.string()),  # the face that is speaking, when one is
        # The face the sync columns describe: the speaking face (= track_id), or, when no face took the
        # segment (voice_over), the one whose mouth followed it best; null when no face was measured.
        pa.field("sync_track_id", pa.string()),
        pa.field("sync_offset_frames", pa.int32()),  # > 0: the sound comes after the picture; frames of timeline.fps
        pa.field("sync_confidence", pa.float32()),  # (sync_peak - sync_null_mean) / sync_null_std
        pa.field("sync_peak", pa.float32()),  # the measure's score at the offset
        pa.field("sync_null_mean", pa.float32()),  # the same face against the source's audio far out of time
        pa.field("sync_null_std", pa.float32()),
        pa.field("sync_null_windows", pa.int32()),  # null samples the two come from
        pa.field("sync_pooled", pa.bool_()),  # true: measured over all the face's voiced time (stages/diarize/speaking_face.py)
        pa.field("on_screen", pa.string()),  # one of ON_SCREEN
        pa.field("vocal_type", pa.string()),  # one of VOCAL_TYPES
        pa.field("vocal_evidence", pa.string()),  # JSON: the rule that typed the row and the features it read
        pa.field("language", pa.string()),
        pa.field("text", pa.string()),
        pa.field("backend", pa.string(), nullable=False),
    ],
)
