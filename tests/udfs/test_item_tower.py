"""Pure logic of the item-index job, without Flink: one batch of listing events through
ItemTowerWriter against an in-memory store with the event-time rule."""

from __future__ import annotations

import json

import numpy as np

from conf import load_settings
from recs.contracts import ItemEmbedding, Listing
from recs.stores.base import ItemVector
from udfs.item_tower import ItemTowerWriter


class ItemStore:
    """Just enough of EmbeddingStore: items with the event-time rule (an equal event_ts replaces)."""

    def __init__(self, refuse=()):
        self.items: dict[str, ItemVector] = {}
        self.refuse = set(refuse)
        self.calls = 0

    def put_items(self, records):
        self.calls += 1
        if any(r.item_id in self.refuse for r in records):
            raise ValueError("WRONGTYPE Operation against a key holding the wrong kind of value")
        out = []
        for r in records:
            old = self.items.get(r.item_id)
            ok = old is None or r.event_ts >= old.event_ts
            if ok:
                self.items[r.item_id] = r
            out.append(ok)
        return out


class FakeArtifact:
    model_version, dim = "v1", 2

    def __init__(self):
        self.runs: list[list[str]] = []

    def embed_items(self, texts):
        self.runs.append(list(texts))
        return np.array([[len(t), 1] for t in texts], np.float32)   # a stand-in tower: text length


def test_one_tower_run_vectors_tombstones_event_time_and_dead_letters():
    store = ItemStore(refuse={"bad"})
    store.items["old"] = ItemVector("old", np.ones(2, np.float32), "v1", event_ts=500)   # newer than below
    art = FakeArtifact()
    writer = ItemTowerWriter(load_settings(), store, art, clock_ms=lambda: 1000)
    out = writer.process([
        Listing("a", "red dress", "active", 100, category="women"),
        Listing("b", "oak table", "active", 110),
        Listing("a", "red dress", "removed", 120),      # the same item, later: removed
        Listing("old", "lamp", "active", 400),          # older than the stored event: refused, still sent
        Listing("bad", "shirt", "active", 130),         # the store refuses it for good
    ])
    assert len(art.runs) == 1 and len(art.runs[0]) == 4            # one ONNX run, active listings only
    assert store.items["a"].embedding is None and store.items["a"].status == "removed"
    np.testing.assert_array_equal(store.items["b"].embedding, [len("oak table"), 1])
    assert store.items["old"].event_ts == 500
    keys = [(r[0], r[2]) if r else None for r in out.records]
    assert keys == [(b"a", 100), (b"b", 110), (b"a", 120), (b"old", 400), None]
    first = ItemEmbedding.decode(b"a", out.records[0][1])
    assert first is not None and (first.model_version, first.status, first.ts, first.category) == (
        "v1", "active", 100, "women")
    assert out.records[2][1] is None                               # removed: a tombstone on the topic
    s = out.stats
    assert (s.size, s.embedded, s.removed, s.written, s.stale, s.dead_letters) == (5, 4, 1, 3, 1, 1)
    assert s.latencies_ms == [900.0, 890.0, 880.0]
    dead = [json.loads(d) for d in out.dead_letters if d]
    assert len(dead) == 1 and dead[0]["stage"] == "sink:redis" and "WRONGTYPE" in dead[0]["reason"]
    assert json.loads(dead[0]["raw"])["item_id"] == "bad"


def test_replaying_a_batch_changes_nothing():
    store = ItemStore()
    writer = ItemTowerWriter(load_settings(), store, FakeArtifact(), clock_ms=lambda: 1000)
    batch = [Listing("a", "red dress", "active", 100), Listing("b", "oak table", "removed", 110)]
    first = writer.process(batch)
    before = dict(store.items)
    again = writer.process(batch)
    assert store.items.keys() == before.keys()
    assert all(store.items[k].event_ts == before[k].event_ts for k in before)
    assert again.records == first.records                          # the same records, sent again


def test_an_empty_batch_costs_nothing():
    store, art = ItemStore(), FakeArtifact()
    out = ItemTowerWriter(load_settings(), store, art).process([])
    assert (out.records, out.dead_letters, store.calls, art.runs) == ([], [], 0, [])
