"""Read-path fixtures: the session's real Redis, a real gRPC index server on loopback."""

from __future__ import annotations

import numpy as np
import pytest

from conf import load_settings
from conf.settings import override
from index.ann import ItemIndex
from index.client import GrpcIndexClient
from recs.stores.redis_store import RedisStore

D = 16


@pytest.fixture
def index_settings(tmp_path):
    return override(load_settings().index, {
        "kind": "HNSW", "dim": D, "hnsw_m": 8, "ef_construction": 40, "ef_search": 64, "port": 0,
        "metrics_port": 0, "snapshot_dir": tmp_path, "model_version": "", "client_deadline_ms": 2000})


@pytest.fixture
def catalogue():
    """200 items in 4 categories; returns (ids, vectors)."""
    x = np.random.default_rng(0).standard_normal((200, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return [f"item-{i}" for i in range(200)], x


@pytest.fixture
def catalogue_server(start_index_server, index_settings, catalogue):
    """A real gRPC index server holding the catalogue (model_version v1) -> "127.0.0.1:PORT"."""
    ids, x = catalogue
    idx = ItemIndex(index_settings)
    idx.upsert(ids, x, categories=[f"c{i % 4}" for i in range(200)], model_version="v1")
    return start_index_server(index_settings, idx)[1]


@pytest.fixture
def index_client(catalogue_server, index_settings):
    client = GrpcIndexClient(index_settings, [[catalogue_server]])
    yield client
    client.close()


@pytest.fixture
def store(redis_settings):
    kv = override(load_settings().kv, {"key_prefix": "serving-test:"})
    s = RedisStore(redis_settings, kv)
    s.client.flushdb()
    yield s
    s.close()


@pytest.fixture
def serve_settings():
    return override(load_settings().serve, {"phase": 3, "default_k": 10, "index_deadline_ms": 2000})
