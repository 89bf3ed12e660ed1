"""`shots`: one row per shot of an ok source, written by stages/shots/stage.py.

Shots are in order and never overlap; frames between one shot's `end_frame` and the next one's
`start_frame` are the fade or dissolve the next shot came in by (none after a cut). Frame
numbers are the decoder's output order, so after a corrupt stretch they fall behind the PTS times.
"""

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
        pa.field("transition_in", pa.string(), nullable=False),  # one of TRANSITIONS; "start" for the first shot
        pa.field("confidence", pa.float32()),  # of the boundary that starts the shot; null for "start"
        pa.field("detector", pa.string(), nullable=False),  # "content" or "transnetv2"
    ],
)
