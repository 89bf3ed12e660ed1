"""The five curation stages, one package each, in run order:

    download/   download         a URI in, one `sources` row out
    shots/      shot-detect      `shots`, `timeline`
    faces/      face-crop        `tracks`
    diarize/    speaker-diarize  `segments`
    quality/    quality-filter   `clips`, `rejections`

Each package's stage.py holds the stage class (the contract is in base.py); media/ holds what they
share (probe, read_audio, sniff, decode, the frame clock, crops). Stages never import Ray.
"""
