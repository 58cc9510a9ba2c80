"""Produce synthetic events through the broker and read back exactly what was sent, keyed as the
contract says."""

import json

from recs.local.broker import create_topics, read_topic
from recs.local.data.synth import SynthConfig, generate
from recs.local.produce import iter_rows, produce


def test_produce_consume_round_trip(test_settings, kafka_settings, tmp_path):
    generate(tmp_path, SynthConfig(events=3000, items=200, users=100, seed=3), progress=False)
    assert create_topics(test_settings, ["roundtrip"]) == ["roundtrip"]
    assert create_topics(test_settings, ["roundtrip"]) == []  # creating twice is harmless
    report = produce(test_settings, "click", tmp_path, topic="roundtrip", progress=False)
    assert (report.sent, report.delivered, report.delivery_errors, report.rejected) == (3000, 3000, 0, 0)
    got = read_topic(kafka_settings, "roundtrip", 3000)
    sent = [{k: v for k, v in r.items() if v is not None} for r in iter_rows(tmp_path / "clicks.parquet")]
    received = [json.loads(m.value()) for m in got]
    assert sorted(received, key=json.dumps) == sorted(sent, key=json.dumps)
    assert all(m.key().decode() == json.loads(m.value())["user_id"] for m in got)


def test_listings_round_trip_and_rate_limit(test_settings, kafka_settings, tmp_path):
    generate(tmp_path, SynthConfig(events=1000, items=400, users=50, seed=4), progress=False)
    report = produce(test_settings, "listing", tmp_path, rate=500, limit=300, progress=False)
    assert report.delivered == 300
    assert 400 < report.achieved_per_s < 600  # the target rate is held
    got = read_topic(kafka_settings, kafka_settings.topics.listings, 300)
    assert len(got) == 300
    assert all(m.key().decode() == json.loads(m.value())["item_id"] for m in got)


def test_producer_counts_and_skips_records_that_break_the_contract(test_settings, kafka_settings, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recs.local.data.schema import CLICK_SCHEMA

    rows = [
        {"user_id": "u1", "item_id": "i1", "ts": 1790812800000, "event": "click", "session_id": None},
        {"user_id": "", "item_id": "i1", "ts": 1790812800000, "event": "click", "session_id": None},
        {"user_id": "u2", "item_id": "i2", "ts": -1, "event": "click", "session_id": None},
        {"user_id": "u3", "item_id": "i3", "ts": 1790812800000, "event": "view", "session_id": None},
        {"user_id": "u4", "item_id": "i4", "ts": 1790812800001, "event": "click", "session_id": "s"},
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=CLICK_SCHEMA), tmp_path / "clicks.parquet")
    create_topics(test_settings, ["bad-input"])
    report = produce(test_settings, "click", tmp_path, topic="bad-input", progress=False)
    assert (report.sent, report.delivered, report.rejected) == (2, 2, 3)
    assert report.rejected_by_field == {"user_id": 1, "ts": 1, "event": 1}
    got = read_topic(kafka_settings, "bad-input", 2)
    assert sorted(json.loads(m.value())["user_id"] for m in got) == ["u1", "u4"]
