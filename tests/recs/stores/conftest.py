"""Store fixtures: a real redis-server on a free loopback port (one a session), a clean DB a test.

Aerospike: no server is installable here (DEPENDENCIES.md); tests run when AEROSPIKE_HOSTS
(comma-separated host:port) points at one, and are reported as skipped otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from conf import load_settings
from conf.settings import RedisSettings
from recs.stores.local_redis import LocalRedis


@pytest.fixture(scope="session")
def store_redis_settings() -> Iterator[RedisSettings]:
    with LocalRedis() as settings:
        yield settings


@pytest.fixture
def kv_settings():
    return load_settings().kv.model_copy(update={"key_prefix": "t:", "user_ttl_s": 3600})


@pytest.fixture
def aerospike_settings():
    hosts = os.environ.get("AEROSPIKE_HOSTS")
    if not hosts:
        pytest.skip("Aerospike tests need a server: set AEROSPIKE_HOSTS=host:3000 (none installable here)")
    return load_settings().aerospike.model_copy(update={"hosts": hosts.split(",")})
