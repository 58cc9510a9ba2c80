"""The item-index job on the real standalone cluster, real broker and Redis, the real ONNX item tower.

- new, changed and removed listings mixed with poison records: the job stays RUNNING; KV
  ``item:{id}`` holds each item's newest event (the tower's vector, or a tombstone); the
  item_embeddings topic carries the same, and an index feeder fed from it can find every active
  listing and none of the removed ones; every bad record is in listings.dlq with its reason;
- a listing that appeared after training, then a click on it: the user-embedding job (running
  beside it) reads the vector this job wrote, and the user's record moves.

"Expected" here is independent of the job's code path: the newest event per item from the produced
log, the artifact's ``embed_items`` / ``embed_users`` called directly.
"""

from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest
from confluent_kafka import Producer

from conf.settings import with_overrides
from index.ann import ItemIndex
from index.feeder import Feeder
from models.artifact import load_artifact
from recs.contracts import Click, Listing
from recs.local import flink_jobs as flink
from recs.local.broker import create_topics, read_topic
from recs.local.poison import TS, interleave, listing_poison
from recs.stores import open_store

from .helpers import job_rows, untrained_artifact, wait_for

pytestmark = pytest.mark.integration

SEED = 12
F16 = 1e-3        # KV keeps vectors as float16 (kv.vector_dtype): compare within its rounding
WORDS = ["red", "blue", "silk", "wool", "dress", "shirt", "oak", "table", "lamp", "steel", "cotton", "chair"]


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory, stack_settings):
    return untrained_artifact(tmp_path_factory, stack_settings.model, "item-tower", WORDS, 400)


def _settings(stack_settings, artifact_dir, name):
    topics = stack_settings.kafka.topics.model_dump()
    own = {"listings": name, "listings_dlq": f"{name}.dlq", "item_embeddings": f"{name}.emb",
           "clicks": f"{name}.clicks", "clicks_dlq": f"{name}.clicks.dlq"}
    topics.update(own, partitions={**topics["partitions"], name: 2, f"{name}.dlq": 1, f"{name}.emb": 2,
                                   f"{name}.clicks": 2, f"{name}.clicks.dlq": 1})
    s = with_overrides(stack_settings, kafka={"topics": topics}, kv={"key_prefix": f"{name}:"},
                       model={"artifact_dir": artifact_dir})
    create_topics(s, list(own.values()))
    return s


def _title(rng):
    return " ".join(rng.choice(WORDS) for _ in range(4))


def _produce(s, topic, records):
    p = Producer(s.kafka.client_config())
    for key, value in records:
        p.produce(topic, value, key=key)
    assert p.flush(30) == 0


def _feed(s, model_version, expect):
    """An index fed from the job's item_embeddings topic, until it has read ``expect`` records."""
    cfg = with_overrides(s, index={"dim": s.model.dim, "kind": "Flat", "model_version": model_version}).index
    feeder = Feeder(ItemIndex(cfg), s.kafka, cfg, topic=s.kafka.topics.item_embeddings)
    read = 0
    deadline = time.monotonic() + 60
    try:
        while read < expect:
            assert time.monotonic() < deadline, f"the feeder read {read} of {expect} records ({feeder.next_offset})"
            read += feeder.poll_once(0.2)
    finally:
        feeder.close()
    return feeder.index


