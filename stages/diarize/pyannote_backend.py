"""pyannote.audio's pretrained diarization pipeline, when the user supplies its files or a token.

The pipeline is gated on the model hub, so nothing here downloads by default: a local path to the
pipeline's config.yaml (or the folder holding it) always works; a hub name works only with a token.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stages.diarize.offline import Turn

SR = 16000
TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGINGFACE_TOKEN", "PYANNOTE_TOKEN")


class PyannoteUnavailable(RuntimeError):
    """The pipeline's files are not here and there is no token to fetch them."""


def resolve_pipeline(pipeline: str, token: str | None) -> tuple[str, str | None]:
    """(what to pass to Pipeline.from_pretrained, token), or PyannoteUnavailable saying what to do."""
    path = Path(pipeline).expanduser()
    if path.is_dir() and (path / "config.yaml").is_file():
        return str(path / "config.yaml"), token
    if path.is_file():
        return str(path), token
    token = token or next((os.environ[v] for v in TOKEN_ENV_VARS if os.environ.get(v)), None)
    if token is None:
        raise PyannoteUnavailable(
            f"pyannote backend: {pipeline!r} is not a local pipeline (a config.yaml or a folder holding one) "
            f"and no token was given (hf_token=... or one of {', '.join(TOKEN_ENV_VARS)}). Accept the model's "
            "conditions on the hub and set a token, or point pyannote_pipeline at a downloaded copy; "
            "or use backend='resemblyzer', which needs neither.")
    return pipeline, token


class PyannoteDiarizer:
    backend = "pyannote"

    def __init__(self, pipeline: str = "pyannote/speaker-diarization-3.1", token: str | None = None,
                 num_speakers: int | None = None, max_speakers: int | None = None):
        self.source, self.token = resolve_pipeline(pipeline, token)
        self.num_speakers, self.max_speakers = num_speakers, max_speakers
        self.pipeline = None

    def load(self) -> PyannoteDiarizer:
        import torch
        from pyannote.audio import Pipeline

        self.pipeline = Pipeline.from_pretrained(self.source, use_auth_token=self.token)
        if self.pipeline is None:  # pyannote prints the reason and returns None on a refused download
            raise PyannoteUnavailable(f"pyannote could not load {self.source!r} (see the message above)")
        if torch.cuda.is_available():
            self.pipeline.to(torch.device("cuda"))
        return self

    def __call__(self, wav: np.ndarray) -> tuple[list[Turn], list[tuple]]:
        import torch

        kw = {"num_speakers": self.num_speakers} if self.num_speakers else {"max_speakers": self.max_speakers}
        ann = self.pipeline({"waveform": torch.from_numpy(wav)[None], "sample_rate": SR}, **kw)
        ids = {label: i for i, label in enumerate(ann.labels())}
        turns = [Turn(round(s.start, 3), round(s.end, 3), ids[label])
                 for s, _, label in ann.itertracks(yield_label=True)]
        regions = [(s.start, s.end) for s in ann.get_timeline().support()]
        return sorted(turns, key=lambda t: t.start_s), regions
