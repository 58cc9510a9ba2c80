"""Index fixtures: small settings factories (fast), and a real gRPC server on loopback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from conf import load_settings
from conf.settings import IndexSettings, override


@pytest.fixture(scope="session")
def base_index_settings() -> IndexSettings:
    return load_settings().index


@pytest.fixture
def make_index_settings(base_index_settings: IndexSettings, tmp_path) -> Callable[..., IndexSettings]:
    """Small, fast settings: d = 16, tiny IVF, compaction after 20 dead rows."""

    def make(**over: Any) -> IndexSettings:
        cfg: dict[str, Any] = dict(dim=16, hnsw_m=8, ef_construction=32, ef_search=32, ivf_nlist=8,
                                   nprobe=8, pq_m=8, pq_nbits=4, train_min=200, write_chunk=8,
                                   compaction_min_dead=20, compaction_dead_ratio=0.2,
                                   snapshot_dir=tmp_path / "snapshots", model_version="",
                                   port=0, metrics_port=0)
        cfg.update(over)
        return override(base_index_settings, cfg)

    return make


def unit_vectors(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(name="unit_vectors")
def _unit_vectors() -> Callable[..., np.ndarray]:
    return unit_vectors


@pytest.fixture
def index_server(start_index_server, make_index_settings):
    """``index_server(index=None, kind="Flat", **settings)`` -> (IndexServer, "127.0.0.1:PORT"),
    with the small settings above (tests/conftest.py's ``start_index_server`` starts it)."""
    return lambda index=None, **over: start_index_server(make_index_settings(**over), index)


@pytest.fixture
def kafka_topic(kafka_settings):
    """Factory: a fresh topic with ``partitions`` partitions on the session broker -> its name."""
    import uuid

    from confluent_kafka.admin import AdminClient, NewTopic

    def make(partitions: int) -> str:
        name = f"item_embeddings.test.{uuid.uuid4().hex[:8]}"
        admin = AdminClient(kafka_settings.client_config())
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(10)
        return name

    return make


@pytest.fixture
def produce(kafka_settings):
    """``produce(topic, [(key, value | None), ...])`` -> next offset per partition, from the
    delivery reports (never from the broker's high watermark)."""
    from confluent_kafka import Producer

    def send(topic: str, records: list[tuple[str, bytes | None]]) -> dict[int, int]:
        ends: dict[int, int] = {}

        def delivered(err, msg) -> None:
            assert err is None, err
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

        p = Producer({**kafka_settings.client_config(), "linger.ms": 5})
        for key, value in records:
            p.produce(topic, key=key.encode(), value=value, on_delivery=delivered)
            p.poll(0)
        assert p.flush(30) == 0
        return ends

    return send
