"""`make bench`: run every benchmark script present and print one table.

    python -m benchmarks.run_all [bench_curate bench_watermark ...]   (no names: all of them)

Each benchmarks/bench_*.py is found by its name and exposes main() -> list of result dicts (name
plus figures), run here with its defaults: bench_shots, bench_faces, bench_diarize, bench_train,
bench_curate (end-to-end curate of 10 minutes of 720p against the decode floor, 1 -> 2 CPU scaling,
memory at 1x and 4x: the slow one) and bench_watermark (detection after a CRF 28 half-size
re-encode, false positives on real footage). Speed claims are ratios against a baseline measured
in the same run (decode-only, usually).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    only = set(sys.argv[1:])
    sys.argv = sys.argv[:1]  # a benchmark that parses its own arguments must not see our names
    rows: list[dict] = []
    for name in names:
        if only and name not in only:
            continue
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            results = importlib.import_module(f"benchmarks.{name}").main() or []
        except Exception as e:  # one broken benchmark must not hide the others
            results = [{"name": name, "error": f"{type(e).__name__}: {e}"}]
        for r in results:
            rows.append({"bench": name, **r})
        print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("\n" + "=" * 100)
    for r in rows:
        figures = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items() if k != "bench")
        print(f"{r['bench']:18s} {figures}")
    Path("bench-out").mkdir(exist_ok=True)
    Path("bench-out/results.json").write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
