"""The feeder: applies the item_embeddings topic to an ItemIndex, in order, in batches.

    feeder = Feeder(index, settings.kafka, settings.index, offsets=restored_offsets)
    feeder.run(stop_event)           # or feeder.poll_once() in tests

Topic contract (recs/contracts.py ``ItemEmbedding``): key = item_id; value = JSON with the vector,
model_version, status, category and ts; a null value (tombstone) or ``status == "removed"`` removes
the item. Records are applied in partition order with their event time (the index refuses records
older than what it holds, so a replay is idempotent and a late record cannot resurrect a removed
listing). Consecutive upserts (and consecutive deletes) of one poll are applied as one batch.

Positions: every replica reads the topic on its own (``assign``, no consumer group, no commits), from
the offsets in its snapshot or from the beginning. It keeps the next offset per partition itself and
writes it into each snapshot; it never treats the broker's high watermark as an end marker (Tansu's
is wrong, DEPENDENCIES.md). Lag = high watermark - next offset, clamped at 0: on Tansu it can read
up to one batch low, so it is a gauge for dashboards, not a correctness signal.

Skipped records are counted (``recs_index_feeder_records_total{outcome=...}``) and logged: malformed
(``bad_record``), another model version (``other_model_version``: invariant 1, a new model version
is a new index fed side by side), another shard (``other_shard``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from conf.settings import IndexSettings, KafkaSettings
from index import snapshot
from index.ann import ItemIndex
from index.client import shard_of
from index.metrics import FEEDER_RECORDS
from recs.contracts import ContractError, ItemEmbedding

log = logging.getLogger(__name__)

LAG_EVERY_S = 1.0


class Feeder:
    def __init__(self, index: ItemIndex, kafka: KafkaSettings, settings: IndexSettings,
                 offsets: snapshot.Offsets | None = None, topic: str | None = None,
                 consumer: Any = None) -> None:
        self.index = index
        self.settings = settings
        self.topic = topic or kafka.topics.item_embeddings
        self.next_offset: dict[int, int] = dict((offsets or {}).get(self.topic, {}))
        self.applied = 0
        self.lag = 0
        self.caught_up = threading.Event()
        self._last_lag_check = 0.0
        self._last_snapshot = time.monotonic()
        if consumer is None:
            from confluent_kafka import Consumer

            consumer = Consumer({**kafka.client_config(),
                                 "group.id": f"recs-index-{settings.replica_id}",
                                 "enable.auto.commit": False, "auto.offset.reset": "earliest",
                                 "enable.partition.eof": False})
        self.consumer = consumer
        self._assign(kafka.client_timeout_s)

    def _assign(self, timeout: float) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        md = self.consumer.list_topics(self.topic, timeout=timeout)
        meta = md.topics.get(self.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise RuntimeError(f"topic {self.topic!r} not found: {getattr(meta, 'error', None)}")
        self.partitions = sorted(meta.partitions)
        self.consumer.assign([TopicPartition(self.topic, p, self.next_offset.get(p, OFFSET_BEGINNING))
                              for p in self.partitions])
        log.info("feeding %s partitions %s from %s", self.topic, self.partitions,
                 {p: self.next_offset.get(p, "beginning") for p in self.partitions})

    @property
    def offsets(self) -> snapshot.Offsets:
        return {self.topic: dict(self.next_offset)}

    # ------------------------------------------------------------------------------ applying
    def poll_once(self, timeout_s: float | None = None) -> int:
        """Consume up to ``feeder_batch`` records and apply them; returns how many were read."""
        timeout = self.settings.feeder_poll_ms / 1000 if timeout_s is None else timeout_s
        msgs = self.consumer.consume(num_messages=self.settings.feeder_batch, timeout=timeout)
        run: list[tuple[str, Any]] = []      # consecutive records of one kind: ("u"|"d", record)
        n = 0
        for msg in msgs:
            if msg.error():
                log.warning("consumer error on %s: %s", self.topic, msg.error())
                continue
            n += 1
            op = self._decode(msg)
            if op is not None:
                if run and run[-1][0] != op[0]:
                    self._apply(run)
                    run = []
                run.append(op)
            self.next_offset[msg.partition()] = msg.offset() + 1
        if run:
            self._apply(run)
        self.applied += n
        if not msgs:
            self.caught_up.set()
        return n

    def _decode(self, msg: Any) -> tuple[str, Any] | None:
        key = msg.key()
        if not key:
            FEEDER_RECORDS.labels("bad_record").inc()
            log.warning("item_embeddings record without a key at %s/%d", msg.partition(), msg.offset())
            return None
        item_id = key.decode("utf-8", "replace")
        if self.settings.shard_count > 1 and shard_of(item_id, self.settings.shard_count) \
                != self.settings.shard_index:
            FEEDER_RECORDS.labels("other_shard").inc()
            return None
        try:
            rec = ItemEmbedding.decode(key, msg.value())
        except ContractError as e:
            FEEDER_RECORDS.labels("bad_record").inc()
            log.warning("bad item_embeddings record %s at %d/%d: %s", item_id, msg.partition(),
                        msg.offset(), e)
            return None
        if rec is None:                                          # tombstone: removed, time unknown
            _, ts = msg.timestamp()
            return ("d", (item_id, max(int(ts), 0)))
        if self.index.model_version and rec.model_version != self.index.model_version:
            FEEDER_RECORDS.labels("other_model_version").inc()
            return None
        if rec.embedding.shape != (self.index.dim,) or not np.isfinite(rec.embedding).all() \
                or not rec.embedding.any():
            FEEDER_RECORDS.labels("bad_record").inc()
            log.warning("item %s: vector of shape %s refused", item_id, rec.embedding.shape)
            return None
        if rec.status == "removed":
            return ("d", (item_id, rec.ts))
        return ("u", rec)

    def _apply(self, run: list[tuple[str, Any]]) -> None:
        if run[0][0] == "d":
            ids = [r[1][0] for r in run]
            self.index.delete(ids, event_ts=[r[1][1] for r in run])
            FEEDER_RECORDS.labels("deleted").inc(len(ids))
            return
        recs: list[ItemEmbedding] = [r[1] for r in run]
        self.index.upsert([r.item_id for r in recs], np.stack([r.embedding for r in recs]),
                          categories=[r.category for r in recs],
                          statuses=["active" if r.status == "active" else "inactive" for r in recs],
                          model_version=recs[0].model_version, event_ts=[r.ts for r in recs])
        FEEDER_RECORDS.labels("upserted").inc(len(recs))

    # ------------------------------------------------------------------------- housekeeping
    def update_lag(self) -> int:
        from confluent_kafka import TopicPartition

        lag = 0
        for p in self.partitions:
            _lo, hi = self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=2,
                                                          cached=False)
            if hi >= 0:
                lag += max(0, hi - self.next_offset.get(p, 0))
        self.lag = lag
        return lag

    def save_snapshot(self) -> Any:
        """Snapshot the index with the offsets applied so far (call between batches)."""
        self._last_snapshot = time.monotonic()
        return snapshot.save(self.index, self.settings.snapshot_dir / self.settings.replica_id,
                             self.offsets)

    def run(self, stop: threading.Event) -> None:
        """Feed until ``stop`` is set; periodic snapshots (not during a rebuild) and lag updates."""
        interval = self.settings.snapshot_interval_s
        while not stop.is_set():
            try:
                self.poll_once()
                now = time.monotonic()
                if now - self._last_lag_check > LAG_EVERY_S:
                    self._last_lag_check = now
                    self.update_lag()
                if interval and now - self._last_snapshot > interval and not self.index.compacting:
                    self.save_snapshot()
            except Exception:   # a feeder that dies silently would serve a stale index forever
                log.exception("feeder iteration failed; retrying in 1 s")
                stop.wait(1.0)

    def stats(self) -> dict[str, Any]:
        return {"feeder_lag": self.lag, "feeder_applied": self.applied,
                "offsets": {f"{self.topic}/{p}": o for p, o in self.next_offset.items()}}

    def close(self) -> None:
        self.consumer.close()
