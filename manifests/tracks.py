"""`tracks`: one row per face track inside a shot, written by stages/faces.py.

Per-frame measures are list columns aligned with `frames` (source frame indices).
"""

import pyarrow as pa

from manifests._schema import table_schema

f32list = pa.list_(pa.float32())

TRACKS = table_schema(
    "tracks",
    1,
    [
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("shot_id", pa.string(), nullable=False),
        pa.field("track_id", pa.string(), nullable=False),  # f"{shot_id}-t{index:02d}"
        pa.field("start_frame", pa.int64(), nullable=False),  # inclusive
        pa.field("end_frame", pa.int64(), nullable=False),  # exclusive
        pa.field("frames", pa.list_(pa.int64())),  # every frame covered
        pa.field("boxes", pa.list_(f32list)),  # per frame [x0, y0, x1, y1] in source pixels, smoothed
        pa.field("face_size_px", pa.float32()),  # median box side
        pa.field("det_confidence", pa.float32()),  # mean over detected (not interpolated) frames
        pa.field("landmark_frames", pa.list_(pa.int64())),  # frames where landmarks were measured
        pa.field("landmarks", pa.list_(f32list)),  # per landmark frame, flattened (x, y) pairs, pixels
        pa.field("yaw", f32list),  # degrees, per frame
        pa.field("pitch", f32list),
        pa.field("roll", f32list),
        pa.field("head_speed", f32list),  # degrees per frame, per frame
        pa.field("mouth_open", f32list),  # lip gap / face height, per frame
        pa.field("blur", pa.float32()),  # variance of Laplacian of the face region (higher is sharper)
        pa.field("exposure", pa.float32()),  # mean luma of the face region, 0..1
        pa.field("crop_box", pa.list_(pa.float32())),  # [x0, y0, x1, y1] square crop in source pixels
        pa.field("crop_size", pa.int32()),
        pa.field("crop_path", pa.string()),  # relative to OUT; null when the track failed the cheap checks
        pa.field("face_mask_path", pa.string()),
        pa.field("lip_mask_path", pa.string()),
        pa.field("embedding", f32list),  # identity embedding when the backend gives one
        pa.field("identity_id", pa.string()),  # cluster of tracks across the corpus
        pa.field("backend", pa.string(), nullable=False),
        pa.field("notes", pa.string()),  # why no crop, etc.
    ],
)
