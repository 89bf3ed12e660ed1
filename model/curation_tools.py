"""What model/ borrows from the curation pipeline, in one place: the one module of model/ that imports stages/.

The sampler finds and crops a portrait's face as the face stage crops a track, decodes speech as the
download stage does and writes its mp4 with the pipeline's writer; the video measures use the face
stage's detector, mesh and embedder and the diarize stage's sync measure; the trainer reads clip
wavs with the one wav reader. (tests/model/test_layering.py keeps it the only one.)
"""

from stages.base import StageError
from stages.diarize.sync_features import visual_features
from stages.diarize.sync_measure import SyncMeasure
from stages.faces.detectors import DlibEmbedder, MediapipeDetector
from stages.faces.landmarks import FaceMesher, lip_box, mouth_open
from stages.media.crops import DEFAULT_MARGIN, box_mask, crop_frame, crop_window
from stages.media.probe import decode_audio, read_audio
from stages.media.video_io import write_mp4

__all__ = ["DEFAULT_MARGIN", "DlibEmbedder", "FaceMesher", "MediapipeDetector", "StageError", "SyncMeasure",
           "box_mask", "crop_frame", "crop_window", "decode_audio", "lip_box", "mouth_open", "read_audio", "visual_features",
           "write_mp4"]
