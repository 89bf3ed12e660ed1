"""The shot-detect stage: cuts, fades and jump cuts, and the source's frame timeline. stage.py is the
stage; detectors.py is the offline detector, transnet.py the learned one."""
