"""Redis of the local stack (the ``redis-server`` placed by ``make setup``), and a throwaway one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from conf.settings import RedisSettings, Settings
from recs.local.processes import OneProcess, StackError, alive, ensure_free, free_port, is_loopback, spawn, wait_healthy


class Redis(OneProcess):
    name = "redis"
    managed: bool

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.host, self.port = settings.redis.host, settings.redis.port
        self.managed = is_loopback(self.host)
        self.dir = settings.stack.run_dir / "redis"
        self.binary = settings.stack.stack_dir / "bin" / "redis-server"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _client(self) -> Any:
        from recs.stores.redis_store import redis_client

        return redis_client(self.s.redis, timeout_s=1.0)

    def healthy(self) -> bool:
        try:
            return bool(self._client().ping())
        except Exception:  # noqa: BLE001 - "not healthy yet"
            return False

    def start(self) -> None:
        if not self.binary.exists():
            raise StackError(f"{self.binary} is missing: run `make setup` first")
        ensure_free(self.host, self.port, "RECS_REDIS__PORT")
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [str(self.binary), "--bind", self.host, "--port", str(self.port), "--dir", str(self.dir),
               "--save", "", "--appendonly", "no", "--protected-mode", "yes"]
        if self.s.redis.password:
            cmd += ["--requirepass", self.s.redis.password.get_secret_value()]
        proc = spawn(cmd, self.log_file, self.pid_file)
        wait_healthy("redis", self.healthy, self.s.stack.ready_timeout_s, alive(proc.pid), self.log_file)

    def detail(self) -> str:
        try:
            info = self._client().info("memory")
            return f"used_memory {info['used_memory_human']}"
        except Exception as e:  # noqa: BLE001
            return f"error: {e}"


@contextlib.contextmanager
def temporary_redis(settings: Settings) -> Iterator[RedisSettings]:
    """A throwaway redis-server on a free loopback port in a temporary run folder, for benchmarks
    and tools (tests use the session fixtures in tests/conftest.py). Gone when the block ends."""
    import tempfile

    from conf.settings import with_overrides

    with tempfile.TemporaryDirectory(prefix="recs-redis-") as run_dir:
        s = with_overrides(settings, redis={"host": "127.0.0.1", "port": free_port()},
                           stack={"run_dir": run_dir})
        redis = Redis(s)
        redis.start()
        try:
            yield s.redis
        finally:
            redis.stop()
