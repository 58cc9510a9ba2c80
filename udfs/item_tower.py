"""One batch of listing events → item-tower vectors → KV ``item:{id}`` and the ``item_embeddings``
topic. No Flink in here: the item-index job (jobs/item_index.py) calls it on each Arrow batch.

    writer = ItemTowerWriter(settings, store, artifact)
    out = writer.process([Listing("i1", "red dress", "active", 1790812800000), ...])
    out.records[k]        # (key, value, event ts) for the item_embeddings topic, value None = removed
                          # (tombstone); None for a dead letter
    out.dead_letters[k]   # None, or the dead-letter JSON of a write the store refused for good
    out.stats             # batch size, embedded, removed, written, stale, event→KV latencies

Per batch:
1. one ONNX run (``Artifact.embed_items``) over the texts of the active listings;
2. one ``put_items`` call with every event: an active listing writes its vector, a removed (or
   paused) one writes a tombstone (vector None) that the user-embedding job reads as "no vector";
   the store's event-time rule refuses an event older than the one it holds, so a replay or an
   at-least-once redelivery changes nothing (udfs/sinks.py ``put_or_dead_letter``: retries, dead
   letters);
3. for every event but a dead letter, the topic record the index feeders apply: the vector, or a
   null value when the listing is no longer active. An event the store refused as older is sent too:
   after a failover the replayed events meet the KV writes of the attempt that failed, whose topic
   records may never have left the sink; the feeders apply the same event-time rule, so an older
   record changes nothing there either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from recs.contracts import ItemEmbedding, Listing
from recs.stores.base import EmbeddingStore, ItemVector
from udfs.sinks import RetryPolicy, put_or_dead_letter

if TYPE_CHECKING:
    from conf.settings import Settings
    from models.artifact import Artifact


@dataclass(slots=True)
class ItemBatchStats:
    size: int = 0                # listing events in the batch
    embedded: int = 0            # active listings run through the item tower
    removed: int = 0             # events that made the item unavailable (tombstones written)
    written: int = 0             # KV writes the store took
    stale: int = 0               # refused by the event-time rule (a newer event was stored)
    dead_letters: int = 0        # writes the store refused for good
    latencies_ms: list[float] = field(default_factory=list)   # event time → KV write, per write


@dataclass(frozen=True, slots=True)
class ItemBatchOutcome:
    records: list[tuple[bytes, bytes | None, int] | None]
    dead_letters: list[str | None]
    stats: ItemBatchStats


class ItemTowerWriter:
    def __init__(self, settings: Settings, store: EmbeddingStore, artifact: Artifact,
                 source_topic: str | None = None, clock_ms: Callable[[], int] | None = None) -> None:
        self.store = store
        self.artifact = artifact
        self.model_version = artifact.model_version
        self.policy = RetryPolicy.from_settings(settings.flink)
        self.sink = f"sink:{settings.kv.backend}"
        self.source_topic = source_topic or settings.kafka.topics.listings
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))

    def process(self, listings: Sequence[Listing]) -> ItemBatchOutcome:
        stats = ItemBatchStats(size=len(listings))
        if not listings:
            return ItemBatchOutcome([], [], stats)
        active = [k for k, x in enumerate(listings) if x.active]
        vectors: list[np.ndarray | None] = [None] * len(listings)
        if active:
            embedded = self.artifact.embed_items([listings[k].text() for k in active])
            for j, k in enumerate(active):
                vectors[k] = embedded[j]
        stats.embedded = len(active)
        items = [ItemVector(x.item_id, vectors[k], self.model_version, x.ts, x.status, x.category)
                 for k, x in enumerate(listings)]
        results, dead = put_or_dead_letter(self.store.put_items, items, _describe, self.policy,
                                           source_topic=self.source_topic, sink=self.sink)
        now = self.clock_ms()
        records: list[tuple[bytes, bytes | None, int] | None] = [None] * len(listings)
        for k, (item, ok) in enumerate(zip(items, results, strict=True)):
            if dead[k] is not None:
                stats.dead_letters += 1
                continue
            records[k] = (item.item_id.encode("utf-8"), _topic_value(item), item.event_ts)
            if ok:
                stats.written += 1
                stats.removed += item.embedding is None
                stats.latencies_ms.append(float(now - item.event_ts))
            else:
                stats.stale += 1
        return ItemBatchOutcome(records, dead, stats)


def _topic_value(item: ItemVector) -> bytes | None:
    if item.embedding is None:
        return None                                   # tombstone: the feeders remove the item
    return ItemEmbedding(item.item_id, item.embedding, item.model_version, item.status, item.event_ts,
                         item.category).encode()


def _describe(item: ItemVector) -> dict[str, object]:
    """What a dead letter carries of an item write (the vector is recomputable, so not in it)."""
    return {"item_id": item.item_id, "event_ts": item.event_ts, "status": item.status,
            "model_version": item.model_version}
