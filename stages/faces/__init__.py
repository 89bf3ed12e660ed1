"""The face-crop stage: faces detected, tracked per shot, measured (mesh, pose, identity) and given a
crop window. stage.py is the stage; detectors, tracker, landmarks, head_pose, measures, identity its parts."""
