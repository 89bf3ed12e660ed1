"""`timeline`: one row per decoded source, the frame -> time table of the media clock, written by stages/shots/stage.py.

`frame_s[i]` is the clock time (stages/media/clock.py: seconds after the first displayed frame) of
the i-th displayed frame, the numbering every `*_frame` column uses; no stage computes index / fps.
Read it with `stages.media.clock.Timeline`.
"""

import pyarrow as pa

from manifests._schema import table_schema

TIMELINE = table_schema(
    "timeline",
    1,
    [
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("n_frames", pa.int64(), nullable=False),  # frames that decoded
        pa.field("frame_s", pa.list_(pa.float64()), nullable=False),  # clock time of each frame; [0] is 0.0
        pa.field("end_s", pa.float64(), nullable=False),  # end of the last frame (its time plus its duration)
        pa.field("fps", pa.float64(), nullable=False),  # 1 / median frame step: the nominal rate
        pa.field("constant_rate", pa.bool_(), nullable=False),  # every step within 10 % of the median
        # Coded frame size of each run of frames: [first frame, width, height]; more than one entry
        # means the size changed mid-stream, and every stage scales frames to the first size.
        pa.field("sizes", pa.list_(pa.list_(pa.int64())), nullable=False),
    ],
)
