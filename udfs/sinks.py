"""Sinks that write to the KV store from a Flink job.

``RedisCountWriter`` writes the absolute value from keyed state (never an increment), so a replay
after recovery rewrites the same values: at-least-once delivery into an idempotent write.
"""

from __future__ import annotations

from typing import Any

from pyflink.datastream import MapFunction

from conf.settings import KVSettings, RedisSettings


class RedisCountWriter(MapFunction):
    def __init__(self, redis: RedisSettings, kv: KVSettings) -> None:
        self.redis_settings = redis
        self.prefix = kv.key_prefix

    def open(self, runtime_context: Any) -> None:
        import redis

        s = self.redis_settings
        self.client = redis.Redis(host=s.host, port=s.port, db=s.db, socket_timeout=s.socket_timeout_s,
                                  password=s.password.get_secret_value() if s.password else None)

    def map(self, value: tuple[str, int, int]) -> str:
        user_id, clicks, last_ts = value
        self.client.hset(f"{self.prefix}clicks:{user_id}", mapping={"clicks": clicks, "last_ts": last_ts})
        return user_id

    def close(self) -> None:
        self.client.close()
