"""The Python functions of the user-embedding job (jobs/user_embeddings.py), Table API UDFs.

Flink keeps the state (each user's recent clicks, the trending counts); Python gets
whole batches:

- ``ParseClicks`` (table function, row at a time): a raw Kafka value that is not a canonical click
  (``recs.canonical.canonical_click_form``; the job reads those in Java) → (user_id, item_id, ts, dead).
  The logic is the project's one parser (``recs.contracts.parse_or_error``): a valid click has
  ``dead`` NULL; a rejected value has ``dead`` = its dead-letter JSON (stage ``parse``, field, reason,
  the raw bytes), counted in ``recs.dead_letters.<field>``; a null value (tombstone) gives no row and
  is counted in ``recs.null_values``.
- ``EmbedUsers`` (vectorized) and ``EmbedUsersAsync`` (``AsyncScalarFunction``, micro-batched by
  ``udfs/batcher.py``): the user's window → ``UserTowerWriter.process`` (udfs/user_tower.py: last-N,
  item vectors, one ONNX run, one KV write per batch). They return NULL, or the dead-letter JSON of a
  write the store refused for good. ``user_embeddings.udf`` in settings picks one.
- ``WriteTrending``: a window's item counts → the top ``trending_top_k`` → the KV trending list.

Metrics (group ``recs``): valid_records (counted where the windows reach the user tower: one a valid
click, whichever path read it), parsed_in_python (values the Java path left to the parser: how much
of the stream is not in the canonical form), null_values, dead_letters.<field>, user_records_written,
stale_writes, unknown_items, no_known_items, sink_dead_letters, batches, batch_rows (mean batch =
batch_rows / batches), and gauges click_to_kv_p50_ms / click_to_kv_p99_ms / click_to_kv_max_ms over
the writes of the last ``LATENCY_WINDOW_S`` seconds (event time of the newest click → KV write).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from pyflink.table import DataTypes
from pyflink.table.udf import AsyncScalarFunction, ScalarFunction, TableFunction

from recs.contracts import Click, ContractError, parse_or_error
from recs.dead_letters import dead_letter
from udfs.batcher import MicroBatcher
from udfs.latency import RecentLatencies
from udfs.parse import DeadLetterCounters
from udfs.user_tower import BatchStats, UserTowerWriter, UserWindow

if TYPE_CHECKING:
    from conf.settings import Settings

log = logging.getLogger(__name__)
LATENCY_WINDOW_S = 10.0

PARSED = [DataTypes.STRING(), DataTypes.STRING(), DataTypes.BIGINT(), DataTypes.STRING()]  # user_id, item_id, ts, dead


class ParseClicks(TableFunction):
    """Row at a time, for the clicks the job cannot read in Java (not in the canonical form): one row
    (user_id, item_id, ts, NULL) for a valid click, (NULL, NULL, 0, dead letter) for a rejected one,
    none for a null value (counted in ``recs.null_values``). The job calls it only on those rows
    (jobs/user_embeddings.py), so a stream in the canonical form never enters Python here."""

    def __init__(self, settings: Settings) -> None:
        self.limits = settings.contracts
        self.topic = settings.kafka.topics.clicks

    def is_deterministic(self) -> bool:
        return False    # it counts metrics: the planner must call it once a row, never twice

    def open(self, function_context: Any) -> None:
        group = function_context.get_metric_group().add_group("recs")
        self._nulls = group.counter("null_values")
        self._parsed = group.counter("parsed_in_python")
        self._dead = DeadLetterCounters(group)

    def eval(self, value: bytes | None) -> Any:
        if value is None:
            self._nulls.inc()
            return
        self._parsed.inc()
        raw = bytes(value)
        record = parse_or_error("click", raw, self.limits)
        if isinstance(record, Click):
            yield record.user_id, record.item_id, record.ts, None
        else:
            assert isinstance(record, ContractError)
            self._dead.count(record)
            yield None, None, 0, dead_letter(raw, record, self.topic)


class _Embedder:
    """What both embedding UDFs share: open the store and the model, run a batch, keep metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _open(self, function_context: Any) -> None:
        from models.artifact import load_configured
        from recs.stores import open_store

        s = self.settings
        # The artifact is checked here (files, hashes, shapes, dim): a mismatch fails the job at start.
        self.artifact = load_configured(s.model, s.threads.flink_worker)
        self.store = open_store(s)
        self.writer = UserTowerWriter(s, self.store, self.artifact)
        log.info("user tower %s on %s", self.artifact.model_version, self.artifact.providers)
        g = function_context.get_metric_group().add_group("recs")
        self._counters = {name: g.counter(name) for name in (
            "valid_records", "user_records_written", "stale_writes", "unknown_items", "no_known_items",
            "sink_dead_letters", "batches", "batch_rows")}
        self._recent = RecentLatencies(LATENCY_WINDOW_S)
        self._recent.register(g, "click_to_kv", self._latency)

    def _latency(self, q: float) -> int:
        return self._recent.percentile(q)

    def _record(self, stats: BatchStats) -> None:
        c = self._counters
        c["user_records_written"].inc(stats.written)
        c["stale_writes"].inc(stats.stale)
        c["unknown_items"].inc(stats.unknown_items)
        c["no_known_items"].inc(stats.no_known_items)
        c["sink_dead_letters"].inc(stats.dead_letters)
        c["batches"].inc(1)
        c["batch_rows"].inc(stats.size)
        c["valid_records"].inc(stats.size)     # one window a valid click, whichever path parsed it
        self._recent.add(stats.latencies_ms)

    def _run(self, windows: Sequence[UserWindow]) -> list[str | None]:
        out = self.writer.process(windows)
        self._record(out.stats)
        return out.dead_letters

    def _close(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


class EmbedUsers(_Embedder, ScalarFunction):
    """Vectorized: one call per Arrow batch (``user_embeddings.arrow_batch_size`` rows at most)."""

    def is_deterministic(self) -> bool:
        return False    # it writes to the KV store

    def open(self, function_context: Any) -> None:
        self._open(function_context)

    def eval(self, user_ids: pd.Series, items: pd.Series, tss: pd.Series) -> pd.Series:
        windows = [UserWindow(u, list(i), list(t)) for u, i, t in zip(user_ids, items, tss, strict=True)]
        return pd.Series(self._run(windows), dtype=object)

    def close(self) -> None:
        self._close()


class EmbedUsersAsync(_Embedder, AsyncScalarFunction):
    """Async: each row is one ``eval`` call; ``MicroBatcher`` gathers the calls in flight into batches
    of at most ``max_batch`` rows, waiting at most ``max_wait_ms``.

    Two PyFlink 2.3.0 details this class works around (both measured on the standalone cluster):

    - rows: ``eval`` runs later, on the operator's event-loop thread, and reads its arguments from the
      input row then; the Cython decoder reuses one list for every row, so by that time most calls saw
      a later row (users without a record, records behind their clicks). ``_copy_rows_before_async_eval``
      makes the operator copy each row when it is queued (installed when the worker unpickles this
      function, before the operator binds ``process_element``).
    - metrics: a counter only counts on the bundle's own thread (Beam keeps the metrics container per
      thread), and batches run on the batcher's worker thread. Their stats are queued and added on the
      bundle thread when the operator reads its gauges at the end of each bundle."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        _copy_rows_before_async_eval()

    def is_deterministic(self) -> bool:
        return False

    def open(self, function_context: Any) -> None:
        self._pending: deque[BatchStats] = deque()    # stats of finished batches, not yet counted
        self._open(function_context)
        ue = self.settings.user_embeddings
        self.batcher: MicroBatcher[UserWindow, str | None] = MicroBatcher(self._run, ue.max_batch, ue.max_wait_ms)

    async def eval(self, user_id: str, items: Sequence[str], tss: Sequence[int]) -> str | None:
        return await self.batcher.submit(UserWindow(user_id, list(items), list(tss)))

    def _record(self, stats: BatchStats) -> None:
        self._pending.append(stats)       # the batcher's thread: counted later, on the bundle thread

    def _latency(self, q: float) -> int:
        # the gauges are read on the bundle thread once the bundle's calls are done: count first
        while self._pending:
            super()._record(self._pending.popleft())
        return super()._latency(q)

    def close(self) -> None:
        self.batcher.close()
        self._close()


def _copy_rows_before_async_eval() -> None:
    """Make PyFlink's AsyncScalarFunctionOperation hand each call its own copy of the input row.

    pyflink 2.3.0 ``fn_execution/table/async_function/operations.py``: ``process_element(value)``
    schedules a coroutine that evaluates ``f.eval(value[0], ...)`` when the event loop gets to it, and
    ``FlattenRowCoderImpl.decode_from_stream`` (coder_impl_fast.pyx) returns the same list for every
    row of a bundle. A shallow copy is enough: the fields (strings, the arrays) are new objects per
    row. Idempotent; harmless where the row is already a fresh list."""
    from pyflink.fn_execution.table.async_function.operations import AsyncScalarFunctionOperation as Op

    if getattr(Op.process_element, "copies_row", False):
        return
    reads_row_later = Op.process_element

    def process_element(self: Any, value: Any) -> Any:
        return reads_row_later(self, list(value))

    setattr(process_element, "copies_row", True)  # noqa: B010
    Op.process_element = process_element
    log.info("PyFlink AsyncScalarFunctionOperation: copying each input row before the async eval")


class WriteTrending(ScalarFunction):
    """One call per slide of the trending window: (item ids, their click counts, newest click time)
    → the top ``trending_top_k`` by count (ties by item id) → KV ``trending``. Returns NULL, or a
    dead-letter JSON when the store refused the list for good."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def is_deterministic(self) -> bool:
        return False

    def open(self, function_context: Any) -> None:
        from recs.stores import open_store
        from udfs.sinks import RetryPolicy

        self.store = open_store(self.settings)
        self.policy = RetryPolicy.from_settings(self.settings.flink)
        self._lists = function_context.get_metric_group().add_group("recs").counter("trending_lists")

    def eval(self, items: Sequence[str], counts: Sequence[int], last_ts: int) -> str | None:
        from recs.stores.base import RecsList
        from udfs.sinks import write_or_dead_letter

        top = top_k_counts(list(items), [int(c) for c in counts], self.settings.user_embeddings.trending_top_k)
        record = RecsList("", tuple(i for i, _ in top), "trending", int(last_ts), tuple(float(c) for _, c in top))
        self._lists.inc()
        return write_or_dead_letter(lambda: self.store.put_trending(record),
                                    {"trending": list(record.items), "event_ts": record.event_ts}, self.policy,
                                    source_topic=self.settings.kafka.topics.clicks,
                                    sink=f"sink:{self.settings.kv.backend}")

    def close(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


def top_k_counts(items: list[str], counts: list[int], k: int) -> list[tuple[str, int]]:
    """The k items with the most clicks, most first; equal counts by item id (deterministic)."""
    return sorted(zip(items, counts, strict=True), key=lambda ic: (-ic[1], ic[0]))[:k]
