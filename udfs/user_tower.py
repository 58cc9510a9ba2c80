"""One batch of users' windows → user embeddings → KV user records. No Flink in here: the job's two
UDF paths (udfs/user_embedding_udfs.py) and the benchmark's plain consumer (bench/plain_consumer.py)
call the same code, so they run the same model and write the same records.

    writer = UserTowerWriter(settings, store, artifact)
    out = writer.process([UserWindow("u1", ["i3", "i9"], [1790812800000, 1790812801000]), ...])
    out.dead_letters          # per window: None, or the dead-letter JSON of a write the store refused
    out.stats                 # batch size, written, stale, unknown items, click→KV latencies

Per batch:
1. each window → last-N item ids in event-time order (udfs/last_n.py), newest event time;
2. the item-tower vectors of every distinct id in the batch: ``ItemVectorCache`` (bounded LRU with a
   TTL, so a changed listing reaches users within ``item_cache_ttl_s``), misses read from KV
   ``item:{id}`` in ONE ``get_items`` call. An item with no vector (never embedded, removed, or of
   another model_version: invariant 1) is skipped and counted, never replaced by a zero vector; a
   user none of whose clicks has a vector gets no record (the read path's fallbacks serve them);
3. one ONNX run for the whole batch (``Artifact.embed_users``);
4. one ``put_users`` call (pipelined): the store's event-time rule refuses an older record, so
   at-least-once delivery is idempotent. Transient errors are retried (udfs/sinks.py policy) and then
   fail the task (the restart replays from the checkpoint); a write the store refuses for good is
   retried alone, and if it fails again becomes a dead letter with stage ``sink:<backend>``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from recs.stores.base import EmbeddingStore, UserRecord
from udfs.last_n import last_n
from udfs.sinks import RetryPolicy, call_with_retry, put_or_dead_letter

if TYPE_CHECKING:
    from conf.settings import Settings
    from models.artifact import Artifact

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UserWindow:
    """What Flink state holds for one user at one click: item ids and event times, arrival order."""

    user_id: str
    items: Sequence[str]
    tss: Sequence[int]


@dataclass(slots=True)
class BatchStats:
    size: int = 0                # windows in the batch
    written: int = 0             # user records written
    stale: int = 0               # refused by the event-time rule (a newer record was stored)
    no_known_items: int = 0      # windows none of whose items has a vector: no record
    unknown_items: int = 0       # clicks skipped because their item has no vector
    dead_letters: int = 0        # writes the store refused for good
    latencies_ms: list[float] = field(default_factory=list)  # write time - newest click's event time


@dataclass(slots=True)
class BatchOutcome:
    dead_letters: list[str | None]
    stats: BatchStats


class ItemVectorCache:
    """Item-tower vectors by item id: a bounded LRU with a TTL in front of the KV store.

    Only vectors of ``model_version`` count; a tombstone, an absent key or another version is
    "unknown" (not cached: a listing embedded a second later is found on the next batch)."""

    def __init__(self, store: EmbeddingStore, model_version: str, size: int, ttl_s: float,
                 policy: RetryPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.model_version = model_version
        self.size = size
        self.ttl_s = ttl_s
        self.policy = policy
        self.clock = clock
        self._cache: OrderedDict[str, tuple[np.ndarray, float]] = OrderedDict()
        self.hits = self.misses = self.version_mismatches = 0

    def get(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Vectors of the ids that have one (others are absent from the result)."""
        now = self.clock()
        found: dict[str, np.ndarray] = {}
        missing: list[str] = []
        for iid in dict.fromkeys(item_ids):
            hit = self._cache.get(iid)
            if hit is not None and now - hit[1] < self.ttl_s:
                self._cache.move_to_end(iid)
                found[iid] = hit[0]
            else:
                missing.append(iid)
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            for iid, rec in zip(missing, call_with_retry(lambda: self.store.get_items(missing), self.policy),
                                strict=True):
                if rec is None or rec.embedding is None or rec.status != "active":
                    continue
                if rec.model_version != self.model_version:
                    self.version_mismatches += 1
                    continue
                found[iid] = rec.embedding
                if self.size:
                    self._cache[iid] = (rec.embedding, now)
                    self._cache.move_to_end(iid)
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return found


class UserTowerWriter:
    def __init__(self, settings: Settings, store: EmbeddingStore, artifact: Artifact,
                 source_topic: str | None = None, clock_ms: Callable[[], int] | None = None) -> None:
        ue = settings.user_embeddings
        self.store = store
        self.artifact = artifact
        self.max_len = artifact.max_len
        self.model_version = artifact.model_version
        self.policy = RetryPolicy.from_settings(settings.flink)
        self.sink = f"sink:{settings.kv.backend}"
        self.source_topic = source_topic or settings.kafka.topics.clicks
        self.items = ItemVectorCache(store, artifact.model_version, ue.item_cache_size, ue.item_cache_ttl_s,
                                     self.policy)
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))

    def process(self, windows: Sequence[UserWindow]) -> BatchOutcome:
        stats = BatchStats(size=len(windows))
        dead: list[str | None] = [None] * len(windows)
        if not windows:
            return BatchOutcome(dead, stats)
        lists = [last_n(list(w.items), [int(t) for t in w.tss], self.max_len) for w in windows]
        vectors = self.items.get([iid for ids, _ in lists for iid in ids])
        rows: list[int] = []
        knowns: list[list[np.ndarray]] = []
        for b, (ids, _) in enumerate(lists):
            known = [vectors[iid] for iid in ids if iid in vectors]
            stats.unknown_items += len(ids) - len(known)
            if not known:
                stats.no_known_items += 1
                continue
            knowns.append(known)
            rows.append(b)
        if not rows:
            return BatchOutcome(dead, stats)
        # as wide as the longest window of the batch (the artifact pads for a fixed-N graph)
        width = max(len(k) for k in knowns)
        item_vecs = np.zeros((len(rows), width, self.artifact.dim), np.float32)
        mask = np.zeros((len(rows), width), bool)
        for j, known in enumerate(knowns):
            item_vecs[j, width - len(known):] = known       # right-aligned, most recent last
            mask[j, width - len(known):] = True
        emb = self.artifact.embed_users(item_vecs, mask)
        now = self.clock_ms()
        records = [UserRecord(windows[b].user_id, emb[j], self.model_version, lists[b][1],
                              tuple(lists[b][0]), now) for j, b in enumerate(rows)]
        self._write(records, rows, dead, stats)
        return BatchOutcome(dead, stats)

    def _write(self, records: list[UserRecord], rows: list[int], dead: list[str | None],
               stats: BatchStats) -> None:
        results, refused = put_or_dead_letter(self.store.put_users, records, _describe, self.policy,
                                              source_topic=self.source_topic, sink=self.sink)
        now = self.clock_ms()
        for rec, b, ok, letter in zip(records, rows, results, refused, strict=True):
            if letter is not None:
                dead[b] = letter
                stats.dead_letters += 1
            elif ok:
                stats.written += 1
                stats.latencies_ms.append(float(now - rec.event_ts))
            else:
                stats.stale += 1


def _describe(rec: UserRecord) -> dict[str, object]:
    """What a dead letter carries of a user record (the embedding is recomputable, so not in it)."""
    return {"user_id": rec.user_id, "event_ts": rec.event_ts, "last_n": list(rec.last_n),
            "model_version": rec.model_version}

