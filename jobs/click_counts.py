"""click_counts: the foundation's end-to-end Flink job (Kafka → validate → keyed state → Redis).

    recs jobs submit click-counts          # on the cluster in settings (flink run --python)

    clicks ─► parse/validate ──(bad)──► clicks.dlq  {"reason", "field", "raw", ...}
                 │
                 ▼
           key_by(user_id) ─► count in keyed state ─► Redis  clicks:{user} = {clicks, last_ts}

It proves the plumbing every later job stands on (connector jars, Python workers, side outputs,
keyed state, a KV sink) and is replaced in the demo by user_embeddings when that job exists.
"""

from __future__ import annotations

from pyflink.common import Types
from pyflink.datastream import DataStream

from conf import Settings, load_settings
from jobs.flink_env import kafka_source, kafka_string_sink, make_env
from udfs.counts import CountClicks
from udfs.parse import DLQ_TAG, ParseEvents
from udfs.sinks import RedisCountWriter


def build_pipeline(raw: DataStream, settings: Settings) -> tuple[DataStream, DataStream]:
    """Wire the operators; returns (written user ids, dead letters). Tests swap source and sinks."""
    topics = settings.kafka.topics
    parsed = (raw.process(ParseEvents("click", settings.contracts, topics.clicks))
                 .name("parse clicks").uid("parse-clicks"))
    # Click(user_id, item_id, ts, ...)
    dead = parsed.get_side_output(DLQ_TAG)
    # '{"reason": ..., "field": ..., "raw": ...}'
    counts = (parsed.key_by(lambda c: c.user_id, key_type=Types.STRING())
                    .process(CountClicks(), output_type=Types.TUPLE([Types.STRING(), Types.LONG(), Types.LONG()]))
                    .name("count clicks per user").uid("count-clicks"))
    # (user_id, clicks, last_ts)
    written = (counts.map(RedisCountWriter(settings.redis, settings.kv), output_type=Types.STRING())
                     .name("write counts to redis").uid("redis-counts"))
    # user_id
    return written, dead


def main() -> None:
    settings = load_settings()
    env = make_env(settings)
    raw = kafka_source(env, settings, settings.kafka.topics.clicks, group_id="click-counts",
                       name="kafka: clicks").uid("source-clicks")
    _, dead = build_pipeline(raw, settings)
    dead.sink_to(kafka_string_sink(settings, settings.kafka.topics.clicks_dlq)) \
        .name("kafka: clicks.dlq").uid("sink-clicks-dlq")
    env.execute("click_counts")


if __name__ == "__main__":
    main()
