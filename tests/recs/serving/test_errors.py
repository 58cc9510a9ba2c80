"""Server-side errors on the read path (issue 8): a malformed user record, the index rejecting or
not answering, the KV store timing out. Each is a counted, logged fallback and the HTTP answer is
200 with ``fallbacks`` saying why: never a 4xx that blames the caller, never a 5xx. Real Redis, real
gRPC index server (tests/recs/serving/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from conf.settings import override
from recs.serving.app import create_app
from recs.serving.read_path import ReadPath
from recs.stores.base import RecsList, UserRecord
from recs.stores.redis_store import RedisStore, redis_client


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def get(app: TestClient, user: str) -> dict:
    r = app.get(f"/recommendations/{user}", params={"k": 2})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("embedding", [
    np.zeros(16, np.float32),                         # zero vector: no direction
    np.ones(8, np.float32),                           # wrong dimension (index d = 16)
    np.full(16, np.nan, np.float32),                  # NaN
], ids=["zero", "wrong_dim", "nan"])
def test_bad_user_embedding_falls_back_to_the_offline_list(store, index_client, serve_settings,
                                                          embedding, caplog):
    """The index answers INVALID_ARGUMENT for the stored embedding: offline list, counted, logged."""
    assert store.put_users([UserRecord("bad", embedding, "v1", 1_000)]) == [True]
    store.put_recs([RecsList("bad", ("item-1", "item-2", "item-3"), "v1", 5)])
    before = counter("recs_serve_fallbacks_total", reason="index_invalid_argument")
    body = get(TestClient(create_app(ReadPath(store, index_client, serve_settings))), "bad")
    assert body["source"] == "offline" and [i["item_id"] for i in body["items"]] == ["item-1", "item-2"]
    assert body["fallbacks"] == ["index_invalid_argument"]
    assert counter("recs_serve_fallbacks_total", reason="index_invalid_argument") == before + 1
    assert "index_invalid_argument in search for user 'bad'" in caplog.text


def test_malformed_stored_record_falls_back(store, index_client, serve_settings, caplog):
    """A user hash whose bytes do not decode (7 bytes of float32) is a store error: trending."""
    store.client.hset(store.key("user", "torn"), mapping={"emb": b"\x00" * 7, "dtype": "float32",
                                                         "model_version": "v1", "event_ts": 1})
    store.put_trending(RecsList("", ("item-5",), "v1", 5))
    before = counter("recs_serve_errors_total", where="get_users")
    body = get(TestClient(create_app(ReadPath(store, index_client, serve_settings))), "torn")
    assert body["source"] == "trending" and [i["item_id"] for i in body["items"]] == ["item-5"]
    assert body["fallbacks"] == ["store_error", "no_offline_list"]
    assert counter("recs_serve_errors_total", where="get_users") == before + 1
    assert "MalformedRecord" in caplog.text and "serving-test:user:torn" in caplog.text


def test_store_timeout_is_a_counted_fallback(store, redis_settings, index_client, serve_settings, caplog):
    """Redis paused (every command blocks) past the client's socket timeout: 200, empty, counted."""
    slow = RedisStore(override(redis_settings, {"socket_timeout_s": 0.2}), store.kv)
    admin = redis_client(redis_settings, timeout_s=10)    # outlives the 3 s pause
    before = counter("recs_serve_errors_total", where="get_users")
    app = TestClient(create_app(ReadPath(slow, index_client, serve_settings)))
    admin.execute_command("CLIENT", "PAUSE", 3000, "ALL")
    try:
        body = get(app, "anyone")
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
        slow.close()
    assert body["items"] == [] and body["fallbacks"] == ["store_error", "no_trending"]
    assert counter("recs_serve_errors_total", where="get_users") == before + 1
    assert "store_error in get_users for user 'anyone'" in caplog.text and "TimeoutError" in caplog.text
