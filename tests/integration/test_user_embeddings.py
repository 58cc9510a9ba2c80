"""The user-embedding job on the real standalone cluster, real broker and Redis, the real ONNX tower.

- poison records mixed into a valid stream: the job stays RUNNING, every valid click is reflected,
  every bad one is in the dead-letter topic with its reason, the trending list is written;
- TaskManager killed mid-stream: after recovery each user's record equals a batch recomputation from
  the whole click log (ARCHITECTURE.md invariant 5).

"Batch recomputation" here is independent of the job's code path: the last N clicks of the user by
(event time, log order), the item vectors from the artifact's item tower, one ``embed_users`` call.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict

import numpy as np
import pytest
from confluent_kafka import Producer

from conf.settings import with_overrides
from models.artifact import load_artifact
from models.export import export_untrained
from recs.contracts import Click
from recs.local import flink_jobs as flink
from recs.local.broker import create_topics, read_topic
from recs.local.flink_cluster import Flink
from recs.local.poison import TS, click_poison, interleave
from recs.stores import ItemVector, open_store
from udfs.user_embedding import top_k_counts

from .helpers import wait_for

pytestmark = pytest.mark.integration

SEED = 10
ITEMS = [f"item-{j}" for j in range(300)]
WORDS = ["red", "blue", "silk", "wool", "dress", "shirt", "oak", "table", "lamp", "steel", "cotton", "chair"]


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory, stack_settings):
    out = tmp_path_factory.mktemp("user-tower")
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(4)) for _ in range(400)]
    export_untrained(stack_settings.model, out, texts)
    return out


def _settings(stack_settings, artifact_dir, name, **user_embeddings):
    topics = stack_settings.kafka.topics.model_dump()
    topics.update(clicks=name, clicks_dlq=f"{name}.dlq",
                  partitions={**topics["partitions"], name: 4, f"{name}.dlq": 1})
    s = with_overrides(stack_settings, kafka={"topics": topics}, kv={"key_prefix": f"{name}:"},
                       model={"artifact_dir": artifact_dir}, user_embeddings=user_embeddings)
    create_topics(s, [name, f"{name}.dlq"])
    return s


def _item_vectors(s):
    """Vectors for every item of ITEMS (text from a seeded generator) in KV, as item_index would."""
    art = load_artifact(s.model.artifact_dir)
    rng = random.Random(1)
    vecs = art.embed_items([" ".join(rng.choice(WORDS) for _ in range(5)) for _ in ITEMS])
    store = open_store(s)
    records = [ItemVector(i, v, art.model_version, TS - 1, "active") for i, v in zip(ITEMS, vecs, strict=True)]
    assert all(store.put_items(records))
    store.close()
    return art, dict(zip(ITEMS, vecs, strict=True))


@pytest.fixture()
def submitted(flink_job):
    return lambda s: flink_job(s, "user-embeddings")


def _expected(clicks, art, vectors):
    """Batch recomputation from the whole log: per user (last-N ids, newest ts, embedding or None)."""
    by_user = defaultdict(list)
    for pos, c in enumerate(clicks):
        by_user[c.user_id].append((c.ts, pos, c.item_id))
    out = {}
    for user, rows in by_user.items():
        rows.sort()
        ids = [i for _, _, i in rows[-art.max_len:]]
        known = [vectors[i] for i in ids if i in vectors]
        emb = None
        if known:
            emb = art.embed_users(np.asarray(known, np.float32)[None], np.ones((1, len(known)), bool))[0]
        out[user] = (ids, rows[-1][0], emb)
    return out


def _check_records(s, expected):
    store = open_store(s)
    users = sorted(expected)
    try:
        got = dict(zip(users, store.get_users(users), strict=True))
    finally:
        store.close()
    for user, (ids, newest, emb) in expected.items():
        rec = got[user]
        if emb is None:
            assert rec is None, user
            continue
        assert rec is not None, user
        assert (list(rec.last_n), rec.event_ts) == (ids, newest), user
        np.testing.assert_allclose(rec.embedding, emb, atol=3e-3, err_msg=user)  # float16 in KV


def _all_written(s, expected):
    store = open_store(s)
    try:
        users = [u for u, (_, _, emb) in expected.items() if emb is not None]
        recs = store.get_users(users)
        done = sum(r is not None and r.event_ts == expected[u][1] for u, r in zip(users, recs, strict=True))
        return done == len(users) or None
    finally:
        store.close()


def _metric(metrics, name):
    return sum(v for k, v in metrics.items() if k.endswith(f".recs.{name}"))


def _reordered(click):
    """A valid click that is not in the canonical form (recs.canonical.canonical_click_form)."""
    return json.dumps({"ts": click.ts, "event": "click", "user_id": click.user_id, "item_id": click.item_id}).encode()


def _produce(s, values, keys):
    p = Producer(s.kafka.client_config())
    for i, (key, value) in enumerate(zip(keys, values, strict=True)):
        p.produce(s.kafka.topics.clicks, value, key=key)
        if i % 500 == 0:
            p.poll(0)
    assert p.flush(30) == 0


@pytest.mark.parametrize("udf", ["vectorized", "async"])
def test_poison_records_leave_the_job_running_and_every_valid_click_reflected(
        stack_settings, artifact_dir, submitted, udf):
    s = _settings(stack_settings, artifact_dir, f"ue-poison-{udf}", udf=udf, trending_window_s=2,
                  trending_slide_s=1, trending_max_delay_ms=0, trending_top_k=20)
    art, vectors = _item_vectors(s)
    rng = random.Random(SEED)
    # 2,000 clicks of 50 users over 2 s of event time; 1 in 40 on an item with no vector (skipped and
    # counted, never a zero vector); one user clicks only such items (no record at all).
    valid = [Click(f"u{rng.randrange(50)}", rng.choice(ITEMS) if rng.random() > 0.025 else "ghost", TS + i)
             for i in range(2000)]
    valid += [Click("ghost-only", "ghost", TS + 2000)]
    # a last burst a minute later in event time moves the watermark past the windows above; its own
    # counts (item-k clicked 10 - k times) are what the newest written window holds
    burst = [Click(f"late-{n}", ITEMS[k], TS + 60_000 + n) for n, k in enumerate(
        k for k in range(8) for _ in range(10 - k))]
    corpus = click_poison(s.contracts)
    # every 5th valid click with ts first: not the canonical form, so the Python parser reads it
    reordered = {i for i in range(len(valid)) if i % 5 == 0}
    values = list(interleave([_reordered(c) if i in reordered else c.to_json().encode() for i, c in enumerate(valid)],
                             [x.raw for x in corpus], SEED))
    keys = [f"k{i}".encode() for i in range(len(values))]
    job = submitted(s)
    _produce(s, [*values, None, *(c.to_json().encode() for c in burst)],
             [*keys, b"tombstone", *(c.user_id.encode() for c in burst)])

    expected = _expected([*valid, *burst], art, vectors)
    try:
        wait_for(lambda: _all_written(s, expected), 180, "every user's record")
    except AssertionError as e:
        raise AssertionError(f"{e}; job: {flink.job_health(s, job)}") from None
    _check_records(s, expected)
    assert expected["ghost-only"][2] is None

    messages = read_topic(s.kafka, s.kafka.topics.clicks_dlq, len(corpus) + 1, timeout_s=30)
    dead = [json.loads(m.value()) for m in messages]
    assert len(dead) == len(corpus)
    reasons = {(d["field"], d["reason"]) for d in dead}
    for x in corpus:
        assert any(f == x.field and x.reason in r for f, r in reasons), x.name

    health = flink.job_health(s, job)
    assert (health.state, health.restarts) == ("RUNNING", 0), health

    # Trending: each written list is the top 20 of one window (2 s, sliding by 1 s, event time) and
    # carries the newest click time of that window; the newest written list replaces older ones.
    windows = defaultdict(lambda: defaultdict(int))
    for c in [*valid, *burst]:
        end = c.ts - c.ts % 1000 + 1000
        for e in (end, end + 1000):
            windows[e][c.item_id] += 1
    newest = {e: max(c.ts for c in [*valid, *burst] if e - 2000 <= c.ts < e) for e in windows}
    seen = []

    def trending():
        store = open_store(s)
        try:
            seen.append(store.get_trending())
        finally:
            store.close()
        t = seen[-1]
        return t is not None and t.event_ts >= burst[0].ts

    wait_for(trending, 60, "a trending list from the windows of the last burst")
    t = seen[-1]
    tops = [[i for i, _ in top_k_counts(list(windows[e]), list(windows[e].values()), 20)]
            for e in windows if newest[e] == t.event_ts]
    assert list(t.items) in tops, (t, tops)
    assert list(t.items)[:8] == ITEMS[:8] and list(t.scores)[:3] == [10.0, 9.0, 8.0]

    def settled():
        m = flink.metrics(s, job)
        return m if _metric(m, "valid_records") == len(valid) + len(burst) and _metric(m, "null_values") == 1 else None

    try:
        m = wait_for(settled, 60, "job metrics")
    except AssertionError as e:
        raise AssertionError(f"{e}; metrics: {flink.metrics(s, job)}") from None
    # the parser read the poison and the reordered clicks, and no canonical click
    assert _metric(m, "parsed_in_python") == len(corpus) + len(reordered)
    assert _metric(m, "unknown_items") >= 1 and _metric(m, "no_known_items") >= 1
    assert _metric(m, "batch_rows") / _metric(m, "batches") > 1, "the UDF formed no real batches"


def _completed_checkpoints(s, job):
    return int(flink._rest(s, f"/jobs/{job}/checkpoints")["counts"]["completed"])


def test_taskmanager_killed_mid_stream_every_record_equals_the_batch_recomputation(
        stack_settings, artifact_dir, submitted):
    """Invariant 5: the TaskManager process is SIGKILLed mid-stream and restarted; the job restores the
    last checkpoint (window state + offsets) and replays. No click lost, none counted twice: each
    user's final last-N, newest event time and embedding equal a recomputation from the whole log."""
    s = _settings(stack_settings, artifact_dir, "ue-recovery")
    art, vectors = _item_vectors(s)
    rng = random.Random(SEED + 1)
    clicks = [Click(f"u{rng.randrange(200)}", rng.choice(ITEMS), TS + i) for i in range(9000)]
    parts = [clicks[:3000], clicks[3000:6000], clicks[6000:]]
    job = submitted(s)

    def send(part):
        _produce(s, [c.to_json().encode() for c in part], [c.user_id.encode() for c in part])

    send(parts[0])
    wait_for(lambda: _completed_checkpoints(s, job) >= 1 and _metric(flink.metrics(s, job), "user_records_written") > 0,
             120, "records written and a checkpoint completed")
    cluster = Flink(s)
    assert cluster.kill_taskmanager(), "no TaskManager process found"
    send(parts[1])                          # produced while no TaskManager runs
    cluster.start_taskmanager()
    send(parts[2])

    expected = _expected(clicks, art, vectors)
    try:
        wait_for(lambda: _all_written(s, expected), 240, "every user's record after recovery")
    except AssertionError as e:
        raise AssertionError(f"{e}; job: {flink.job_health(s, job)}") from None
    _check_records(s, expected)
    health = flink.job_health(s, job)
    assert health.state == "RUNNING" and health.restarts >= 1, health


