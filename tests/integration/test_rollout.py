"""Rolling out a new model version side by side, end to end on the real cluster, broker and Redis,
two real ONNX artifacts and two real gRPC index services (docs/operations.md "Rolling out a new model
version").

The live lane (model v1) is filled by its jobs; then the new version (v2) is replayed into its own lane
with `recs replay listings|clicks --model-version v2`:
- v2 fills its own KV records (item vectors, users) and its own item_embeddings topic and index;
- every live key is byte-identical afterwards, and the live topic has not grown: untouched;
- the read path serves v1 until ``serve.model_version`` names v2, then v2: one setting;
- no request compares vectors of two versions: every answer's scores are the dot products of one
  version's user vector with the same version's item vectors (recomputed from KV), and a lane wired
  to the other version's index answers from a fallback, never with that index's scores.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from typer.testing import CliRunner

from conf.settings import for_version, with_overrides
from index.ann import ItemIndex
from index.feeder import Feeder
from models.artifact import load_artifact
from recs.cli import app
from recs.contracts import Click, Listing
from recs.local.broker import create_topics
from recs.local.poison import TS
from recs.local.replay import replay
from recs.serving import open_read_path
from recs.stores import open_store
from recs.stores.redis_store import redis_client

from .helpers import untrained_artifact, use_settings, wait_for

pytestmark = pytest.mark.integration

WORDS = ["red", "blue", "silk", "wool", "dress", "shirt", "oak", "table", "lamp", "steel", "cotton", "chair"]
NAME = "rollout"
F16 = 1e-3


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, stack_settings):
    return tuple(untrained_artifact(tmp_path_factory, stack_settings.model, f"rollout-v{seed}", WORDS, 300, seed=seed)
                 for seed in (1, 2))


def _produce(s, topic, records):
    p = Producer(s.kafka.client_config())
    for key, value in records:
        p.produce(topic, value, key=key)
    assert p.flush(30) == 0


def _end_offsets(s, topic):
    c = Consumer({**s.kafka.client_config(), "group.id": "rollout-check"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1] for p in sorted(parts)]
    finally:
        c.close()


def _feed(lane, expect):
    """An index for ``lane`` (accepting only its version) fed from its item_embeddings topic."""
    cfg = with_overrides(lane, index={"kind": "Flat", "dim": lane.model.dim, "port": 0, "metrics_port": 0}).index
    feeder = Feeder(ItemIndex(cfg), lane.kafka, cfg, topic=lane.kafka.topics.item_embeddings)
    try:
        wait_for(lambda: feeder.poll_once(0.2) == 0 and feeder.applied >= expect, 60,
                 f"{expect} records of {lane.kafka.topics.item_embeddings} in the index")
    finally:
        feeder.close()
    return cfg, feeder.index


def _live_keys(s, skip):
    """Every live key with its value (Redis DUMP), the new lane's keys left out."""
    r = redis_client(s.redis)
    try:
        return {k: r.dump(k) for k in r.scan_iter(f"{s.kv.key_prefix}*") if not k.startswith(skip.encode())}
    finally:
        r.close()


def _check_answers(read_path, lane, users, version):
    """Each user gets an answer from the index of ``version``, and its scores are that version's user
    vector against that version's item vectors: nothing of the other version took part."""
    store = open_store(lane)
    try:
        for u in users:
            ans = read_path.recommend(u, k=5)
            assert ans.source == "nrt" and ans.model_version == version, (u, ans)
            user = store.get_users([u])[0]
            items = store.get_items(ans.items)
            assert user.model_version == version and all(i.model_version == version for i in items)
            want = np.array([float(user.embedding @ i.embedding) for i in items])
            np.testing.assert_allclose(ans.scores, want, atol=1e-2)
    finally:
        store.close()


