"""Clicks at a steady rate from a thread, paced by an absolute schedule: the background load of
``recs probe freshness`` (recs/local/freshness.py).

    bg = Background(producer, "clicks", rate=2000, items=["i1", "i2"], pool=100_000,
                    user_prefix="freshness-bg-").start()
    ...
    report = bg.stop()        # sent, delivered, seconds, achieved_per_s, max_behind

Click n is due at t0 + n / rate. Each wake-up sends every click due by now (at most MAX_BATCH, so
the producer is polled between bursts), then sleeps until the next click is due, but at least
TICK_S: batches of rate x TICK_S clicks, and a late wake-up (a busy core, a full queue) catches up
instead of drifting, as sleeping 1 / rate after each click would. Per click the Python work is two
array lookups, one f-string and one ``produce`` call; ids are JSON-encoded once.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

MAX_BATCH = 1000          # background clicks per wake-up at most: poll() runs between bursts of catching up
TICK_S = 0.002            # background wake-ups at most every 2 ms: batches of rate / 500 clicks
DRAW_BLOCK = 4096         # random users and items drawn this many at a time (>= MAX_BATCH)


class Producer(Protocol):
    """What Background needs of a confluent_kafka.Producer."""

    def produce(self, topic: str, value: bytes, key: bytes | None = ...) -> None: ...
    def poll(self, timeout: float = ...) -> int: ...


def due(elapsed_s: float, rate: float) -> int:
    """Clicks due ``elapsed_s`` into a schedule of ``rate`` per second (click n is due at n / rate)."""
    return max(0, math.floor(elapsed_s * rate)) if rate > 0 else 0


@dataclass
class BackgroundReport:
    target_per_s: float
    sent: int = 0
    delivered: int = 0
    delivery_errors: int = 0
    seconds: float = 0.0
    max_behind: int = 0           # most clicks due but not yet sent at a wake-up

    @property
    def achieved_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3), "achieved_per_s": round(self.achieved_per_s, 1)}


class Background:
    """Clicks at a steady rate from a thread: ``start()``, then ``stop()`` -> BackgroundReport.

    Each wake-up sends every click the schedule says is due (at most MAX_BATCH), polls the producer,
    then sleeps until the next click is due but at least TICK_S.
    """

    def __init__(self, producer: Producer, topic: str, rate: float, items: Sequence[str], *,
                 pool: int, user_prefix: str, key_field: str = "user_id", seed: int = 0) -> None:
        if rate <= 0 or not items or pool < 1:
            raise ValueError(f"background needs rate > 0, items and a user pool (rate {rate}, "
                             f"{len(items)} items, pool {pool})")
        self.producer, self.topic, self.rate, self.pool = producer, topic, rate, pool
        self.items = [json.dumps(i) for i in items]       # JSON-encoded once, not per click
        self.item_keys = [i.encode() for i in items]
        self.user_prefix, self.key_field = user_prefix, key_field
        self.rng = np.random.default_rng(seed)
        self._drawn: list[tuple[int, int]] = []    # (user, item) indices, drawn a block at a time
        self._next = 0                             # the first of them not sent yet
        self.report = BackgroundReport(rate)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="freshness-background", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> Background:
        self._thread.start()
        return self

    def stop(self) -> BackgroundReport:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.report

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:     # reported by stop(), never lost with the thread
            self.error = e

    def _loop(self) -> None:
        r, rate = self.report, self.rate
        t0 = time.perf_counter()
        while not self._stop.is_set():
            behind = due(time.perf_counter() - t0, rate) - r.sent
            r.max_behind = max(r.max_behind, behind)
            n = min(behind, MAX_BATCH)
            if n > 0:
                self._send(n)
                r.sent += n
            self.producer.poll(0)
            wake = max(t0 + (r.sent + 1) / rate, time.perf_counter() + TICK_S)
            self._stop.wait(max(0.0, wake - time.perf_counter()))
        r.seconds = time.perf_counter() - t0

    def _send(self, n: int) -> None:
        ts = int(time.time() * 1000)
        if self._next + n > len(self._drawn):   # whole blocks: the seed's sequence whatever the batch sizes
            self._drawn = self._drawn[self._next:] + list(zip(
                self.rng.integers(self.pool, size=DRAW_BLOCK).tolist(),
                self.rng.integers(len(self.items), size=DRAW_BLOCK).tolist(), strict=True))
            self._next = 0
        pairs = self._drawn[self._next:self._next + n]
        self._next += n
        by_user, by_item = self.key_field == "user_id", self.key_field == "item_id"
        for u, i in pairs:
            user = f"{self.user_prefix}{u}"
            value = f'{{"user_id": "{user}", "item_id": {self.items[i]}, "ts": {ts}, "event": "click"}}'.encode()
            key = user.encode() if by_user else self.item_keys[i] if by_item else None
            while True:
                try:
                    self.producer.produce(self.topic, value, key)
                    break
                except BufferError:    # the local queue is full: let deliveries drain
                    self.producer.poll(0.01)


