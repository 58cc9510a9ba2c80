"""Wall time and peak memory of `recs data synth` as the event count grows.

    make bench-data        # or: .venv/bin/python bench/data.py --events 100000 1000000 10000000

Each size runs in a fresh process (peak RSS is per process). Two series:
  default catalogue  items and users grow with the events (events/40, capped at 100 k / 250 k)
  fixed catalogue    100 k items and 250 k users at every size: memory should be flat in the
                     event count, since clicks are generated and written chunk by chunk.
Writes bench/results/data.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time
from pathlib import Path
from recs.local.data.synth import SynthConfig, generate
events, out = int(sys.argv[1]), Path(sys.argv[2])
items, users = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 3 else (None, None)
t0 = time.perf_counter()
counts = generate(out, SynthConfig(events=events, items=items, users=users, seed=42), progress=False)
wall = time.perf_counter() - t0
size = sum(f.stat().st_size for f in out.iterdir())
print(json.dumps({"events": events, "wall_s": round(wall, 2), "events_per_s": round(events / wall),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "parquet_mb": round(size / 2**20, 1), "items": counts["items"], "users": counts["users"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--fixed-events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data.json")
    args = ap.parse_args()
    runs = [("default", n, []) for n in args.events] + [("fixed", n, ["100000", "250000"])
                                                        for n in args.fixed_events]
    rows = []
    for catalogue, n, extra in runs:
        with tempfile.TemporaryDirectory(prefix="synth-bench-") as tmp:
            res = subprocess.run([sys.executable, "-c", CHILD, str(n), tmp, *extra], capture_output=True,
                                 text=True, check=True)
        rows.append({"catalogue": catalogue, **json.loads(res.stdout.strip().splitlines()[-1])})
        print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "recs data synth", "machine": {"cpus": _cpus(), "python": platform.python_version()},
              "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
