"""A stored record that does not decode is a ``MalformedRecord`` naming its key (real Redis)."""

from __future__ import annotations

import pytest

from recs.stores.base import MalformedRecord
from recs.stores.redis_store import RedisStore


@pytest.mark.parametrize("fields, why", [
    ({"emb": b"\x00" * 7, "dtype": "float32", "model_version": "v1"}, "ValueError"),   # torn bytes
    ({"emb": b"\x00" * 8, "dtype": "float32"}, "KeyError"),                           # no version
    ({"emb": b"\x00" * 8, "dtype": "float32", "model_version": "v1", "last_n": "[oops"},
     "JSONDecodeError"),
], ids=["torn", "missing_field", "bad_json"])
def test_malformed_user_record(redis_settings, kv_settings, fields, why):
    store = RedisStore(redis_settings, kv_settings)
    try:
        store.client.hset("t:user:bad", mapping={"event_ts": 1, **fields})
        with pytest.raises(MalformedRecord, match=f"t:user:bad: {why}"):
            store.get_users(["bad"])
        store.client.hset("t:trending", mapping={"event_ts": 1, "items": "not json", "model_version": "v1"})
        with pytest.raises(MalformedRecord, match="t:trending: JSONDecodeError"):
            store.get_trending()
    finally:
        store.client.delete("t:user:bad", "t:trending")
        store.close()