def test_listings_reach_kv_topic_and_index_poison_is_dead_lettered(stack_settings, artifact_dir, flink_job,
                                                                   monkeypatch):
    s = _settings(stack_settings, artifact_dir, "ix-poison")
    art = load_artifact(s.model.artifact_dir)
    rng = random.Random(SEED)
    # 120 new listings, 30 of them changed later, 20 removed later, one removed then listed again
    events = [Listing(f"it-{i}", _title(rng), "active", TS + i, category=f"c{i % 3}") for i in range(120)]
    events += [Listing(f"it-{i}", _title(rng), "active", TS + 1_000 + i, category=f"c{i % 3}") for i in range(30)]
    events += [Listing(f"it-{i}", "gone", "removed", TS + 2_000 + i) for i in range(100, 120)]
    events += [Listing("it-5", "gone", "removed", TS + 3_000), Listing("it-5", "back again", "active", TS + 3_001)]
    newest = {}
    for e in events:
        newest[e.item_id] = e
    corpus = listing_poison(s.contracts)
    values = list(interleave([e.to_json().encode() for e in events], [x.raw for x in corpus], SEED))
    job = flink_job(s, "item-index")
    # keyed by position, not item_id: an item's events cross partitions and arrive out of order, and
    # the event-time rules (KV, index) must still end at each item's newest event
    _produce(s, s.kafka.topics.listings, [(f"k{i}".encode(), v) for i, v in enumerate(values)]
             + [(b"tombstone", None)])

    store = open_store(s)
    try:
        def kv_done():
            got = store.get_items(list(newest))
            return got if all(g is not None and g.event_ts == newest[g.item_id].ts for g in got) else None

        try:
            got = wait_for(kv_done, 180, "every item's newest event in KV")
        except AssertionError as e:
            raise AssertionError(f"{e}; job: {flink.job_health(s, job)}") from None
    finally:
        store.close()
    active = [e for e in newest.values() if e.active]
    vectors = dict(zip([e.item_id for e in active], art.embed_items([e.text() for e in active]), strict=True))
    for g in got:
        if newest[g.item_id].active:
            assert g.status == "active" and g.model_version == art.model_version
            np.testing.assert_allclose(g.embedding, vectors[g.item_id], rtol=0, atol=F16)
        else:
            assert g.embedding is None and g.status == "removed"

    dead = [json.loads(m.value()) for m in read_topic(s.kafka, s.kafka.topics.listings_dlq, len(corpus), 60)]
    assert len(dead) == len(corpus)
    got_reasons = sorted((d["field"], d["stage"]) for d in dead)
    assert got_reasons == sorted((p.field, "parse") for p in corpus)
    for p in corpus:
        assert any(d["field"] == p.field and p.reason in d["reason"] for d in dead), p.name

    # the topic: one record per event, in order per item; an index fed from it finds what is active
    index = _feed(s, art.model_version, len(events))
    ids = sorted(newest)
    assert index.lookup(ids) == [newest[i].active for i in ids]
    q = np.stack([vectors["it-5"], vectors["it-40"]])
    top = index.search_raw(q, 5)
    assert "it-5" in top[0][0] and "it-40" in top[1][0]        # top 5: identical titles would tie

    assert flink.job_status(s, job) == "RUNNING"
    m = wait_for(lambda: (lambda m: m if m.get("valid_records", 0) >= len(events) else None)(
        {k.rsplit(".", 1)[-1] if ".dead_letters." not in k else "dead:" + k.rsplit(".", 1)[-1]: v
         for k, v in flink.metrics(s, job).items()}), 60, "the job's metrics")
    assert m["valid_records"] == len(events) and m["null_values"] == 1
    assert sum(v for k, v in m.items() if k.startswith("dead:") and k != "dead:unexpected") == len(corpus)
    assert m["items_removed"] == 21 and m["items_embedded"] == len(events) - 21

    # what `recs jobs list` shows of it
    a = wait_for(lambda: (lambda a: a if a.checkpoints >= 1 else None)(flink.job_activity(s, job)), 60,
                 "a completed checkpoint")
    assert a.uptime_s > 0 and a.last_checkpoint_bytes is not None and a.last_checkpoint_age_s is not None
    assert (a.records_in, a.dead_letters) == (len(events) + len(corpus) + 1, len(corpus))
    assert a.written == m["item_records_written"] > 0
    head, detail = job_rows(monkeypatch, s, job)
    assert "RUNNING" in head and "item_index" in head
    assert f"records in {len(events) + len(corpus) + 1:,}" in detail, detail
    assert f"dead letters {len(corpus):,}" in detail and "checkpoints " in detail


def _wait_jobs(s, jobs, check, timeout_s, what):
    try:
        return wait_for(check, timeout_s, what)
    except AssertionError as e:
        raise AssertionError(f"{e}; jobs: {[flink.job_health(s, j) for j in jobs]}") from None


def test_a_click_on_a_listing_newer_than_the_model_moves_the_user(stack_settings, artifact_dir, flink_job):
    s = _settings(stack_settings, artifact_dir, "ix-fresh")
    art = load_artifact(s.model.artifact_dir)
    jobs = [flink_job(s, "item-index"), flink_job(s, "user-embeddings")]
    now = TS + 10_000
    old, fresh = Listing("old-1", "oak table lamp", "active", now), Listing("fresh-1", "red silk dress", "active", now)
    _produce(s, s.kafka.topics.listings, [(b"old-1", old.to_json().encode())])
    store = open_store(s)
    try:
        wait = lambda check, timeout_s, what: _wait_jobs(s, jobs, check, timeout_s, what)  # noqa: E731
        old_item = wait(lambda: store.get_items(["old-1"])[0], 180, "the first listing's vector in KV")
        _produce(s, s.kafka.topics.clicks, [(b"u1", Click("u1", "old-1", now + 1).to_json().encode())])
        before = wait(lambda: store.get_users(["u1"])[0], 180, "u1's first record")
        # a listing that appeared after the model was trained, then a click on it
        _produce(s, s.kafka.topics.listings, [(b"fresh-1", fresh.to_json().encode())])
        item = wait(lambda: store.get_items(["fresh-1"])[0], 60, "the new listing's vector in KV")
        _produce(s, s.kafka.topics.clicks, [(b"u1", Click("u1", "fresh-1", now + 2).to_json().encode())])
        after = wait(lambda: (lambda u: u if u and u.event_ts == now + 2 else None)(store.get_users(["u1"])[0]),
                         60, "u1's record after the click on the new listing")
    finally:
        store.close()
    np.testing.assert_allclose(item.embedding, art.embed_items([fresh.text()])[0], rtol=0, atol=F16)
    assert before.last_n == ("old-1",) and after.last_n == ("old-1", "fresh-1")
    vecs = np.stack([old_item.embedding, item.embedding])       # what the user job read from KV
    L = art.max_len
    x = np.zeros((1, L, art.dim), np.float32)
    mask = np.zeros((1, L), bool)
    x[0, L - 2:], mask[0, L - 2:] = vecs, True
    np.testing.assert_allclose(after.embedding, art.embed_users(x, mask)[0], rtol=0, atol=F16)
    assert not np.allclose(after.embedding, before.embedding)
