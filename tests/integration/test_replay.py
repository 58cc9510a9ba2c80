"""`recs replay` on the real cluster and broker: the item-index job bounded over a range of the listings
topic. The range is found by record time and read to the partition's real end (not Tansu's high
watermark); replaying it twice changes nothing; a range that starts later reads only what follows."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from confluent_kafka import Producer

from conf.settings import with_overrides
from models.artifact import load_artifact
from recs.contracts import Listing
from recs.local import flink_jobs as flink
from recs.local.broker import create_topics, read_topic
from recs.local.poison import TS
from recs.local.replay import plan, replay
from recs.stores import open_store

from .helpers import untrained_artifact

pytestmark = pytest.mark.integration

WORDS = ["red", "blue", "silk", "wool", "dress", "shirt", "oak", "table", "lamp", "steel"]


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory, stack_settings):
    return untrained_artifact(tmp_path_factory, stack_settings.model, "replay-tower", WORDS, 300)


def _settings(stack_settings, artifact_dir, name, prefix):
    topics = stack_settings.kafka.topics.model_dump()
    topics.update(listings=name, listings_dlq=f"{name}.dlq", item_embeddings=f"{name}.emb",
                  partitions={**topics["partitions"], name: 2, f"{name}.dlq": 1, f"{name}.emb": 2})
    s = with_overrides(stack_settings, kafka={"topics": topics}, kv={"key_prefix": prefix},
                       model={"artifact_dir": artifact_dir})
    create_topics(s, [name, f"{name}.dlq", f"{name}.emb"])
    return s


def _produce(s, events):
    p = Producer(s.kafka.client_config())
    for e in events:
        p.produce(s.kafka.topics.listings, e.to_json().encode(), key=e.item_id.encode())
    assert p.flush(30) == 0


def _kv(s, ids):
    store = open_store(s)
    try:
        return {i: (v.event_ts, v.status, None if v.embedding is None else v.embedding.tobytes())
                for i, v in zip(ids, store.get_items(ids), strict=True) if v is not None}
    finally:
        store.close()


def test_replay_is_bounded_idempotent_and_ranged(flink_ready, artifact_dir):
    s = _settings(flink_ready, artifact_dir, "replay-listings", "replay-a:")
    art = load_artifact(s.model.artifact_dir)
    rng = random.Random(3)
    first = [Listing(f"r-{i}", " ".join(rng.choice(WORDS) for _ in range(4)), "active", TS + i) for i in range(60)]
    first += [Listing(f"r-{i}", "gone", "removed", TS + 100 + i) for i in range(10)]
    _produce(s, first)
    time.sleep(0.2)
    middle_ms = int(time.time() * 1000)
    time.sleep(0.2)
    second = [Listing(f"r2-{i}", " ".join(rng.choice(WORDS) for _ in range(4)), "active", TS + 200 + i)
              for i in range(30)]
    _produce(s, second)
    ids = sorted({e.item_id for e in first + second})

    # the range reaches the partition's real end: every record, none missed at the end
    assert sum(r.records for r in plan(s, s.kafka.topics.listings)) == len(first) + len(second)

    done = replay(s, "listings")
    assert done.state == "FINISHED" and done.records == len(first) + len(second)
    once = _kv(s, ids)
    newest = {e.item_id: e for e in first + second}
    assert sorted(once) == ids and all(once[i][0] == newest[i].ts for i in ids)
    assert all((once[i][2] is None) == (not newest[i].active) for i in ids)
    vec = np.frombuffer(once["r-20"][2], np.float32)      # as read back (KV keeps float16: 1e-3)
    np.testing.assert_allclose(vec, art.embed_items([newest["r-20"].text()])[0], atol=1e-3)
    emb = read_topic(s.kafka, s.kafka.topics.item_embeddings, len(first) + len(second), 30)
    assert len(emb) == len(first) + len(second)

    again = replay(s, "listings")                          # twice: nothing changes
    assert again.state == "FINISHED" and _kv(s, ids) == once

    # a range that starts later, into an empty key space: only the records from then on
    later = with_overrides(s, kv={"key_prefix": "replay-b:"})
    part = replay(later, "listings", from_ms=middle_ms)
    assert part.records == len(second)
    assert sorted(_kv(later, ids)) == sorted(e.item_id for e in second)
    assert flink.job_status(s, done.job_id) == "FINISHED"
