"""Store fixtures. Redis: the session's real redis-server (``redis_settings``, tests/conftest.py).

Aerospike: no server is installable here (DEPENDENCIES.md); tests run when AEROSPIKE_HOSTS
(comma-separated host:port) points at one, and are reported as skipped otherwise.
"""

from __future__ import annotations

import os

import pytest

from conf import load_settings
from conf.settings import override


@pytest.fixture
def kv_settings():
    return override(load_settings().kv, {"key_prefix": "t:", "user_ttl_s": 3600})


@pytest.fixture
def aerospike_settings():
    hosts = os.environ.get("AEROSPIKE_HOSTS")
    if not hosts:
        pytest.skip("Aerospike tests need a server: set AEROSPIKE_HOSTS=host:3000 (none installable here)")
    return override(load_settings().aerospike, {"hosts": hosts.split(",")})
