"""The sink's error policy against a real redis-server: transient errors are retried with bounded
backoff and lose nothing, errors a retry cannot fix become dead letters, never a crash."""

import base64
import json
import threading
import time

import pytest
import redis

from conf import load_settings
from conf.settings import with_overrides
from recs.local.processes import free_port
from recs.local.redis_server import Redis
from recs.stores.redis_store import redis_client
from udfs.sinks import RetryPolicy, call_with_retry, is_transient, write_or_dead_letter

FAST = RetryPolicy(retries=3, backoff_s=0.01, max_backoff_s=0.02)


def test_policy_from_settings_doubles_and_is_capped():
    f = load_settings().flink
    policy = RetryPolicy.from_settings(f)
    pauses = policy.pauses()
    assert len(pauses) == f.sink_retries
    assert pauses[0] == f.sink_backoff_ms / 1000 and max(pauses) == f.sink_max_backoff_ms / 1000
    assert all(b == min(2 * a, policy.max_backoff_s) for a, b in zip(pauses, pauses[1:], strict=False))


@pytest.mark.parametrize(("error", "transient"), [
    (redis.ConnectionError("refused"), True),
    (redis.TimeoutError("slow"), True),
    (ConnectionRefusedError(111, "refused"), True),
    (TimeoutError(), True),
    (redis.BusyLoadingError("LOADING Redis is loading the dataset in memory"), True),
    (redis.ResponseError("READONLY You can't write against a read only replica."), True),
    (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
    (redis.DataError("Invalid input of type: 'dict'"), False),
    (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), False),
    (ValueError("Exceeds the limit (4300 digits) for integer string conversion"), False),
])
def test_only_errors_a_wait_can_fix_are_transient(error, transient):
    assert is_transient(error) is transient


def test_transient_errors_exhaust_the_bounded_retries_then_propagate():
    pauses, calls = [], []

    def down():
        calls.append(1)
        raise redis.ConnectionError("Connection refused")

    with pytest.raises(redis.ConnectionError):
        call_with_retry(down, FAST, sleep=pauses.append)
    assert (len(calls), pauses) == (FAST.retries + 1, FAST.pauses())


@pytest.mark.integration
def test_a_redis_that_comes_back_loses_nothing(test_settings, tmp_path):
    """Nothing listens at first; redis-server starts while the sink backs off; the write lands."""
    s = with_overrides(test_settings, redis={"port": free_port()}, stack={"run_dir": tmp_path})
    server = Redis(s)
    client = redis_client(s.redis, timeout_s=1)
    starter = threading.Timer(0.5, server.start)
    retried: list[BaseException] = []
    starter.start()
    try:
        dead = write_or_dead_letter(lambda: client.hset("clicks:u1", mapping={"clicks": 3, "last_ts": 9}),
                                    {"user_id": "u1"}, RetryPolicy(retries=30, backoff_s=0.05, max_backoff_s=0.5),
                                    source_topic="clicks", sink="sink:redis", on_retry=retried.append)
        starter.join()
        assert dead is None and retried and all(is_transient(e) for e in retried)
        assert client.hgetall("clicks:u1") == {b"clicks": b"3", b"last_ts": b"9"}
    finally:
        starter.cancel()
        starter.join()
        client.close()
        server.stop()


@pytest.mark.integration
def test_a_write_redis_refuses_is_dead_lettered_with_the_reason(redis_client):
    redis_client.set("clicks:u1", "a string, not a hash")
    pauses: list[float] = []
    record = {"user_id": "u1", "clicks": 1, "last_ts": 5}
    dead = write_or_dead_letter(lambda: redis_client.hset("clicks:u1", mapping={"clicks": 1, "last_ts": 5}), record,
                                FAST, source_topic="clicks", sink="sink:redis", sleep=pauses.append)
    assert pauses == []  # no retry: waiting cannot fix it
    doc = json.loads(dead)
    assert (doc["stage"], doc["field"], doc["source_topic"]) == ("sink:redis", "$", "clicks")
    assert doc["reason"].startswith("sink:redis rejected the write: ResponseError: WRONGTYPE")
    assert json.loads(doc["raw"]) == record


@pytest.mark.integration
def test_an_id_no_encoder_can_write_is_dead_lettered_not_raised(redis_client):
    """Issue 8's second record, at the sink: a lone surrogate makes the Redis client raise
    UnicodeEncodeError; the sink dead-letters it (raw as base64) and the job goes on."""
    user_id = "u\ud800"
    dead = write_or_dead_letter(lambda: redis_client.hset(f"clicks:{user_id}", mapping={"clicks": 1}),
                                {"user_id": user_id, "clicks": 1}, FAST, source_topic="clicks", sink="sink:redis")
    dead.encode("utf-8")  # the dead letter itself always encodes
    doc = json.loads(dead)
    assert "UnicodeEncodeError" in doc["reason"] and "raw" not in doc
    raw = base64.b64decode(doc["raw_b64"]).decode("utf-8", "surrogatepass")
    assert json.loads(raw) == {"user_id": user_id, "clicks": 1}
    assert redis_client.keys("*") == []


def test_retries_wait_as_the_policy_says():
    policy = RetryPolicy(retries=2, backoff_s=0.05, max_backoff_s=0.05)
    outcomes = iter([redis.TimeoutError("slow"), redis.TimeoutError("slow"), "ok"])

    def flaky():
        out = next(outcomes)
        if isinstance(out, Exception):
            raise out
        return out

    start = time.perf_counter()
    assert call_with_retry(flaky, policy) == "ok"
    assert time.perf_counter() - start >= 0.1
