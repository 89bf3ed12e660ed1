"""The quality-filter stage: every candidate clip judged by every rule in quality.yaml, kept clips cut
to their crop and wav. stage.py is the stage."""
