"""The freshness probe's pure parts and its KV poller, without services (the whole probe against a real
broker, Redis and backend: tests/integration/test_freshness_probe.py)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conf.settings import with_overrides
from recs.commands.probe import format_report
from recs.local.freshness import (
    FreshnessReport,
    Probe,
    ProbeError,
    Summary,
    _Pollers,
    nearest_rank,
    probe,
    probe_offsets,
    summarize,
)
from recs.local.pacing import BackgroundReport
from recs.local.processes import free_port
from recs.stores.base import UserRecord


def test_probes_are_evenly_spaced_inside_the_run():
    assert probe_offsets(60, 4) == [7.5, 22.5, 37.5, 52.5]
    offsets = probe_offsets(10, 7)
    assert len(offsets) == 7 and offsets[0] > 0 and offsets[-1] < 10
    assert np.allclose(np.diff(offsets), 10 / 7)


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 101)]                   # 1 .. 100
    assert (nearest_rank(values, 0.5), nearest_rank(values, 0.99), nearest_rank(values, 1.0)) == (50, 99, 100)
    assert nearest_rank([3.0, 7.0], 0.5) == 3.0 and nearest_rank([3.0, 7.0], 0.99) == 7.0
    x = np.sort(np.random.default_rng(0).exponential(size=37))
    for q in (0.5, 0.9, 0.99):
        assert nearest_rank(list(x), q) == np.percentile(x, q * 100, method="inverted_cdf")


def test_summary_in_ms_with_timeouts_counted_apart():
    s = summarize([0.030, 0.010, 0.020], timed_out=2)             # seconds, any order
    assert s == Summary(seen=3, timed_out=2, p50_ms=20.0, p99_ms=30.0, max_ms=30.0)
    assert summarize([], timed_out=5) == Summary(0, 5, None, None, None)


class SlowStore:
    """get_users answers a record with event_ts = the probe's ts only ``delay_s`` after ``visible_from``."""

    def __init__(self, delay_s: float, fail_first: int = 0) -> None:
        self.delay_s, self.fail_first, self.calls = delay_s, fail_first, 0
        self.visible_from: dict[str, tuple[float, int]] = {}

    def get_users(self, ids):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls <= self.fail_first:
            raise ConnectionError("redis down")
        now = time.perf_counter()
        return [UserRecord(u, np.zeros(2, np.float32), "v", self.visible_from[u][1])
                if u in self.visible_from and now >= self.visible_from[u][0] + self.delay_s else None for u in ids]


def test_kv_poller_times_each_probe_and_times_out_the_missing():
    store = SlowStore(delay_s=0.2, fail_first=3)
    pollers = _Pollers(store, None, poll_s=0.005, timeout_s=0.6).start()    # type: ignore[arg-type]
    try:
        now, ts = time.perf_counter(), int(time.time() * 1000)
        seen, missing, old = Probe("a", ts, now), Probe("b", ts, now), Probe("c", ts, now)
        store.visible_from["a"] = (now, ts)
        store.visible_from["c"] = (now, ts - 1)                 # an older click: does not count
        pollers.probes += [seen, missing, old]
        deadline = time.monotonic() + 5
        while not all(pollers.done(p) for p in pollers.probes):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        pollers.stop()
    assert 0.2 <= seen.kv_s < 0.6 and not seen.kv_timed_out
    assert missing.kv_s is None and missing.kv_timed_out and old.kv_s is None and old.kv_timed_out
    assert pollers.kv_errors == 3 and "redis down" in pollers.last_kv_error
    assert not pollers.errors
    assert not [t.name for t in threading.enumerate() if t.name.startswith("freshness-")]   # stop() joined them


def test_bad_arguments_and_an_absent_broker_are_clear_errors(test_settings):
    # fresh ports: the session's stack may run on test_settings' own ports when integration tests ran first
    s = with_overrides(test_settings, kafka={"client_timeout_s": 1.0, "bootstrap_servers": f"127.0.0.1:{free_port()}"},
                       redis={"port": free_port()})
    with pytest.raises(ValueError, match="probes >= 1"):
        probe(s, 100, 10, 0, None, ["i1"])
    with pytest.raises(ValueError, match="no items"):
        probe(s, 100, 10, 5, None, [])
    with pytest.raises(ProbeError, match=r"Kafka at 127\.0\.0\.1:\d+ does not answer .*recs stack up"):
        probe(s, 100, 10, 5, None, ["i1"])


def test_report_table_and_json_shape():
    bg = BackgroundReport(1000.0, sent=5000, delivered=5000, seconds=5.0, max_behind=3)
    r = FreshnessReport(10, 0, Summary(10, 0, 12.5, 40.0, 41.0), Summary(9, 1, 15.0, 50.0, 51.0), bg,
                        {"poll_ms": 5.0, "timeout_s": 30.0}, [])
    d = r.as_dict()
    assert d["kv"] == {"seen": 10, "timed_out": 0, "p50_ms": 12.5, "p99_ms": 40.0, "max_ms": 41.0}
    assert d["background"]["achieved_per_s"] == 1000.0 and d["serve"]["timed_out"] == 1 and d["series"] == []
    table = format_report(d).splitlines()
    assert table[1].split() == ["click", "->", "KV", "10", "0", "12.5", "40.0", "41.0"]
    assert table[2].split() == ["click", "->", "answer", "9", "1", "15.0", "50.0", "51.0"]
    assert "1000/s target, 1000.0/s achieved" in table[4]