def test_a_new_model_version_fills_its_own_lane_and_one_setting_switches(
        flink_ready, artifacts, start_index_server, monkeypatch):
    a1, a2 = (load_artifact(a) for a in artifacts)
    v1, v2 = a1.model_version, a2.model_version
    assert v1 != v2
    topics = flink_ready.kafka.topics.model_dump()
    own = {"listings": NAME, "listings_dlq": f"{NAME}.dlq", "item_embeddings": f"{NAME}.emb",
           "clicks": f"{NAME}.clicks", "clicks_dlq": f"{NAME}.clicks.dlq"}
    topics.update(own, partitions={**topics["partitions"], NAME: 2, f"{NAME}.emb": 2, f"{NAME}.clicks": 2})
    s = with_overrides(flink_ready, kafka={"topics": topics}, kv={"key_prefix": f"{NAME}:"},
                       model={"artifact_dir": artifacts[0]})
    create_topics(s, list(own.values()))

    rng = random.Random(5)
    listings = [Listing(f"ro-{i}", " ".join(rng.choice(WORDS) for _ in range(4)), "active", TS + i,
                        category=f"c{i % 2}") for i in range(40)]
    listings += [Listing(f"ro-{i}", "gone", "removed", TS + 100 + i) for i in range(35, 40)]
    active = [f"ro-{i}" for i in range(35)]
    users = [f"ru-{u}" for u in range(12)]
    clicks = [Click(u, rng.choice(active), TS + 1_000 + 10 * n + j) for n, u in enumerate(users) for j in range(4)]
    _produce(s, s.kafka.topics.listings, [(e.item_id.encode(), e.to_json().encode()) for e in listings])
    _produce(s, s.kafka.topics.clicks, [(c.user_id.encode(), c.to_json().encode()) for c in clicks])

    # the live lane (v1), filled by its jobs
    assert replay(s, "listings").state == "FINISHED"
    assert replay(s, "clicks").state == "FINISHED"

    # the new version's lane: its artifact and index service; names derived from the version
    lanes = {v2: {"artifact_dir": str(artifacts[1]), "shards": [["127.0.0.1:1"]]}}
    s = with_overrides(s, versions=lanes)
    lane = for_version(s, v2)
    assert (lane.kv.key_prefix, lane.kafka.topics.item_embeddings) == (f"{NAME}:{v2}:", f"{NAME}.emb.{v2}")
    live_before = _live_keys(s, lane.kv.key_prefix)
    emb_before = _end_offsets(s, s.kafka.topics.item_embeddings)
    assert len(live_before) >= len(listings) - 5 + len(users)

    use_settings(monkeypatch, s)
    cli = CliRunner()
    for kind in ("listings", "clicks"):
        out = cli.invoke(app, ["replay", kind, "--model-version", v2])
        assert out.exit_code == 0 and "FINISHED" in out.output, out.output
    out = cli.invoke(app, ["replay", "clicks", "--model-version", "tt-unknown"])
    assert out.exit_code == 2 and "has no lane" in " ".join(out.output.replace("│", " ").split()), out.output

    # the live lane is untouched
    assert _live_keys(s, lane.kv.key_prefix) == live_before
    assert _end_offsets(s, s.kafka.topics.item_embeddings) == emb_before
    # the new lane holds v2 records of every active item and every user
    store = open_store(lane)
    try:
        items = store.get_items(active)
        assert all(i is not None and i.model_version == v2 for i in items)
        np.testing.assert_allclose(items[3].embedding, a2.embed_items([listings[3].text()])[0], atol=F16)
        assert all(u is not None and u.model_version == v2 for u in store.get_users(users))
    finally:
        store.close()

    # one index service per version, each fed from its own topic
    cfg1, index1 = _feed(s, len(listings))
    cfg2, index2 = _feed(lane, len(listings))
    _, addr1 = start_index_server(cfg1, index1)
    _, addr2 = start_index_server(cfg2, index2)
    assert index1.model_version == v1 and index2.model_version == v2
    s = with_overrides(s, index={"shards": [[addr1]]}, versions={v2: {**lanes[v2], "shards": [[addr2]]}})

    # before the switch the read path serves v1; the switch is serve.model_version alone
    _check_answers(open_read_path(s), s, users, v1)
    switched = with_overrides(s, serve={"model_version": v2})
    _check_answers(open_read_path(switched), for_version(switched, v2), users, v2)

    # a lane wired to the other version's index: refused by the index, answered from a fallback
    miswired = with_overrides(s, serve={"model_version": v2}, versions={v2: {**lanes[v2], "shards": [[addr1]]}})
    ans = open_read_path(miswired).recommend(users[0], k=5)
    assert ans.source != "nrt" and ans.scores is None and "model_version_mismatch" in ans.fallbacks, ans
