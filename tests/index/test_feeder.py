"""The feeder against a real broker (Tansu, started by the session): invariant 4 (a replica restored
from snapshot + replay answers exactly like one that never stopped) and invariant 6 (a removed
listing never comes back, not even from a late, older record)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from index import snapshot
from index.ann import ItemIndex
from index.feeder import Feeder
from recs.contracts import ItemEmbedding

pytestmark = pytest.mark.integration


def feed_until(feeder: Feeder, ends: dict[int, int], timeout_s: float = 60) -> None:
    """Poll until the feeder's own offsets reach ``ends`` (never the broker's high watermark)."""
    deadline = time.monotonic() + timeout_s
    while any(feeder.next_offset.get(p, 0) < o for p, o in ends.items()):
        assert time.monotonic() < deadline, f"feeder stuck at {feeder.next_offset}, want {ends}"
        feeder.poll_once(0.2)


def stream(d: int) -> tuple[list[tuple[str, bytes | None]], list[tuple[str, bytes | None]], set[str]]:
    """Two phases of item_embeddings records; returns them and the ids that end up removed."""
    rng = np.random.default_rng(0)

    def rec(i: int, ts: int, status: str = "active", seed: int = 0) -> tuple[str, bytes]:
        v = rng.standard_normal(d).astype(np.float32) if seed == 0 else \
            np.random.default_rng(seed).standard_normal(d).astype(np.float32)
        return f"item-{i}", ItemEmbedding(f"item-{i}", v, "v1", status, ts, f"c{i % 4}").encode()

    phase1 = [rec(i, 1_000 + i) for i in range(300)]
    phase1 += [rec(i, 5_000 + i) for i in range(0, 60)]                      # replacements
    phase1 += [(f"item-{i}", None) for i in range(60, 80)]                   # tombstones
    phase2 = [rec(i, 6_000 + i, status="removed") for i in range(80, 100)]   # removals with a time
    phase2 += [rec(i, 7_000 + i) for i in range(300, 400)]                   # new listings
    phase2 += [rec(i, 2_000 + i, seed=i + 1) for i in range(80, 100)]        # late, older: refused
    phase2 += [rec(i, 7_500 + i, status="inactive") for i in range(100, 110)]
    phase2 += [rec(i, 8_000 + i) for i in range(0, 30)]                      # more replacements
    return phase1, phase2, {f"item-{i}" for i in range(60, 100)}


@pytest.mark.parametrize(("kind", "partitions"), [("Flat", 2), ("HNSW", 1), ("IVFFlat", 2)])
def test_snapshot_plus_replay_answers_like_never_stopped(kafka_settings, make_index_settings, kafka_topic,
                                                         produce, unit_vectors, kind, partitions):
    s = make_index_settings(kind=kind, dim=16, ef_search=16, train_min=150, compaction_min_dead=10**6)
    topic = kafka_topic(partitions)
    phase1, phase2, removed = stream(16)
    ends1 = produce(topic, phase1)

    never_stopped = Feeder(ItemIndex(s), kafka_settings, s, topic=topic)
    restarted = Feeder(ItemIndex(s), kafka_settings, s, topic=topic)
    feed_until(restarted, ends1)
    path = restarted.save_snapshot()
    restarted.close()

    ends2 = produce(topic, phase2)
    ends = {p: max(ends1.get(p, 0), ends2.get(p, 0)) for p in set(ends1) | set(ends2)}
    index, offsets = snapshot.load(path, s)
    assert offsets[topic] == {p: o for p, o in ends1.items()}
    restored = Feeder(index, kafka_settings, s, offsets=offsets, topic=topic)
    feed_until(restored, ends)
    feed_until(never_stopped, ends)

    a, b = never_stopped.index, restored.index
    a.wait_compaction()
    b.wait_compaction()
    q = unit_vectors(60, seed=42)
    for kw in ({}, {"filters": {"category": ["c1"]}}, {"filters": {"status": ["inactive"]}}):
        assert b.search_raw(q, 10, **kw) == a.search_raw(q, 10, **kw)
    ids = [f"item-{i}" for i in range(400)]
    assert b.lookup(ids) == a.lookup(ids)
    assert len(a) == len(b) == 400 - len(removed)
    # invariant 6: removed listings are gone everywhere, late older records included
    for idx in (a, b):
        seen = {i for row, _ in idx.search_raw(q, 100, filters={"status": ["active", "inactive"]})
                for i in row}
        assert not seen & removed
        assert not any(idx.lookup(sorted(removed)))
    never_stopped.close()
    restored.close()


def test_feeder_skips_bad_and_foreign_records_and_reports_lag(kafka_settings, make_index_settings,
                                                              kafka_topic, produce):
    s = make_index_settings(kind="Flat", model_version="v1")
    topic = kafka_topic(1)
    good = ItemEmbedding("a", np.ones(16, np.float32), "v1", "active", 1).encode()
    other = ItemEmbedding("b", np.ones(16, np.float32), "v2", "active", 1).encode()
    short = ItemEmbedding("c", np.ones(4, np.float32), "v1", "active", 1).encode()
    ends = produce(topic, [("a", good), ("b", other), ("c", short), ("d", b"{not json")])
    feeder = Feeder(ItemIndex(s), kafka_settings, s, topic=topic)
    feed_until(feeder, ends)
    assert feeder.index.lookup(["a", "b", "c", "d"]) == [True, False, False, False]
    assert feeder.update_lag() == 0
    assert feeder.stats()["offsets"] == {f"{topic}/0": 4}
    feeder.close()
