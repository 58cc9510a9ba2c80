"""Small helpers for integration tests: read a topic without consumer groups (Tansu assigns
groups slowly), wait for a condition with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from conf.settings import KafkaSettings


def read_topic(kafka: KafkaSettings, topic: str, expect: int, timeout_s: float = 30.0) -> list[Any]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**kafka.client_config(), "group.id": "test-reader", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(kafka.topics.partitions_of(topic))])
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < expect and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            out.append(m)
    c.close()
    return out


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")
