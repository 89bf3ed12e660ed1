"""`shots`: one row per shot of an ok source, written by stages/shots.py."""

import pyarrow as pa

from manifests._schema import table_schema

TRANSITIONS = ("start", "cut", "fade", "dissolve")

SHOTS = table_schema(
    "shots",
    1,
    [
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("shot_id", pa.string(), nullable=False),  # f"{source_id}-s{index:04d}"
        pa.field("shot_index", pa.int32(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),  # PTS of the first frame
        pa.field("end_s", pa.float64(), nullable=False),  # PTS of the frame after the last one
        pa.field("start_frame", pa.int64(), nullable=False),  # decoder frame index, inclusive
        pa.field("end_frame", pa.int64(), nullable=False),  # exclusive
        pa.field("transition_in", pa.string(), nullable=False),  # one of TRANSITIONS
        pa.field("confidence", pa.float32()),
        pa.field("detector", pa.string(), nullable=False),
    ],
)
