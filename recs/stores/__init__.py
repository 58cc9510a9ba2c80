"""KV stores: the ``EmbeddingStore`` protocol (base.py) with Redis and Aerospike implementations.

    store = open_store(settings)          # kv.backend picks the implementation
    store.get_users(["u1", "u2"])         # -> [UserRecord | None, ...]
"""

from __future__ import annotations

from conf.settings import Settings
from recs.stores.base import EmbeddingStore, ItemVector, RecsList, UserRecord

__all__ = ["EmbeddingStore", "ItemVector", "RecsList", "UserRecord", "open_store"]


def open_store(settings: Settings) -> EmbeddingStore:
    if settings.kv.backend == "aerospike":
        from recs.stores.aerospike_store import AerospikeStore

        return AerospikeStore(settings.aerospike, settings.kv)
    from recs.stores.redis_store import RedisStore

    return RedisStore(settings.redis, settings.kv)
