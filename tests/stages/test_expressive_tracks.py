"""One track per person per shot on real faces made hard (issue 17): the shots and faces stages together
on benchmarks/bench_expressive's derived cases (a 40 degree roll, a fast pan and zoom, a head turn, a
hand over the mouth, and all four at once), three seconds of one dev and one held-out source each.

The figures over eight sources come from `python -m benchmarks.bench_expressive`.
"""

from __future__ import annotations

import pytest

from benchmarks.bench_expressive import DEV, HELD_OUT, REAL, build_cases, measure

pytestmark = pytest.mark.skipif(not (REAL / "videos").is_dir(),
                                reason="../shared/real-media is absent (a clone without the shared development media)")


@pytest.mark.parametrize("name", [DEV[2], HELD_OUT[0]])  # GRID (360x288, dev), VoxCeleb2 (224x224, held out)
def test_one_shot_and_one_track_through_roll_pan_turn_and_hand(name, tmp_path):
    found = {}
    for kind, (path, n) in build_cases(name, tmp_path, seconds=3.0).items():
        m = measure(path, n, tmp_path / f"{kind}.out")
        found[kind] = (m["shots"], m["tracks"], round(m["cover"], 2), m["reasons"])
    # the face is on screen throughout: one shot, one croppable track over at least 95 % of its frames
    wrong = {k: v for k, v in found.items() if not (v[0] == 1 and v[1] == 1 and v[2] >= 0.95 and not v[3])}
    assert not wrong, f"(shots, tracks, share of frames covered, reasons) per case: {wrong}"
