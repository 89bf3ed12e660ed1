"""`stage_runs`: exactly one row per (stage, source): what happened, how long it took, what it counted."""

import pyarrow as pa

from manifests._schema import table_schema

STAGE_RUNS = table_schema(
    "stage_runs",
    1,
    [
        pa.field("stage", pa.string(), nullable=False),
        pa.field("source_id", pa.string(), nullable=False),  # input_id for the download stage
        pa.field("status", pa.string(), nullable=False),  # ok / failed / skipped
        pa.field("error", pa.string()),
        pa.field("n_rows", pa.int64()),  # rows this stage wrote for the source
        pa.field("seconds", pa.float64()),
        pa.field("counters", pa.map_(pa.string(), pa.int64())),  # seen/kept/dropped by reason
        pa.field("config_hash", pa.string()),
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    ],
)