def test_savepoint_then_resubmit_keeps_every_users_last_n(stack_settings, artifact_dir, flink_job, tmp_path):
    """`recs jobs savepoint --stop` then `recs jobs submit -s LOCATION`: the resubmitted job starts
    from the savepoint's window state, so each user's next record holds the clicks from before it.
    Its settings start the source at the resubmission time, so a job that ignored the savepoint would
    know only the newest click (checked by hand: this test fails without ``from_savepoint``)."""
    s = _settings(stack_settings, artifact_dir, "ue-savepoint")
    art, vectors = _item_vectors(s)
    rng = random.Random(SEED + 2)
    before = [Click(f"u{k}", rng.choice(ITEMS), TS + 10 * j + k) for j in range(3) for k in range(20)]
    after = [Click(f"u{k}", rng.choice(ITEMS), TS + 1_000 + k) for k in range(20)]

    def send(part):
        _produce(s, [c.to_json().encode() for c in part], [c.user_id.encode() for c in part])

    job = flink_job(s, "user-embeddings")
    send(before)
    wait_for(lambda: _all_written(s, _expected(before, art, vectors)), 120, "every user's record")
    location = flink.wait_savepoint(s, job, flink.savepoint(s, job, tmp_path / "savepoints", cancel_job=True))
    wait_for(lambda: flink.job_status(s, job) in ("CANCELED", "FINISHED"), 60, "the job to stop after its savepoint")

    # The resumed job's source starts "now" where it has no state: without the savepoint it would
    # never see the clicks from before (nor could a replay from the earliest offset rebuild them).
    s = with_overrides(s, flink={"source_start_ms": int(time.time() * 1000)})
    time.sleep(0.01)
    resumed = flink_job(s, "user-embeddings", from_savepoint=location)
    send(after)
    expected = _expected(before + after, art, vectors)
    try:
        wait_for(lambda: _all_written(s, expected), 120, "every user's record after the resubmission")
    except AssertionError as e:
        raise AssertionError(f"{e}; job: {flink.job_health(s, resumed)}") from None
    _check_records(s, expected)
    assert all(len(ids) == 4 for ids, _, _ in expected.values())
