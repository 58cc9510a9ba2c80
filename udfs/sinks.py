"""Sinks that write to the KV store from a Flink job, and never stop it because of one record.

``RedisCountWriter`` writes the absolute value from keyed state (never an increment), so a replay
after recovery rewrites the same values: at-least-once delivery into an idempotent write.

Every write goes through ``write_or_dead_letter`` (plain Python, tested without Flink), which sorts
errors by what fixes them:

- transient (``is_transient``: Redis or Kafka briefly down: ``ConnectionError``/``TimeoutError``,
  redis-py's and the builtins, Redis still loading, a replica in failover): retried
  ``flink.sink_retries`` times, the pause doubling from ``sink_backoff_ms`` to at most
  ``sink_max_backoff_ms``. An outage longer than that fails the task: the job's bounded restart
  strategy replays from the last checkpoint, so nothing is lost, and ``recs jobs list`` shows it.
- anything else (Redis refuses the command, e.g. WRONGTYPE; a value no encoder can write): retrying
  cannot fix it, so the record goes to the dead-letter topic (side output ``DLQ_TAG``, stage
  ``sink:redis``) with the error's type and message, counted in ``recs.sink_dead_letters``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from pyflink.datastream import ProcessFunction

from conf.settings import FlinkSettings, KVSettings, RedisSettings
from recs.contracts import ContractError
from recs.dead_letters import dead_letter
from udfs.parse import DLQ_TAG

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# Redis error replies that a wait fixes (the server is loading, busy, or failing over).
TRANSIENT_REPLIES = ("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY", "CLUSTERDOWN")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int          # attempts after the first
    backoff_s: float      # first pause; doubles after each retry
    max_backoff_s: float  # cap on one pause

    @classmethod
    def from_settings(cls, flink: FlinkSettings) -> RetryPolicy:
        return cls(flink.sink_retries, flink.sink_backoff_ms / 1000, flink.sink_max_backoff_ms / 1000)

    def pauses(self) -> list[float]:
        """The pause before each retry, in order."""
        return [min(self.backoff_s * 2**i, self.max_backoff_s) for i in range(self.retries)]


def is_transient(error: BaseException) -> bool:
    """True when waiting can fix the error (the service is unreachable, slow or not ready)."""
    import redis

    if isinstance(error, ConnectionError | TimeoutError | redis.ConnectionError | redis.TimeoutError):
        return True
    return isinstance(error, redis.ResponseError) and str(error).startswith(TRANSIENT_REPLIES)


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy, *, sleep: Callable[[float], None] = time.sleep,
                    on_retry: Callable[[BaseException], None] | None = None) -> T:
    """``fn()``, retried on transient errors as ``policy`` says; other errors and the last
    transient one propagate."""
    for pause in [*policy.pauses(), None]:
        try:
            return fn()
        except Exception as e:
            if pause is None or not is_transient(e):
                raise
            if on_retry is not None:
                on_retry(e)
            sleep(pause)
    raise AssertionError("unreachable")


def write_or_dead_letter(write: Callable[[], Any], record: dict[str, Any], policy: RetryPolicy, *,
                         source_topic: str, sink: str, sleep: Callable[[float], None] = time.sleep,
                         on_retry: Callable[[BaseException], None] | None = None) -> str | None:
    """Run ``write``; None when it succeeded, the dead-letter JSON when retrying cannot fix the
    error. A transient error that outlasts the retries propagates (the task fails, the restart
    strategy replays from the last checkpoint)."""
    try:
        call_with_retry(write, policy, sleep=sleep, on_retry=on_retry)
    except Exception as e:
        if is_transient(e):
            raise
        log.warning("%s rejected a record for good: %s: %s", sink, type(e).__name__, e)
        error = ContractError("$", f"{sink} rejected the write: {type(e).__name__}: {e}")
        return dead_letter(json.dumps(record, ensure_ascii=False), error, source_topic, stage=sink)
    return None


def put_or_dead_letter(put: Callable[[list[R]], list[bool]], records: list[R],
                       describe: Callable[[R], dict[str, Any]], policy: RetryPolicy, *, source_topic: str,
                       sink: str) -> tuple[list[bool], list[str | None]]:
    """One batched write (``put(records)``: the store's ``put_users``/``put_items``) under the sink
    policy. Returns, per record, whether the store took it (False: a newer event was there) and its
    dead letter (None unless the store refused it for good).

    Transient errors are retried, then propagate (the task fails; the restart replays from the
    checkpoint). Any other error refuses the whole batch: its records are then written one by one,
    so only the ones the store refuses again become dead letters (``describe`` says what they carry;
    the vectors are recomputable, so they are left out)."""
    dead: list[str | None] = [None] * len(records)
    try:
        return call_with_retry(lambda: put(records), policy), dead
    except Exception as e:
        if is_transient(e):
            raise
        log.warning("%s refused a batch (%s: %s): writing its %d records one by one",
                    sink, type(e).__name__, e, len(records))
    results = []
    for k, rec in enumerate(records):
        got: list[bool] = []
        dead[k] = write_or_dead_letter(partial(_put_one, put, rec, got), describe(rec), policy,
                                       source_topic=source_topic, sink=sink)
        results.append(bool(got and got[0]))
    return results, dead


def _put_one(put: Callable[[list[R]], list[bool]], rec: R, got: list[bool]) -> None:
    got.extend(put([rec]))


class RedisCountWriter(ProcessFunction):
    """(user_id, clicks, last_ts) -> HSET {prefix}clicks:{user_id}; yields user_id, or a dead
    letter on DLQ_TAG."""

    def __init__(self, redis: RedisSettings, kv: KVSettings, retry: RetryPolicy, source_topic: str) -> None:
        self.redis_settings = redis
        self.prefix = kv.key_prefix
        self.retry = retry
        self.source_topic = source_topic

    def open(self, runtime_context: Any) -> None:
        from recs.stores.redis_store import redis_client

        self.client = redis_client(self.redis_settings)
        group = runtime_context.get_metrics_group().add_group("recs")
        self._retries = group.counter("sink_retries")
        self._dead = group.counter("sink_dead_letters")

    def process_element(self, value: tuple[str, int, int], ctx: ProcessFunction.Context):
        user_id, clicks, last_ts = value
        dead = write_or_dead_letter(
            lambda: self.client.hset(f"{self.prefix}clicks:{user_id}", mapping={"clicks": clicks, "last_ts": last_ts}),
            {"user_id": user_id, "clicks": clicks, "last_ts": last_ts}, self.retry,
            source_topic=self.source_topic, sink="sink:redis", on_retry=lambda _e: self._retries.inc())
        if dead is not None:
            self._dead.inc()
            yield DLQ_TAG, dead
            return
        yield user_id

    def close(self) -> None:
        self.client.close()
