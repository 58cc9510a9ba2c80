"""`recs replay clicks|listings`: the same Flink job, bounded over a range of its topic (backfill).

    ranges = plan(settings, topic, from_ms=None, to_ms=None)     # per partition: [start, stop) offsets
    result = replay(settings, "listings", from_ms=None, to_ms=None)   # submit, wait for FINISHED

The job is the streaming one (``clicks`` → jobs/user_embeddings.py, ``listings`` →
jobs/item_index.py) with ``flink.source_offsets`` / ``flink.source_stop_offsets`` set: it reads
exactly the range, writes through the same idempotent sinks (the KV event-time rule; the index
refuses older records) and ends. It commits no offsets, so the live job's group is untouched, and
the live job may run beside it. Replaying a range twice changes nothing.

Offsets of the range, per partition:
- start: the first offset whose record time is at or after ``from_ms`` (Kafka ``offsetsForTimes``),
  or the earliest retained offset;
- stop: the first offset at or after ``to_ms``, or, when no record is that late (``to_ms`` omitted:
  now), the partition's end. The end is read, not taken from the high watermark alone: Tansu
  reports the base offset of the last batch there (DEPENDENCIES.md), so the records from the high
  watermark on are read and the end is the offset after the last one.

Record times are the Kafka timestamps (the producer's create time), not the events' ``ts``.

Clicks: the user-embedding job rebuilds each user's last-N from the clicks it reads, so a click
replay should start at the beginning of the users' history (``--from`` omitted); a replay that
starts later computes records from part of the history, and the event-time rule lets such a record
replace a live one with the same newest click.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conf.settings import Settings, with_overrides

log = logging.getLogger(__name__)

JOBS = {"clicks": "user-embeddings", "listings": "item-index"}


class ReplayError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Range:
    partition: int
    start: int     # first offset read
    stop: int      # first offset not read

    @property
    def records(self) -> int:
        return max(self.stop - self.start, 0)


def offsets_spec(ranges: list[Range], which: str) -> str:
    """The Kafka connector's ``specific-offsets`` value for the starts or the stops of ``ranges``."""
    return ";".join(f"partition:{r.partition},offset:{getattr(r, which)}" for r in ranges)


def plan(settings: Settings, topic: str, from_ms: int | None = None, to_ms: int | None = None,
         consumer: Any = None) -> list[Range]:
    """[start, stop) offsets of every partition of ``topic`` for records timed in [from_ms, to_ms)."""
    from confluent_kafka import Consumer, TopicPartition

    timeout = settings.kafka.client_timeout_s
    c = consumer or Consumer({**settings.kafka.client_config(), "group.id": "recs-replay-plan",
                              "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=timeout).topics.get(topic)
        if md is None or md.error is not None or not md.partitions:
            raise ReplayError(f"topic {topic!r} does not exist on {settings.kafka.bootstrap_servers}")
        ranges = []
        for p in sorted(md.partitions):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)
            end = _end(c, topic, p, high, timeout)
            start = low if from_ms is None else _offset_at(c, topic, p, from_ms, end, timeout)
            stop = end if to_ms is None else _offset_at(c, topic, p, to_ms, end, timeout)
            ranges.append(Range(p, start, max(stop, start)))
        return ranges
    finally:
        if consumer is None:
            c.close()


def _offset_at(c: Any, topic: str, p: int, ms: int, end: int, timeout: float) -> int:
    from confluent_kafka import TopicPartition

    found = c.offsets_for_times([TopicPartition(topic, p, ms)], timeout=timeout)[0]
    return end if found.offset < 0 else min(found.offset, end)      # -1: no record that late


def _end(c: Any, topic: str, p: int, high: int, timeout: float) -> int:
    """The offset after the partition's last record: read from the high watermark on."""
    from confluent_kafka import TopicPartition

    c.assign([TopicPartition(topic, p, high)])
    end = high
    idle_until = time.monotonic() + 1.0
    deadline = time.monotonic() + timeout * 3
    while time.monotonic() < min(idle_until, deadline):
        msgs = c.consume(num_messages=500, timeout=0.2)
        for m in msgs:
            if m.error() is None:
                end = max(end, m.offset() + 1)
        if msgs:
            idle_until = time.monotonic() + 1.0
    c.unassign()
    return end


@dataclass(frozen=True, slots=True)
class ReplayResult:
    job_id: str
    ranges: list[Range]
    state: str
    seconds: float

    @property
    def records(self) -> int:
        return sum(r.records for r in self.ranges)


def replay(settings: Settings, kind: str, from_ms: int | None = None, to_ms: int | None = None,
           timeout_s: float = 3600, progress: Callable[[str], None] | None = None) -> ReplayResult:
    """Run the ``kind`` job (clicks | listings) over the range and wait until it has finished."""
    from recs.local import flink_jobs

    if kind not in JOBS:
        raise ReplayError(f"unknown topic kind {kind!r}; known: {sorted(JOBS)}")
    topic = settings.kafka.topics.clicks if kind == "clicks" else settings.kafka.topics.listings
    ranges = plan(settings, topic, from_ms, to_ms)
    say = progress or log.info
    total = sum(r.records for r in ranges)
    say(f"{topic}: {total:,} records in range ({', '.join(f'p{r.partition} {r.start}..{r.stop}' for r in ranges)})")
    started = time.monotonic()
    if total == 0:
        return ReplayResult("", ranges, "NOTHING_TO_DO", 0.0)
    s = with_overrides(settings, flink={"source_offsets": offsets_spec(ranges, "start"),
                                        "source_stop_offsets": offsets_spec(ranges, "stop"),
                                        "source_start_ms": 0})
    job = flink_jobs.submit(s, JOBS[kind])
    say(f"submitted {JOBS[kind]} over the range: job {job}")
    deadline = started + timeout_s
    state = flink_jobs.job_status(s, job)
    while state not in ("FINISHED", "FAILED", "CANCELED"):
        if time.monotonic() > deadline:
            flink_jobs.cancel(s, job)
            raise ReplayError(f"replay job {job} not finished after {timeout_s:.0f} s (cancelled)")
        time.sleep(1.0)
        state = flink_jobs.job_status(s, job)
    if state != "FINISHED":
        health = flink_jobs.job_health(s, job)
        raise ReplayError(f"replay job {job} ended {state}: {health.last_exception}")
    return ReplayResult(job, ranges, state, time.monotonic() - started)
