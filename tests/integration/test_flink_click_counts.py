"""A PyFlink job submitted to the real standalone cluster with `flink run --python` reads clicks
through the official Kafka connector, writes per-user counts to Redis, and sends every malformed
record to clicks.dlq with its reason — without crashing (invariant 3)."""

import base64
import json

import pandas as pd
import pytest
from confluent_kafka import Producer

from recs.local import flink_jobs as flink
from recs.local.broker import read_topic
from recs.local.data.synth import SynthConfig, generate
from recs.local.produce import produce
from recs.stores.redis_store import redis_client

from .helpers import wait_for

FUTURE = 4_102_444_800_000  # 2100-01-01
MALFORMED = {
    # raw value -> (field, fragment of reason) expected in the dead letter
    b"not json at all": ("$", "not valid JSON"),
    b"[1, 2, 3]": ("$", "expected a JSON object"),
    b'{"user_id": 7, "item_id": "i1", "ts": 1790812800000, "event": "click"}': ("user_id", "expected a string"),
    b'{"item_id": "i1", "ts": 1790812800000, "event": "click"}': ("user_id", "missing required field"),
    b'{"user_id": "u1", "item_id": "i1", "ts": -5, "event": "click"}': ("ts", "is negative"),
    b'{"user_id": "u1", "item_id": "i1", "ts": %d, "event": "click"}' % FUTURE: ("ts", "in the future"),
    b'{"user_id": "u1", "item_id": "i1", "ts": 1790812800000, "event": "buy"}': ("event", "is not one of"),
    b'{"user_id": "%s", "item_id": "i1", "ts": 1790812800000, "event": "click"}' % (b"u" * 500): (
        "user_id", "500 characters"),
    b'{"user_id": "u1", "item_id": "i1", "ts": "yesterday", "event": "click"}': ("ts", "expected epoch"),
}


@pytest.fixture()
def job(stack_settings, flink_job):
    return flink_job(stack_settings, "click-counts")


def test_click_counts_job_counts_every_valid_click_and_dead_letters_the_rest(stack_settings, job, tmp_path):
    s = stack_settings
    generate(tmp_path, SynthConfig(events=4000, items=300, users=150, seed=11), progress=False)
    report = produce(s, "click", tmp_path, progress=False)
    p = Producer(s.kafka.client_config())
    for raw in MALFORMED:
        p.produce(s.kafka.topics.clicks, raw, key=b"bad")
    p.produce(s.kafka.topics.clicks, None, key=b"tombstone")  # a null value must not crash the job
    p.produce(s.kafka.topics.clicks, b"\xff\xfe\x00 binary", key=b"bad")  # not UTF-8: kept as base64
    assert p.flush(10) == 0

    expected = pd.read_parquet(tmp_path / "clicks.parquet").groupby("user_id").agg(
        clicks=("ts", "size"), last_ts=("ts", "max"))
    r = redis_client(s.redis)

    def counts():
        keys = r.keys("clicks:*")
        pipe = r.pipeline()
        for k in keys:
            pipe.hgetall(k)
        got = {k.decode()[7:]: (int(v[b"clicks"]), int(v[b"last_ts"])) for k, v in zip(keys, pipe.execute(),
                                                                                         strict=True)}
        return got if sum(c for c, _ in got.values()) >= report.delivered else None

    got = wait_for(counts, 120, "every click counted in Redis")
    assert got == {u: (row.clicks, row.last_ts) for u, row in expected.iterrows()}

    dead = [json.loads(m.value()) for m in read_topic(s.kafka, s.kafka.topics.clicks_dlq, len(MALFORMED) + 1)]
    assert len(dead) == len(MALFORMED) + 1  # the tombstone carries no event: counted, not dead-lettered
    by_raw = {d["raw"].encode(): d for d in dead if "raw" in d}
    for raw, (field, reason) in MALFORMED.items():
        assert by_raw[raw]["field"] == field and reason in by_raw[raw]["reason"], by_raw[raw]
    binary = [d for d in dead if "raw_b64" in d]
    assert [base64.b64decode(d["raw_b64"]) for d in binary] == [b"\xff\xfe\x00 binary"]
    assert binary[0]["reason"] == "not valid UTF-8 at byte 0"
    assert flink.job_status(s, job) == "RUNNING"  # bad input never crashed it

    m = wait_for(lambda: flink.metrics(s, job).get("parse_clicks.recs.valid_records") == report.delivered
                 and flink.metrics(s, job), 30, "job metrics")
    assert m["parse_clicks.recs.dead_letters.ts"] == 3
    assert m["parse_clicks.recs.dead_letters.user_id"] == 3
    assert m["parse_clicks.recs.dead_letters.record"] == 3
    assert m["parse_clicks.recs.null_values"] == 1  # the tombstone: counted, not silently skipped
