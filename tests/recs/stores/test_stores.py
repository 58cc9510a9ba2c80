"""Both EmbeddingStore implementations against a real server: round trips, float16/float32,
TTL, and the event-time rule (an older write never replaces a newer record), also under races."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conf.settings import override
from recs.stores.base import EmbeddingStore, ItemVector, RecsList, UserRecord
from recs.stores.redis_store import RedisStore


@pytest.fixture(params=["redis", "aerospike"])
def make_store(request, redis_settings, kv_settings):
    made: list[EmbeddingStore] = []

    def make(**kv_over) -> EmbeddingStore:
        kv = override(kv_settings, kv_over)
        if request.param == "redis":
            store = RedisStore(redis_settings, kv)
            store.client.flushdb()
        else:
            from recs.stores.aerospike_store import AerospikeStore

            aero = request.getfixturevalue("aerospike_settings")
            store = AerospikeStore(aero, kv)
            store.client.truncate(aero.namespace, aero.set_name, 0)
        made.append(store)
        return store

    yield make
    for s in made:
        s.close()


def vec(seed: int, d: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(d).astype(np.float32)


def user(uid: str, ts: int, seed: int = 0, version: str = "v1") -> UserRecord:
    return UserRecord(uid, vec(seed), version, ts, last_n=("a", "b"))


def test_protocol_is_implemented(make_store):
    assert isinstance(make_store(), EmbeddingStore)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_user_round_trip_in_both_encodings(make_store, dtype):
    store = make_store(embedding_dtype=dtype)
    assert store.put_users([user("u1", 100, seed=1), user("u2", 100, seed=2)]) == [True, True]
    got = store.get_users(["u1", "missing", "u2"])
    assert got[1] is None
    assert got[0].last_n == ("a", "b") and got[0].model_version == "v1" and got[0].event_ts == 100
    assert got[0].embedding.dtype == np.float32
    tol = 1e-3 if dtype == "float16" else 0
    np.testing.assert_allclose(got[2].embedding, vec(2), rtol=tol, atol=tol)


def test_older_event_never_replaces_newer(make_store):
    store = make_store()
    assert store.put_users([user("u", 200, seed=1)]) == [True]
    assert store.put_users([user("u", 100, seed=2), user("v", 50)]) == [False, True]
    np.testing.assert_allclose(store.get_users(["u"])[0].embedding, vec(1), atol=1e-2)
    assert store.put_users([user("u", 200, seed=1)]) == [True]       # a replay: idempotent
    assert store.put_users([user("u", 300, seed=3)]) == [True]
    assert store.get_users(["u"])[0].event_ts == 300


def test_racing_writers_leave_the_newest(make_store):
    store = make_store()
    stamps = list(range(1, 401))
    np.random.default_rng(0).shuffle(stamps)

    def write(part: list[int]) -> None:
        for ts in part:
            store.put_users([user("race", ts, seed=ts)])

    threads = [threading.Thread(target=write, args=(stamps[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = store.get_users(["race"])[0]
    assert final.event_ts == 400
    np.testing.assert_allclose(final.embedding, vec(400), atol=1e-3)


def test_removed_item_stays_removed_against_older_writes(make_store):
    store = make_store()
    assert store.put_items([ItemVector("i1", vec(1), "v1", 100, category="shoes"),
                            ItemVector("i2", vec(2), "v1", 100)]) == [True, True]
    assert store.put_items([ItemVector("i1", None, "v1", 200, status="removed")]) == [True]
    assert store.put_items([ItemVector("i1", vec(3), "v1", 150)]) == [False]
    i1, i2, none = store.get_items(["i1", "i2", "zz"])
    assert i1.embedding is None and i1.status == "removed" and none is None
    assert i2.category is None and i2.embedding.shape == (8,)


def test_lists_and_trending(make_store):
    store = make_store()
    assert store.get_trending() is None
    assert store.put_recs([RecsList("u1", ("a", "b"), "v1", 10, (0.9, 0.8))]) == [True]
    assert store.get_recs(["u1", "u2"]) == [RecsList("u1", ("a", "b"), "v1", 10, (0.9, 0.8)), None]
    assert store.put_trending(RecsList("", ("x", "y"), "", 5))
    assert not store.put_trending(RecsList("", ("old",), "", 4))
    assert store.get_trending().items == ("x", "y")


def test_empty_batches_cost_nothing(make_store):
    store = make_store()
    assert store.get_users([]) == [] and store.put_users([]) == [] and store.get_items([]) == []


def test_user_records_expire(redis_settings, kv_settings):
    store = RedisStore(redis_settings, override(kv_settings, {"user_ttl_s": 30}))
    store.put_users([user("ttl", 1)])
    store.put_items([ItemVector("ttl", vec(0), "v1", 1)])
    assert 0 < store.client.ttl(store.key("user", "ttl")) <= 30
    assert store.client.ttl(store.key("item", "ttl")) == -1     # items never expire


def test_redis_batches_span_script_calls_with_a_result_per_record(redis_settings, kv_settings, monkeypatch):
    """Records go to Redis several to a script call: the event-time rule and the results stay per
    record across call boundaries; a key of the wrong type fails the batch (the sink then writes
    the records one by one, udfs/sinks.py)."""
    import redis

    import recs.stores.redis_store as redis_store

    monkeypatch.setattr(redis_store, "RECORDS_PER_CALL", 2)
    store = RedisStore(redis_settings, kv_settings)
    store.client.flushdb()
    assert store.put_users([user("u2", 200), user("u4", 400)]) == [True, True]
    batch = [user("u1", 100), user("u2", 150), user("u3", 300), user("u4", 400, seed=4), user("u5", 1)]
    assert store.put_users(batch) == [True, False, True, True, True]   # u2 older: refused; equal ts replaces
    got = store.get_users(["u1", "u2", "u3", "u4", "u5"])
    assert [g.event_ts for g in got] == [100, 200, 300, 400, 1]
    np.testing.assert_allclose(got[3].embedding, vec(4), rtol=1e-3, atol=1e-3)   # the new one (float16)
    store.client.set(store.key("user", "bad"), "a string")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.put_users([user("u6", 1), user("bad", 1)])
    assert store.put_users([user("u6", 1)]) == [True]
    store.close()
