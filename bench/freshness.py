"""Freshness at a steady background rate: `recs probe freshness` against the whole stack (issue 10).

    .venv/bin/python bench/freshness.py --rate 1000 --seconds 60 --probes 60     # make bench-stream

A temporary stack on free ports (broker, Redis, Flink), the artifact in settings with its catalogue's
item vectors in KV and in the index service, the HTTP backend (`recs serve`, phase 3), the
user-embedding job. Once the job has written its first record (start-up is not measured), the probe
sends ``--rate`` background clicks/s plus ``--probes`` probe clicks and times each probe until (a) its
KV record and (b) the `/recommendations` answer reflect it (recs/local/freshness.py).

Writes the report under "freshness" in bench/results/stream.json and its serve p99 as
"freshness_probe_p99_ms" (the acceptance figure: p99 < 1 s at 1,000 clicks/s).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from conf import load_settings  # noqa: E402
from conf.settings import with_overrides  # noqa: E402

log = logging.getLogger("bench.freshness")


def main(argv: list[str] | None = None) -> None:
    from confluent_kafka import Producer
    from stream import bench_stack

    from recs.contracts import Click
    from recs.local import flink_jobs
    from recs.local.demo_serving import serving
    from recs.local.freshness import probe
    from recs.local.item_vectors import embed_listings, put_item_vectors
    from recs.local.processes import free_port
    from recs.stores import open_store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--probes", type=int, default=60)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "movielens")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stream.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    base = load_settings()
    started = time.time()
    with bench_stack(base, ["flink"], False, base.flink.parallelism) as s:
        s = with_overrides(s, index={"port": free_port(), "metrics_port": 0}, serve={"port": free_port(), "phase": 3})
        s = with_overrides(s, index={"shards": [[f"{s.index.host}:{s.index.port}"]]})
        items = embed_listings(s, args.data)
        put_item_vectors(s, items)
        ids = [x.item_id for x in items.listings]
        store = open_store(s)
        job = flink_jobs.submit(s, "user-embeddings")
        try:
            p = Producer(s.kafka.client_config())
            p.produce(s.kafka.topics.clicks, Click("warm-up", ids[0], int(time.time() * 1000)).to_json(), key=b"w")
            p.flush(10)
            deadline = time.monotonic() + 180
            while store.get_users(["warm-up"])[0] is None:
                if time.monotonic() > deadline:
                    raise SystemExit("the job wrote no record in 180 s")
                time.sleep(0.2)
            with serving(s, items) as url:
                report = probe(s, args.rate, args.seconds, args.probes, url, ids, timeout_s=30.0, warmup_s=5.0,
                               store=store)
        finally:
            flink_jobs.cancel(s, job)
            store.close()
    result = report.as_dict()
    result.pop("series", None)
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    result["wall_s"] = round(time.time() - started, 1)
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    doc["freshness"] = result
    doc["freshness_probe_p99_ms"] = report.serve.p99_ms
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("kv", "serve", "background")}, indent=1))


if __name__ == "__main__":
    main()
