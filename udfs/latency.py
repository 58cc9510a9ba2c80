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
    """Latencies are kept a batch at a time (an array per ``add``), and the three gauges of one
    read share one sort: the gauges are read at the end of every bundle, and at 5,000 clicks/s a
    10 s window holds 50,000 values (a per-value list here cost 4 % of the job's Python worker)."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._recent: deque[tuple[float, np.ndarray]] = deque()   # (monotonic time, latencies ms)
        self._sorted: np.ndarray | None = None                    # the window, sorted; None = stale

    def _evict(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - self.window_s:
            self._recent.popleft()
            self._sorted = None

    def add(self, latencies_ms: Iterable[float]) -> None:
        now = time.monotonic()
        batch = np.fromiter(latencies_ms, np.float64)
        if len(batch):
            self._recent.append((now, batch))
            self._sorted = None
        self._evict(now)

    def percentile(self, q: float) -> int:
        """The q-th percentile of the window's latencies in ms; 0 when there are none."""
        self._evict(time.monotonic())
        if self._sorted is None:
            self._sorted = np.sort(np.concatenate([b for _, b in self._recent])) if self._recent else np.zeros(0)
        return int(np.percentile(self._sorted, q)) if len(self._sorted) else 0

    def register(self, group: Any, prefix: str, read: Callable[[float], int] | None = None) -> None:
        """Gauges ``<prefix>_p50_ms``, ``_p99_ms``, ``_max_ms``; ``read`` replaces ``percentile``
        (a UDF that must do its own work when the gauges are read)."""
        read = read or self.percentile
        for q, name in ((50, "p50"), (99, "p99"), (100, "max")):
            group.gauge(f"{prefix}_{name}_ms", lambda q=q: read(q))
