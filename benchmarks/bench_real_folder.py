"""The real talking heads curated the way a user would: `emo curate ../shared/real-media/videos/ --out OUT`.

One subprocess, default settings, no sources file (a folder of footage). Checks the exit status, then
prints per video what the manifests decided: speaker labels, seconds of each vocal type, voiced
seconds synced to a face or voice-over, clips kept, and the rules that failed the rest; then the
totals. Every video in the folder is speech (README.md of real-media), so any `singing` second is a
mistake, and most hold one person (r3_v01 two), which bounds the speaker labels.

Run: PYTHONPATH=. .venv/bin/python -m benchmarks.bench_real_folder [--out DIR]   (needs ../shared/real-media)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks.sync_corpus import REAL, available
from manifests import ManifestStore

DEFAULT_OUT = Path("bench-out/real-folder")  # git-ignored


def curate(out: Path) -> tuple[int, float, str]:
    """(exit status, seconds, stderr's tail) of `emo curate` on the videos folder into a fresh OUT."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "curate", str(REAL / "videos"), "--out", str(out)],
                          capture_output=True, text=True)
    return done.returncode, time.perf_counter() - t0, done.stderr[-2000:]


def per_video(out: Path) -> list[dict]:
    """One dict per source: what the segments, clips and rejections tables say about it."""
    store = ManifestStore(out)
    names = {r["source_id"]: Path(r["uri"]).name for r in store.read("sources").to_pylist() if r["source_id"]}
    rows = {sid: {"video": name, "speakers": set(), "seconds": Counter(), "synced_s": 0.0, "voice_over_s": 0.0,
                  "kept": 0, "kept_s": 0.0, "failed": Counter()} for sid, name in names.items()}
    for s in store.read("segments").to_pylist():
        r, length = rows[s["source_id"]], s["end_s"] - s["start_s"]
        r["seconds"][s["vocal_type"]] += length
        if s["speaker"]:
            r["speakers"].add(s["speaker"])
        if s["on_screen"] == "synced":
            r["synced_s"] += length
        elif s["on_screen"] == "voice_over":
            r["voice_over_s"] += length
    for c in store.read("clips").to_pylist():
        rows[c["source_id"]]["kept"] += 1
        rows[c["source_id"]]["kept_s"] += c["end_s"] - c["start_s"]
    for j in store.read("rejections").to_pylist():
        rows[j["source_id"]]["failed"][j["rule"]] += 1
    return sorted(rows.values(), key=lambda r: r["video"])


def main(out: str | Path = DEFAULT_OUT) -> list[dict]:
    if not available():
        print("../shared/real-media is absent: nothing to curate")
        return []
    out = Path(out)
    code, seconds, err = curate(out)
    print(f"emo curate {REAL / 'videos'} --out {out}: exit {code}, {seconds:.0f} s")
    if code != 0:
        print(err)
        return [{"name": "real folder", "exit": code}]
    videos = per_video(out)
    for v in videos:
        kinds = ", ".join(f"{k} {s:.1f}" for k, s in sorted(v["seconds"].items()))
        failed = ", ".join(f"{k} {n}" for k, n in v["failed"].most_common())
        print(f"  {v['video'][:38]:38s} speakers {len(v['speakers'])} | {kinds} | synced {v['synced_s']:.1f} "
              f"voice-over {v['voice_over_s']:.1f} | kept {v['kept']} ({v['kept_s']:.1f} s) | {failed}")
    total = {"name": "real folder", "exit": code, "seconds": round(seconds, 1), "videos": len(videos),
             "speakers": sum(len(v["speakers"]) for v in videos),
             "singing_s": round(sum(v["seconds"]["singing"] for v in videos), 1),
             "kept": sum(v["kept"] for v in videos), "kept_s": round(sum(v["kept_s"] for v in videos), 1)}
    print(f"total: {total['videos']} videos, {total['speakers']} speaker labels, {total['singing_s']} s typed singing "
          f"(all are speech), {total['kept']} clips kept ({total['kept_s']} s)")
    return [total]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    main(ap.parse_args().out)
