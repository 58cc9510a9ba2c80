"""Event time → KV write latency over the last seconds, as Flink gauges (p50 / p99 / max).

    recent = RecentLatencies(window_s=10.0)
    recent.register(metric_group, "click_to_kv")     # gauges click_to_kv_p50_ms, _p99_ms, _max_ms
    recent.add([120.0, 340.0])                       # after each batch: its writes' latencies
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


class RecentLatencies:
    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._recent: deque[tuple[float, float]] = deque()   # (monotonic time, latency ms)

    def add(self, latencies_ms: Iterable[float]) -> None:
        now = time.monotonic()
        self._recent.extend((now, ms) for ms in latencies_ms)
        while self._recent and self._recent[0][0] < now - self.window_s:
            self._recent.popleft()

    def percentile(self, q: float) -> int:
        """The q-th percentile of the window's latencies in ms; 0 when there are none."""
        cutoff = time.monotonic() - self.window_s
        recent = [ms for t, ms in list(self._recent) if t >= cutoff]
        return int(np.percentile(recent, q)) if recent else 0

    def register(self, group: Any, prefix: str, read: Callable[[float], int] | None = None) -> None:
        """Gauges ``<prefix>_p50_ms``, ``_p99_ms``, ``_max_ms``; ``read`` replaces ``percentile``
        (a UDF that must do its own work when the gauges are read)."""
        read = read or self.percentile
        for q, name in ((50, "p50"), (99, "p99"), (100, "max")):
            group.gauge(f"{prefix}_{name}_ms", lambda q=q: read(q))
