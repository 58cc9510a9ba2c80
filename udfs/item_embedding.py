"""The Python function of the item-index job (jobs/item_index.py): a vectorized Table API UDF.

``IndexListings`` gets an Arrow batch of raw listing values and, in one call:

1. parses each with the project's one parser (``recs.contracts.parse_or_error``): a rejected value
   becomes its dead-letter JSON (stage ``parse``, field, reason, the raw bytes), counted in
   ``recs.dead_letters.<field>``; a null value (tombstone) is counted in ``recs.null_values``;
2. hands the valid events, in order, to ``ItemTowerWriter`` (udfs/item_tower.py): one ONNX run over
   the active listings, one ``put_items`` call, the item_embeddings topic record of each event the
   store took.

It returns, per input row, ROW(item_id, value, ts, dead): ``item_id`` set when a record goes to the
item_embeddings topic (``value`` NULL = the listing is gone: a tombstone; ``ts`` its event time, which
becomes the Kafka record's timestamp, the time the feeders give a tombstone), ``dead`` set for a
dead letter, all NULL for a null value.

Metrics (group ``recs``): valid_records, null_values, dead_letters.<field>, items_embedded,
items_removed, item_records_written, stale_writes, sink_dead_letters, batches, batch_rows, and gauges
listing_to_kv_p50_ms / p99 / max over the writes of the last ``LATENCY_WINDOW_S`` seconds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pyflink.table import DataTypes
from pyflink.table.udf import ScalarFunction

from recs.contracts import ContractError, Listing, parse_or_error
from recs.dead_letters import dead_letter
from udfs.item_tower import ItemBatchStats, ItemTowerWriter
from udfs.latency import RecentLatencies
from udfs.parse import DeadLetterCounters

if TYPE_CHECKING:
    from conf.settings import Settings

log = logging.getLogger(__name__)
LATENCY_WINDOW_S = 10.0

INDEXED = DataTypes.ROW([DataTypes.FIELD("item_id", DataTypes.STRING()),
                         DataTypes.FIELD("value", DataTypes.BYTES()),
                         DataTypes.FIELD("ts", DataTypes.BIGINT()),
                         DataTypes.FIELD("dead", DataTypes.STRING())])


class IndexListings(ScalarFunction):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def is_deterministic(self) -> bool:
        return False    # it writes to the KV store: the planner must call it once a row, never twice

    def open(self, function_context: Any) -> None:
        from models.artifact import load_configured
        from recs.stores import open_store

        s = self.settings
        self.limits = s.contracts
        self.topic = s.kafka.topics.listings
        # The artifact is checked here (files, hashes, shapes, dim): a mismatch fails the job at start.
        self.artifact = load_configured(s.model, s.threads.flink_worker)
        self.store = open_store(s)
        self.writer = ItemTowerWriter(s, self.store, self.artifact)
        log.info("item tower %s on %s", self.artifact.model_version, self.artifact.providers)
        g = function_context.get_metric_group().add_group("recs")
        self._counters = {name: g.counter(name) for name in (
            "valid_records", "null_values", "items_embedded", "items_removed", "item_records_written",
            "stale_writes", "sink_dead_letters", "batches", "batch_rows")}
        self._dead = DeadLetterCounters(g)
        self._recent = RecentLatencies(LATENCY_WINDOW_S)
        self._recent.register(g, "listing_to_kv")

    def eval(self, values: pd.Series) -> pd.DataFrame:
        n = len(values)
        ids: list[str | None] = [None] * n
        out: list[bytes | None] = [None] * n
        tss: list[int] = [0] * n
        dead: list[str | None] = [None] * n
        listings: list[Listing] = []
        rows: list[int] = []
        nulls = 0
        for k, value in enumerate(values):
            if value is None:
                nulls += 1
                continue
            raw = bytes(value)
            record = parse_or_error("listing", raw, self.limits)
            if isinstance(record, Listing):
                listings.append(record)
                rows.append(k)
            else:
                assert isinstance(record, ContractError)
                self._dead.count(record)
                dead[k] = dead_letter(raw, record, self.topic)
        self._counters["valid_records"].inc(len(listings))
        self._counters["null_values"].inc(nulls)
        result = self.writer.process(listings)
        for j, k in enumerate(rows):
            dead[k] = result.dead_letters[j]
            sent = result.records[j]
            if sent is not None:
                ids[k], out[k], tss[k] = sent[0].decode("utf-8"), sent[1], sent[2]
        self._record(result.stats)
        return pd.DataFrame({"item_id": ids, "value": out, "ts": np.asarray(tss, np.int64), "dead": dead})

    def _record(self, stats: ItemBatchStats) -> None:
        c = self._counters
        c["items_embedded"].inc(stats.embedded)
        c["items_removed"].inc(stats.removed)
        c["item_records_written"].inc(stats.written)
        c["stale_writes"].inc(stats.stale)
        c["sink_dead_letters"].inc(stats.dead_letters)
        c["batches"].inc(1)
        c["batch_rows"].inc(stats.size)
        self._recent.add(stats.latencies_ms)

    def close(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()
