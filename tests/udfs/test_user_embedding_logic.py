"""Pure logic of the user-embedding job, without Flink: last-N order, the micro-batcher, the
trending top-k, and one batch through UserTowerWriter against an in-memory store."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque

import cloudpickle
import numpy as np
import pytest

from conf import load_settings
from recs.stores.base import ItemVector, UserRecord
from udfs.batcher import MicroBatcher
from udfs.last_n import last_n
from udfs.latency import RecentLatencies
from udfs.sinks import RetryPolicy
from udfs.user_embedding import EmbedUsersAsync, top_k_counts
from udfs.user_tower import BatchStats, ItemVectorCache, UserTowerWriter, UserWindow


def test_last_n_orders_by_event_time_keeps_repeats_and_arrival_order_on_ties():
    # arrival order: c(30) a(10) b(20) a(20) — a late click (a at 10) lands by its event time
    ids, newest = last_n(["c", "a", "b", "a"], [30, 10, 20, 20], 3)
    assert (ids, newest) == (["b", "a", "c"], 30)
    assert last_n(["x", "x", "x"], [1, 2, 3], 5) == (["x", "x", "x"], 3)   # repeats are positions
    with pytest.raises(ValueError):
        last_n([], [], 3)
    with pytest.raises(ValueError):
        last_n(["a"], [1, 2], 3)


def test_recent_latencies_percentiles_over_the_window_only(monkeypatch):
    import udfs.latency as latency

    now = [100.0]
    monkeypatch.setattr(latency.time, "monotonic", lambda: now[0])
    recent = RecentLatencies(window_s=10.0)
    assert recent.percentile(99) == 0                         # nothing yet
    recent.add([900.0] * 10)
    now[0] = 105.0
    recent.add(float(ms) for ms in range(1, 101))             # 1..100 ms
    assert (recent.percentile(100), recent.percentile(50)) == (900, 55)
    recent.add([])                                            # an empty batch changes nothing
    assert recent.percentile(100) == 900
    now[0] = 110.5                                            # the 900 ms batch leaves the window
    assert (recent.percentile(100), recent.percentile(50), recent.percentile(99)) == (100, 50, 99)
    recent.add([5000.0])                                      # a new batch is seen by the next read
    assert recent.percentile(100) == 5000


def test_top_k_counts_most_first_ties_by_id():
    assert top_k_counts(["b", "a", "c", "d"], [2, 2, 5, 1], 3) == [("c", 5), ("a", 2), ("b", 2)]


def test_micro_batcher_forms_batches_by_size_and_by_wait():
    calls: list[list[int]] = []

    def run(items):
        calls.append(list(items))
        return [x * 10 for x in items]

    async def main():
        b = MicroBatcher(run, max_batch=4, max_wait_ms=20)
        out = await asyncio.gather(*(b.submit(i) for i in range(10)))
        b.close()
        return out, b.batch_sizes

    out, sizes = asyncio.run(main())
    assert out == [i * 10 for i in range(10)]
    assert list(sizes) == [4, 4, 2]          # two full batches at once, the rest after max_wait_ms
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_micro_batcher_gives_every_caller_the_batch_error():
    def run(items):
        raise RuntimeError("model failed")

    async def main():
        b = MicroBatcher(run, max_batch=2, max_wait_ms=1)
        results = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
        b.close()
        return results

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(main()))


class MemoryStore:
    """Just enough of EmbeddingStore for one batch: items by id, users with the event-time rule."""

    def __init__(self, items, refuse=()):
        self.items = items
        self.users: dict[str, UserRecord] = {}
        self.refuse = set(refuse)
        self.item_reads = 0

    def get_items(self, ids):
        self.item_reads += 1
        return [self.items.get(i) for i in ids]

    def put_users(self, records):
        if any(r.user_id in self.refuse for r in records):
            raise ValueError("WRONGTYPE Operation against a key holding the wrong kind of value")
        out = []
        for r in records:
            old = self.users.get(r.user_id)
            ok = old is None or r.event_ts >= old.event_ts
            if ok:
                self.users[r.user_id] = r
            out.append(ok)
        return out


class FakeArtifact:
    model_version, dim, max_len = "v1", 4, 3

    def embed_users(self, vecs, mask):
        # as wide as the batch's longest known window (at most max_len)
        assert vecs.shape[1] == mask.sum(axis=1).max() <= 3 and vecs.shape[2] == 4 and mask.any(axis=1).all()
        return (vecs * mask[..., None]).sum(1)      # a stand-in tower: the masked sum


def _vec(x):
    return np.array([x, 0, 0, 0], np.float32)


def test_user_tower_writer_skips_unknown_items_refuses_older_and_dead_letters_refused_writes():
    items = {f"i{k}": ItemVector(f"i{k}", _vec(k), "v1", 1) for k in range(1, 5)}
    items["old"] = ItemVector("old", _vec(100), "v0", 1)             # another model_version: unknown
    items["gone"] = ItemVector("gone", None, "v1", 1, status="removed")
    store = MemoryStore(items, refuse={"bad"})
    store.users["u2"] = UserRecord("u2", _vec(0), "v1", event_ts=999)  # newer than the batch
    writer = UserTowerWriter(load_settings(), store, FakeArtifact(), clock_ms=lambda: 1000)
    out = writer.process([
        UserWindow("u1", ["i1", "old", "i2", "gone", "i3"], [1, 2, 3, 4, 5]),
        UserWindow("u2", ["i4"], [7]),
        UserWindow("u3", ["old", "gone"], [8, 9]),
        UserWindow("bad", ["i1"], [10]),
    ])
    u1 = store.users["u1"]
    # last 3 by event time: i2, gone, i3 -> known vectors i2, i3 only
    assert u1.last_n == ("i2", "gone", "i3") and u1.event_ts == 5
    np.testing.assert_array_equal(u1.embedding, _vec(5))
    assert store.users["u2"].event_ts == 999                          # older write refused
    assert "u3" not in store.users and "bad" not in store.users
    s = out.stats
    assert (s.size, s.written, s.stale, s.no_known_items, s.dead_letters) == (4, 1, 1, 1, 1)
    assert s.unknown_items == 1 + 2 and s.latencies_ms == [995.0]
    dead = [json.loads(d) for d in out.dead_letters if d]
    assert len(dead) == 1 and dead[0]["stage"] == "sink:redis" and "WRONGTYPE" in dead[0]["reason"]
    assert json.loads(dead[0]["raw"])["user_id"] == "bad"


def test_item_vector_cache_is_bounded_and_expires():
    items = {f"i{k}": ItemVector(f"i{k}", _vec(k), "v1", 1) for k in range(5)}
    store = MemoryStore(items)
    now = [0.0]
    cache = ItemVectorCache(store, "v1", size=2, ttl_s=10, policy=RetryPolicy(0, 0, 0), clock=lambda: now[0])
    assert set(cache.get(["i0", "i1", "nope"])) == {"i0", "i1"}
    cache.get(["i0", "i1"])
    assert store.item_reads == 1                     # both cached
    cache.get(["i2"])                                # evicts the least recently used (i0)
    cache.get(["i1"])
    assert store.item_reads == 2
    cache.get(["i0"])
    assert store.item_reads == 3
    now[0] = 11.0                                    # past the TTL: read again
    cache.get(["i0"])
    assert store.item_reads == 4


def _async_operation(fn):
    """PyFlink's own operator for an async scalar UDF (pyflink 2.3.0), built without a proto: its
    queue, its emitter and event-loop threads, and the eval call it generates for
    ``fn(user_id, items, tss)``. Returns it and the list its results are emitted to."""
    from pyflink.fn_execution.datastream.process.async_function.operation import AsyncFunctionRunner, Emitter
    from pyflink.fn_execution.datastream.process.async_function.queue import OrderedStreamElementQueue
    from pyflink.fn_execution.table.async_function.operations import AsyncScalarFunctionOperation

    op = object.__new__(AsyncScalarFunctionOperation)
    op._exception, op._timeout, op._retry_enabled, op.user_defined_funcs = None, 0.0, False, []
    op._queue = OrderedStreamElementQueue(1000, op._raise_exception_if_exists)
    op._eval_func = lambda value: fn.eval(value[0], value[1], value[2])
    op._async_function_runner = AsyncFunctionRunner()
    op._async_function_runner.daemon = True
    op._async_function_runner.start()
    op._async_function_runner.wait_ready()
    emitted: list[object] = []
    output = type("Output", (), {"process_outputs": lambda self, _, results: emitted.extend(results)})()
    op._emitter = Emitter(op._mark_exception, output, op._queue)
    op._emitter.daemon = True
    op._emitter.start()
    return op, emitted


def test_async_udf_gets_every_row_although_the_decoder_reuses_one_row_list():
    # loaded as the Python worker loads it (unpickled), which makes the operator copy each row
    fn = cloudpickle.loads(cloudpickle.dumps(EmbedUsersAsync(load_settings())))
    batches: list[list[UserWindow]] = []

    def run(windows):
        batches.append(list(windows))
        return [None] * len(windows)

    fn.batcher = MicroBatcher(run, max_batch=100, max_wait_ms=5)
    op, emitted = _async_operation(fn)
    loop = op._async_function_runner._loop
    queued = threading.Event()
    loop.call_soon_threadsafe(queued.wait, 10)     # the event loop is busy until every row is queued
    row: list[object] = [None, None, None]         # FlattenRowCoderImpl: one list, refilled per row
    for k in range(6):
        row[0], row[1], row[2] = f"u{k}", [f"i{k}"], [k]
        op.process_element(row)
    queued.set()
    op._wait_for_in_flight_inputs_finished()
    op.close()
    fn.batcher.close()
    assert emitted == [None] * 6
    assert batches == [[UserWindow(f"u{k}", [f"i{k}"], [k]) for k in range(6)]]   # one batch, each row once


class _ThreadCounter:
    def __init__(self):
        self.count, self.threads = 0, set()

    def inc(self, n=1):
        self.count += n
        self.threads.add(threading.current_thread().name)


def test_async_udf_counts_batches_on_the_thread_that_reads_its_gauges():
    # Beam drops a counter update made outside the bundle's thread: the batch thread only queues stats
    fn = EmbedUsersAsync(load_settings())
    fn._pending = deque()
    fn._recent = RecentLatencies()
    fn._counters = {name: _ThreadCounter() for name in (
        "valid_records", "user_records_written", "stale_writes", "unknown_items", "no_known_items",
        "sink_dead_letters", "batches", "batch_rows")}
    worker = threading.Thread(target=lambda: [fn._record(BatchStats(size=n, written=n, latencies_ms=[5.0] * n))
                                              for n in (3, 4)], name="micro-batch")
    worker.start()
    worker.join()
    assert fn._counters["batches"].count == 0
    assert fn._latency(50) == 5                    # the end-of-bundle gauge read counts them first
    c = fn._counters
    assert (c["batches"].count, c["batch_rows"].count, c["user_records_written"].count) == (2, 7, 7)
    assert c["valid_records"].count == 7           # one a window: one a valid click
    assert set().union(*(x.threads for x in c.values())) == {threading.current_thread().name}
