"""Prometheus metrics of the index service (scraped from ``index.metrics_port``).

Request latency and outcome per RPC, and a collector that reads the index and feeder at scrape time
(size, tombstones, compactions, feeder lag), so nothing has to be updated on the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# 50 us .. 1 s: a search takes ~0.1-1 ms, a 512-item upsert tens of ms.
_BUCKETS = (5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.25, 0.5, 1.0)

REQUEST_SECONDS = Histogram("recs_index_request_seconds", "Index RPC latency, server side",
                            ["method"], buckets=_BUCKETS)
REQUESTS = Counter("recs_index_requests_total", "Index RPCs by outcome (gRPC status code)",
                   ["method", "code"])
CLIENT_RETRIES = Counter("recs_index_client_retries_total",
                         "Index client calls retried on UNAVAILABLE (next replica)", ["method"])
FEEDER_RECORDS = Counter("recs_index_feeder_records_total",
                         "item_embeddings records by what the feeder did with them", ["outcome"])


class IndexCollector(Collector):
    """Gauges read at scrape time from ``stats()`` callables (index stats + feeder lag)."""

    def __init__(self, replica: str, stats: Callable[[], dict[str, Any]]) -> None:
        self.replica = replica
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        s = self.stats()
        for name, key, doc in (("recs_index_items", "live", "Live items in the index"),
                               ("recs_index_rows", "rows", "Rows in the FAISS index, dead included"),
                               ("recs_index_tombstones", "tombstones", "Dead rows awaiting compaction"),
                               ("recs_index_feeder_lag", "feeder_lag",
                                "item_embeddings records not yet applied (all partitions)")):
            g = GaugeMetricFamily(name, doc, labels=["replica"])
            g.add_metric([self.replica], float(s.get(key, 0)))
            yield g
        c = CounterMetricFamily("recs_index_compactions", "Background rebuilds completed",
                                labels=["replica"])
        c.add_metric([self.replica], float(s.get("compactions", 0)))
        yield c


def registry_for(collector: IndexCollector) -> CollectorRegistry:
    """A registry with the process-wide RPC metrics plus this server's gauges."""
    from prometheus_client import REGISTRY

    reg = CollectorRegistry(auto_describe=True)
    reg.register(collector)

    class _Global(Collector):
        def collect(self) -> Iterator[Any]:
            yield from REGISTRY.collect()

    reg.register(_Global())
    return reg
