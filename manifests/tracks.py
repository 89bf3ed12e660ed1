"""`tracks`: one row per face track inside a shot, written by stages/faces/stage.py.

Per-frame measures are list columns aligned with `frames` (source frame indices, every frame from
start_frame to end_frame - 1; frames between detections are interpolated). Pixel coordinates are in
the displayed frame (after the source's rotation). Per-frame mesh measures are filled by linear
interpolation where the mesh did not fit, or did not run (the face stage's `mesh_every`);
`mesh_fraction` says how often it fit where it ran.
"""

import pyarrow as pa

from manifests._schema import table_schema

f32list = pa.list_(pa.float32())

TRACKS = table_schema(
    "tracks",
    3,  # 2: no crop_path; the quality stage writes crops of kept clips only. 3: mouth_shape, mouth_motion
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
        pa.field("n_detections", pa.int32()),  # frames with a real detection (sampled or refined at the ends)
        pa.field("landmark_frames", pa.list_(pa.int64())),  # sampled frames where the mesh ran and fit
        pa.field("landmarks", pa.list_(f32list)),  # per landmark frame, 468 mesh points as flattened (x, y), pixels
        pa.field("mesh_fraction", pa.float32()),  # share of the frames the mesh ran on (faces mesh_every) where it fit
        pa.field("yaw", f32list),  # degrees, per frame
        pa.field("pitch", f32list),
        pa.field("roll", f32list),
        pa.field("head_speed", f32list),  # degrees per frame, per frame
        pa.field("mouth_open", f32list),  # lip gap / face height, per frame
        pa.field("mouth_shape", pa.list_(f32list)),  # per frame stages.faces.landmarks.MOUTH_SHAPE, over face height
        pa.field("mouth_motion", f32list),  # per frame mean |change| of the lip-aligned mouth patch, 0..1
        pa.field("blur", pa.float32()),  # variance of Laplacian of the face region (higher is sharper)
        pa.field("exposure", pa.float32()),  # mean luma of the face region, 0..1
        pa.field("crop_box", pa.list_(pa.float32())),  # [x0, y0, x1, y1] square crop in source pixels
        pa.field("crop_size", pa.int32()),
        pa.field("reasons", pa.list_(pa.string())),  # cheap checks failed (short, small_face, no_mesh...): no clips
        pa.field("face_mask_path", pa.string()),  # under OUT/masks/, in crop_box pixels; null when reasons
        pa.field("lip_mask_path", pa.string()),
        pa.field("embedding", f32list),  # unit identity embedding: ArcFace (insightface) or dlib's 128-d descriptor (mediapipe)
        pa.field("identity_id", pa.string()),  # a label the user gave, else null: the export clusters identities across the corpus (splits.identity_id)
        pa.field("backend", pa.string(), nullable=False),
        pa.field("notes", pa.string()),  # free text: e.g. the crop window had to shrink to fit the frame
    ],
)
