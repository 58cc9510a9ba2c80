"""click_counts: the foundation's end-to-end Flink job (Kafka → validate → keyed state → Redis).

    recs jobs submit click-counts          # on the cluster in settings (flink run --python)

    clicks ─► parse/validate ──(bad)────────────────────────────────► clicks.dlq
                 │                                                       ▲  {"stage", "field",
                 ▼                                                       │   "reason", "raw", ...}
           key_by(user_id) ─► count in keyed state ─► Redis ──(refused)──┘
                                                      clicks:{user} = {clicks, last_ts}

No record stops it: parsing is total (every value is a Click or a dead letter), the Redis sink
dead-letters what Redis refuses and retries what a wait fixes, and the restart strategy written by
``make_env`` is bounded (``recs jobs list`` shows restarts and the last exception).

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
from udfs.sinks import RedisCountWriter, RetryPolicy


def build_pipeline(raw: DataStream, settings: Settings) -> tuple[DataStream, DataStream]:
    """Wire the operators; returns (written user ids, dead letters of every step).

    ``raw`` carries Kafka values, ``Row(value=bytes | None)`` (bare bytes/None also do): None is a
    null value. Tests swap source and sinks."""
    topics = settings.kafka.topics
    parsed = (raw.process(ParseEvents("click", settings.contracts, topics.clicks))
                 .name("parse clicks").uid("parse-clicks"))
    # Click(user_id, item_id, ts, ...)
    parse_dead = parsed.get_side_output(DLQ_TAG)
    # '{"stage": "parse", "field": ..., "reason": ..., "raw": ...}'
    counts = (parsed.key_by(lambda c: c.user_id, key_type=Types.STRING())
                    .process(CountClicks(), output_type=Types.TUPLE([Types.STRING(), Types.LONG(), Types.LONG()]))
                    .name("count clicks per user").uid("count-clicks"))
    # (user_id, clicks, last_ts)
    writer = RedisCountWriter(settings.redis, settings.kv, RetryPolicy.from_settings(settings.flink), topics.clicks)
    written = (counts.process(writer, output_type=Types.STRING())
                     .name("write counts to redis").uid("redis-counts"))
    # user_id
    sink_dead = written.get_side_output(DLQ_TAG)
    # '{"stage": "sink:redis", "field": "$", "reason": ..., "raw": "{\"user_id\": ...}"}'
    return written, parse_dead.union(sink_dead)


def main() -> None:
    settings = load_settings()
    env = make_env(settings)
    raw = kafka_source(env, settings, settings.kafka.topics.clicks, group_id="click-counts",
                       name="kafka: clicks")
    # Row(value=bytes | None)
    _, dead = build_pipeline(raw, settings)
    dead.sink_to(kafka_string_sink(settings, settings.kafka.topics.clicks_dlq)) \
        .name("kafka: clicks.dlq").uid("sink-clicks-dlq")
    env.execute("click_counts")


if __name__ == "__main__":
    main()
