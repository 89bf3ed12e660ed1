"""The speaker-diarize stage: who speaks when, which face speaks it, speech or singing. stage.py is the
stage; offline.py / pyannote_backend.py diarize, vocal.py types the voice, sync_features.py,
sync_measure.py and syncnet.py measure lip sync, speaking_face.py gives each voiced turn its face."""
