"""Publish events from Parquet files to Kafka at a target rate, keyed as the contracts say.

    recs produce clicks   --data data/synth --rate 1000        # 1,000 clicks/s
    recs produce listings --data data/synth --rate 0           # as fast as possible

Every record goes through the contract parser first (the same one the jobs use): a record that
breaks its contract is counted and skipped, never sent. ``retime`` rewrites event timestamps to the
send time, for freshness measurements on old data.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from tqdm import tqdm

from conf.settings import Settings
from recs.contracts import ContractError, parse_click, parse_listing
from recs.local.data.schema import CLICKS_FILE, LISTINGS_FILE

log = logging.getLogger(__name__)


@dataclass
class ProduceReport:
    topic: str
    sent: int = 0
    delivered: int = 0
    delivery_errors: int = 0
    rejected: int = 0
    rejected_by_field: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def achieved_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "sent": self.sent, "delivered": self.delivered,
                "delivery_errors": self.delivery_errors, "rejected": self.rejected,
                "rejected_by_field": self.rejected_by_field, "seconds": round(self.seconds, 3),
                "achieved_per_s": round(self.achieved_per_s, 1)}


def iter_rows(path: Path, limit: int | None = None, batch_size: int = 50_000) -> Iterator[dict[str, Any]]:
    """Rows of a Parquet file as dicts, batch by batch (constant memory)."""
    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            if limit is not None and n >= limit:
                return
            n += 1
            yield row


def row_to_event(kind: str, row: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in row.items() if v is not None}
    if kind == "listing" and isinstance(row.get("attributes"), str):
        row["attributes"] = json.loads(row["attributes"])
    return row


def produce(settings: Settings, kind: str, data_dir: Path, *, rate: float = 0.0, limit: int | None = None,
            retime: bool = False, topic: str | None = None, progress: bool = True) -> ProduceReport:
    """Send the events of data_dir/<clicks|listings>.parquet; rate 0 = as fast as possible."""
    from confluent_kafka import Producer

    topics = settings.kafka.topics
    topic = topic or (topics.clicks if kind == "click" else topics.listings)
    path = data_dir / (CLICKS_FILE if kind == "click" else LISTINGS_FILE)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `recs data synth` or `recs data movielens` first")
    parse = parse_click if kind == "click" else parse_listing
    key_field = topics.click_key if kind == "click" else topics.listing_key
    report = ProduceReport(topic)
    total = pq.ParquetFile(path).metadata.num_rows
    total = min(total, limit) if limit is not None else total

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is None:
            report.delivered += 1
        else:
            report.delivery_errors += 1
            if report.delivery_errors <= 5:
                log.error("delivery failed: %s", err)

    producer = Producer({**settings.kafka.client_config(), "linger.ms": settings.kafka.producer_linger_ms,
                         "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 500000, "enable.idempotence": False})
    start = time.perf_counter()
    with tqdm(total=total, unit="ev", desc=f"produce {topic}", disable=not progress) as bar:
        for i, row in enumerate(iter_rows(path, limit)):
            event = row_to_event(kind, row)
            if retime:
                event["ts"] = int(time.time() * 1000)
            try:
                record = parse(event, settings.contracts)
            except ContractError as e:
                report.rejected += 1
                report.rejected_by_field[e.field] = report.rejected_by_field.get(e.field, 0) + 1
                continue
            key = getattr(record, key_field) or ""
            while True:
                try:
                    producer.produce(topic, value=record.to_json().encode(), key=key.encode(),
                                     on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
            report.sent += 1
            if rate > 0:
                ahead = start + report.sent / rate - time.perf_counter()
                if ahead > 0:
                    producer.poll(0)
                    time.sleep(ahead)
            if (i + 1) % 1000 == 0:
                producer.poll(0)
                bar.update(i + 1 - bar.n)
        remaining = producer.flush(settings.kafka.client_timeout_s * 3)
        bar.n = total
        bar.refresh()
    report.seconds = time.perf_counter() - start
    if remaining:
        report.delivery_errors += remaining
        log.error("%d messages still undelivered after flush", remaining)
    return report
