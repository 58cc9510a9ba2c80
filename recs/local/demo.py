"""`make demo`: the pipeline end to end on the embedded stack, checked, in about a minute.

    stack up ─► recs data synth ─► recs produce clicks (+ a few malformed events)
             ─► Flink job click_counts (flink run --python) ─► Redis clicks:{user}, clicks.dlq

The demo starts from a clean broker (memory storage) and clears its own Redis keys so that its
final check is exact: the per-user counts in Redis add up to the valid clicks produced, and every
malformed event is in the dead-letter topic with its reason. The stack is left running
(`make down` stops it). Later issues extend the demo to embeddings, the index and /recommendations.
"""

from __future__ import annotations

import json
import logging
import time

from conf import load_settings
from recs.local import flink_jobs as flink
from recs.local.broker import Broker, read_topic
from recs.local.produce import produce
from recs.local.stack import Stack
from recs.stores.redis_store import redis_client

log = logging.getLogger("recs.local.demo")

MALFORMED = [
    b"this is not json",
    b'{"user_id": 42, "item_id": "i1", "ts": 1790812800000, "event": "click"}',
    b'{"user_id": "u1", "item_id": "i1", "ts": -1, "event": "click"}',
    b'{"user_id": "u1", "item_id": "i1", "ts": 1790812800000, "event": "purchase"}',
    b'{"item_id": "i1", "ts": 1790812800000, "event": "click"}',
]


def main(events: int = 50_000) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = load_settings()
    data_dir = settings.data.data_dir / "demo"

    log.info("1/6 local stack")
    stack = Stack(settings)
    stack.up()
    for job in flink.list_jobs(settings):
        if job["state"] == "RUNNING" and job["name"] == "click_counts":
            flink.cancel(settings, job["jid"])
    broker = Broker(settings)  # fresh topics: memory storage is emptied by a restart
    broker.stop()
    broker.start()
    r = redis_client(settings.redis)
    pattern = f"{settings.kv.key_prefix}clicks:*"
    for key in list(r.scan_iter(match=pattern, count=1000)):
        r.delete(key)

    log.info("2/6 synthetic data: %d clicks", events)
    from recs.local.data.synth import generate

    counts = generate(data_dir, events=events, seed=settings.data.seed)
    log.info("    %s", counts)

    log.info("3/6 produce clicks to Kafka, plus %d malformed events", len(MALFORMED))
    report = produce(settings, "click", data_dir)
    log.info("    %s", json.dumps(report.as_dict()))
    from confluent_kafka import Producer

    p = Producer(settings.kafka.client_config())
    for raw in MALFORMED:
        p.produce(settings.kafka.topics.clicks, raw, key=b"demo-bad")
    p.flush(10)

    log.info("4/6 submit the Flink job click_counts to %s", settings.flink.rest_url)
    job_id = flink.submit(settings, "click-counts")
    log.info("    JobID %s", job_id)

    log.info("5/6 wait until Redis holds every click")
    deadline = time.monotonic() + 180
    total = 0
    while time.monotonic() < deadline:
        keys = list(r.scan_iter(match=pattern, count=1000))
        pipe = r.pipeline()
        for k in keys:
            pipe.hget(k, "clicks")
        total = sum(int(v) for v in pipe.execute() if v)
        if total >= report.delivered:
            break
        time.sleep(1)
    dlq = [json.loads(m.value()) for m in read_topic(settings.kafka, settings.kafka.topics.clicks_dlq,
                                                      len(MALFORMED), group="recs-demo-reader")]
    job_metrics: dict[str, float] = {}
    for _ in range(30):  # the REST metrics lag the records by a reporting interval
        job_metrics = flink.metrics(settings, job_id)
        if job_metrics.get("parse_clicks.recs.valid_records", 0) >= report.delivered:
            break
        time.sleep(1)

    log.info("6/6 results")
    ok = total == report.delivered and len(dlq) == len(MALFORMED)
    print(json.dumps({
        "clicks_produced": report.delivered, "clicks_counted_in_redis": total,
        "users_in_redis": len(keys),
        "dead_letters": [{"field": d["field"], "reason": d["reason"]} for d in dlq],
        "job_metrics": job_metrics,
        "ok": ok,
    }, indent=2))
    flink.cancel(settings, job_id)
    if not ok:
        raise SystemExit("demo check failed: counts or dead letters do not match")
    print("demo ok. The stack is still running: `recs stack status`, `make down` to stop it.")


if __name__ == "__main__":
    main()
