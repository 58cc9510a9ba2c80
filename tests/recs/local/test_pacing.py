"""The paced background producer, without Kafka: a fake producer records every call."""

from __future__ import annotations

import json
import threading
import time

import pytest

from conf import load_settings
from recs.contracts import parse_click
from recs.local.pacing import TICK_S, Background, due


class FakeProducer:
    """Records (perf_counter, topic, value, key); ``stall_at`` = (call number, seconds) blocks one call
    the way a starved thread or a full queue would; ``full_every`` raises BufferError on every n-th try."""

    def __init__(self, stall_at: tuple[int, float] | None = None, full_every: int = 0) -> None:
        self.calls: list[tuple[float, str, bytes, bytes | None]] = []
        self.stall_at, self.full_every, self.tries, self.polls = stall_at, full_every, 0, 0
        self.lock = threading.Lock()

    def produce(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.tries += 1
        if self.full_every and self.tries % self.full_every == 0:
            raise BufferError("Local: Queue full")
        if self.stall_at and len(self.calls) == self.stall_at[0]:
            time.sleep(self.stall_at[1])
        self.calls.append((time.perf_counter(), topic, value, key))

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        return 0


def run(producer: FakeProducer, seconds: float, rate: float, **kw) -> tuple:  # type: ignore[no-untyped-def]
    bg = Background(producer, "clicks", rate, kw.pop("items", ["i1", "i2", "i3"]), pool=kw.pop("pool", 1000),
                    user_prefix="bg-", **kw)
    t0 = time.perf_counter()
    bg.start()
    time.sleep(seconds)
    report = bg.stop()
    return report, t0


def test_due_follows_the_absolute_schedule():
    assert [due(t, 1000) for t in (0.0, 0.0009, 0.001, 0.0015, 1.0, 2.5)] == [0, 0, 1, 1, 1000, 2500]
    assert due(-1.0, 1000) == 0 and due(5.0, 0) == 0
    assert due(10.0, 333.3) == 3333


def test_steady_rate_in_small_batches():
    rate = 2000
    producer = FakeProducer()
    report, t0 = run(producer, 1.0, rate)
    assert report.sent == len(producer.calls)
    # every click sent by the end was due; none due more than a few ticks earlier is missing
    assert due(report.seconds - 10 * TICK_S, rate) <= report.sent <= due(report.seconds, rate)
    # no burst: at any send time, what was sent stays within a few ticks of the schedule
    for n, (t, *_) in enumerate(producer.calls, start=1):
        assert n <= due(t - t0, rate) + rate * 0.05, (n, t - t0)
    assert producer.polls >= report.sent / (rate * TICK_S) / 4    # polled between small batches
    assert report.achieved_per_s == pytest.approx(rate, rel=0.05)


def test_a_stall_is_caught_up_not_carried_as_drift():
    """One produce call blocks 0.3 s: the schedule is absolute, so what fell due meanwhile goes out
    at once and the total stays on schedule (sleeping 1/rate per click would end 600 short)."""
    rate, stall = 2000, 0.3
    producer = FakeProducer(stall_at=(200, stall))
    report, _ = run(producer, 1.2, rate)
    assert report.max_behind >= stall * rate * 0.9
    assert report.sent >= due(report.seconds - 10 * TICK_S, rate)


def test_a_full_queue_is_retried_and_nothing_is_lost():
    producer = FakeProducer(full_every=7)
    report, _ = run(producer, 0.5, 1000)
    assert report.sent == len(producer.calls) > 0
    assert producer.tries > len(producer.calls)


def test_clicks_pass_the_contract_keyed_by_user_and_reproducible():
    items = ["plain", 'quo"te', "ünï"]
    a, b = FakeProducer(), FakeProducer()
    run(a, 0.3, 1000, items=items, pool=50, seed=3)
    run(b, 0.3, 1000, items=items, pool=50, seed=3)
    limits = load_settings().contracts
    clicks = [parse_click(v, limits) for _, _, v, _ in a.calls]
    assert {c.item_id for c in clicks} == set(items)
    assert all(c.user_id.startswith("bg-") and int(c.user_id[3:]) < 50 for c in clicks)
    assert all(k == c.user_id.encode() for c, (_, _, _, k) in zip(clicks, a.calls, strict=True))
    n = min(len(a.calls), len(b.calls))
    strip = [[(d["user_id"], d["item_id"]) for d in (json.loads(v) for _, _, v, _ in p.calls[:n])] for p in (a, b)]
    assert strip[0] == strip[1]                    # same seed, same users and items


def test_keyed_by_item_when_the_topic_says_so():
    producer = FakeProducer()
    run(producer, 0.2, 500, items=["x1"], key_field="item_id")
    assert {k for *_, k in producer.calls} == {b"x1"}


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="rate > 0"):
        Background(FakeProducer(), "clicks", 0, ["i"], pool=10, user_prefix="bg-")
    with pytest.raises(ValueError, match="0 items"):
        Background(FakeProducer(), "clicks", 10, [], pool=10, user_prefix="bg-")
