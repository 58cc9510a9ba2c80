"""item_index: new, changed and removed listings reach the item vectors within seconds.

    recs jobs submit item-index [--parallelism P] [--from-savepoint PATH]

    listings (Kafka, raw bytes, key item_id)
      └─ IndexListings (vectorized, one call per Arrow batch: udfs/item_embedding.py)
           parse with the contract parser ────────────────────────────────(bad)──────────► listings.dlq
           → one ONNX item-tower run over the active listings
           → KV item:{id}: the vector, or a tombstone when the listing is removed ──(refused)──► listings.dlq
           └─ item_embeddings (Kafka, key item_id): the vector, or a null value (removed)
                └─ the index feeders apply it (index/feeder.py), every replica on its own

The user-embedding job reads KV ``item:{id}`` (so a click on a listing that appeared after training
moves the user's embedding); the index service reads the topic (so the listing becomes searchable,
and a removed one disappears from every search).

No keyed state: every event carries the whole listing, and the KV store's event-time rule decides
(an older event never overwrites a newer one). Order per item is the topic's: listings and
item_embeddings are keyed by item_id, a source subtask reads whole partitions and the UDF keeps
their order, and the sink partitions by the same key.

Delivery: Kafka offsets are in the checkpoints; the KV writes, the topic and the dead letters are
at-least-once, and each is idempotent (the KV event-time rule; the index refuses records older than
what it holds), so after a failure the replayed listings rewrite the same state.
"""

from __future__ import annotations

from pyflink.table import DataTypes, Schema, StatementSet, StreamTableEnvironment, Table
from pyflink.table.udf import udf

from conf import Settings, load_settings
from jobs.flink_env import create_kafka_table, job_name, kafka_options, make_env, run_or_explain
from udfs.item_embedding import INDEXED, IndexListings

GROUP_ID = "item-index"


def table_config(settings: Settings) -> dict[str, str]:
    """Table API options of this job (all from settings)."""
    return {
        "pipeline.name": job_name(settings, "item_index"),          # what `recs jobs list` shows
        "table.exec.uid.generation": "ALWAYS",   # uids from the plan: a savepoint maps back after a restart
        "python.fn-execution.arrow.batch.size": str(settings.item_index.arrow_batch_size),
    }


def build(t_env: StreamTableEnvironment, settings: Settings, listings_table: str) -> tuple[Table, Table]:
    """Wire the job on a table of raw listing values (column ``value`` BYTES, NULL for a null value).
    Returns (item_embeddings records: item_id STRING, value BYTES, ts TIMESTAMP_LTZ(3); dead letters:
    dead STRING); the KV
    writes happen inside the UDF. Tests swap the source and sinks."""
    t_env.create_temporary_function("index_listings", udf(IndexListings(settings), result_type=INDEXED,
                                                          func_type="pandas"))
    indexed = t_env.sql_query(f"SELECT r.item_id AS item_id, r.`value` AS `value`, r.ts AS ts, r.dead AS dead "
                              f"FROM (SELECT index_listings(`value`) AS r FROM `{listings_table}`)")
    # One call per record: both branches below read the same DataStream (two SQL branches on the
    # query would each get their own copy of the Python call, and each would write to KV).
    schema = (Schema.new_builder()
              .column("item_id", DataTypes.STRING()).column("value", DataTypes.BYTES())
              .column("ts", DataTypes.BIGINT()).column("dead", DataTypes.STRING()).build())
    t_env.create_temporary_view("listings_indexed", t_env.from_data_stream(t_env.to_data_stream(indexed), schema))
    records = t_env.sql_query("SELECT item_id, `value`, TO_TIMESTAMP_LTZ(ts, 3) AS ts "
                              "FROM listings_indexed WHERE item_id IS NOT NULL")
    dead = t_env.sql_query("SELECT dead FROM listings_indexed WHERE dead IS NOT NULL")
    return records, dead


def statements(settings: Settings) -> StatementSet:
    """The whole job on the Kafka topics in settings, ready to execute (or explain)."""
    t_env = StreamTableEnvironment.create(make_env(settings))
    for key, value in table_config(settings).items():
        t_env.get_config().set(key, value)
    topics = settings.kafka.topics
    listings = create_kafka_table(t_env, "kafka: listings", "`value` BYTES",
                                  kafka_options(settings, topics.listings, GROUP_ID))
    # key = item_id (UTF-8), value = the ItemEmbedding JSON, or null: a tombstone, the listing is gone;
    # the record's timestamp is the event time (the feeders date a tombstone by it: a listing removed
    # and listed again must come back, which a wall-clock timestamp would forbid)
    embeddings = create_kafka_table(
        t_env, "kafka: item_embeddings",
        "`item_id` STRING, `value` BYTES, `ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp'",
        kafka_options(settings, topics.item_embeddings)
        | {"key.format": "raw", "key.fields": "item_id", "value.fields-include": "EXCEPT_KEY"})
    dlq = create_kafka_table(t_env, "kafka: listings.dlq", "`value` STRING",
                             kafka_options(settings, topics.listings_dlq))
    records, dead = build(t_env, settings, listings)
    out = t_env.create_statement_set()
    out.add_insert(embeddings, records)
    out.add_insert(dlq, dead)
    return out


def main() -> None:
    """``python jobs/item_index.py`` (what `recs jobs submit` runs); ``--explain`` prints the plan."""
    run_or_explain(statements(load_settings()))


if __name__ == "__main__":
    main()
