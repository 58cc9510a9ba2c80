"""`recs probe freshness` against a real broker, a real Redis and a real backend (uvicorn + gRPC index).

Two kinds of consumer write the user records the probe waits for:
- ``StandIn``, a thread in this file: it is NOT the user-embedding job and proves nothing about it.
  It writes user:{id} = the clicked item's vector with event_ts = the click's ts, DELAY_MS after the
  click's ts, so these tests check the probe's mechanics only: every probe is seen, never earlier
  than the delay the stand-in put in (the probe does not under-measure), the answer never before the
  KV record, the background rate is held, and a missing consumer or backend is a clear error.
- the real job (jobs/user_embeddings.py, submitted to the local Flink cluster): the last test, which
  skips until ``recs.local.flink_jobs.JOBS`` has "user-embeddings".
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uvicorn
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from typer.testing import CliRunner

from conf import load_settings
from conf.settings import Settings, override, to_env, with_overrides
from index.ann import ItemIndex
from index.client import GrpcIndexClient
from recs.cli import app as cli
from recs.contracts import Click, ContractError, parse_click
from recs.local import flink_jobs
from recs.local.broker import create_topics
from recs.local.freshness import ProbeError, items_with_vectors, probe
from recs.local.processes import free_port
from recs.serving.app import create_app
from recs.serving.read_path import ReadPath
from recs.stores import open_store
from recs.stores.base import ItemVector, UserRecord

from .helpers import wait_for

D = 16              # stand-in catalogue dimension
N_ITEMS = 60
DELAY_MS = 150      # the stand-in writes a record this long after its click's ts
TIMEOUT_S = 15.0    # per probe: far above DELAY_MS + polling on a loaded 2-core machine


def own_topics(settings: Settings, name: str, **sections: dict) -> Settings:
    """Click topics and a KV key prefix of this test's own (other tests read whole topics)."""
    topics = settings.kafka.topics.model_dump()
    topics.update(clicks=name, clicks_dlq=f"{name}.dlq", partitions={**topics["partitions"], name: 4, f"{name}.dlq": 1})
    s = with_overrides(settings, kafka={"topics": topics}, kv={"key_prefix": f"{name}:"}, **sections)
    create_topics(s, [name, f"{name}.dlq"])
    return s


@pytest.fixture
def settings(test_settings: Settings, kafka_settings, redis_settings, tmp_path) -> Settings:
    """The session's broker and Redis, topics of this test's own, no model artifact."""
    return own_topics(test_settings, f"fresh-{tmp_path.name}", model={"artifact_dir": str(tmp_path / "none")},
                      data={"data_dir": str(tmp_path)})


@pytest.fixture
def store(settings):
    s = open_store(settings)
    yield s
    s.close()


@pytest.fixture
def catalogue(store, tmp_path) -> dict[str, np.ndarray]:
    """N_ITEMS unit vectors (model v1) in KV item:{id}, and tmp_path/synth/listings.parquet naming them."""
    x = np.random.default_rng(0).standard_normal((N_ITEMS, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    vectors = {f"item-{i}": x[i] for i in range(N_ITEMS)}
    assert all(store.put_items([ItemVector(i, v, "v1", 1_000) for i, v in vectors.items()]))
    (tmp_path / "synth").mkdir()
    pq.write_table(pa.table({"item_id": [*vectors, "no-vector"]}), tmp_path / "synth" / "listings.parquet")
    return vectors


class StandIn(threading.Thread):
    """A stand-in consumer (NOT the job): clicks since it started -> user:{id} DELAY_MS after their ts."""

    def __init__(self, settings: Settings, vectors: dict[str, np.ndarray], model_version: str = "v1") -> None:
        super().__init__(name="stand-in-consumer", daemon=True)
        self.settings, self.vectors, self.model_version = settings, vectors, model_version
        self.since_ms = int(time.time() * 1000)
        self.written = 0
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        s = self.settings
        topic = s.kafka.topics.clicks
        consumer = Consumer({**s.kafka.client_config(), "group.id": f"stand-in-{self.since_ms}",
                             "enable.auto.commit": False})
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                         for p in range(s.kafka.topics.partitions_of(topic))])
        store = open_store(s)
        pending: list = []
        try:
            while not self.stop_event.is_set():
                for m in consumer.consume(500, 0.01):
                    try:
                        c = parse_click(m.value(), s.contracts) if m.value() else None
                    except ContractError:
                        continue
                    if c is not None and c.ts >= self.since_ms and c.item_id in self.vectors:
                        pending.append(c)
                now_ms = time.time() * 1000
                due = [c for c in pending if now_ms >= c.ts + DELAY_MS]
                if due:
                    pending = [c for c in pending if now_ms < c.ts + DELAY_MS]
                    store.put_users([UserRecord(c.user_id, self.vectors[c.item_id], self.model_version, c.ts,
                                                (c.item_id,)) for c in due])
                    self.written += len(due)
        except BaseException as e:
            self.error = e
        finally:
            consumer.close()
            store.close()


@contextmanager
def stand_in(settings: Settings, vectors: dict[str, np.ndarray]) -> Iterator[StandIn]:
    consumer = StandIn(settings, vectors)
    consumer.start()
    try:
        yield consumer
    finally:
        consumer.stop_event.set()
        consumer.join(10)
    assert consumer.error is None, consumer.error


@contextmanager
def backend(settings: Settings, store, start_index_server, vectors: dict[str, np.ndarray], model_version: str,
            snapshot_dir) -> Iterator[str]:
    """A real index server holding ``vectors`` and `recs serve`'s app on uvicorn -> its base URL."""
    dim = len(next(iter(vectors.values())))
    index_settings = override(load_settings().index, {
        "kind": "Flat", "dim": dim, "port": 0, "metrics_port": 0, "snapshot_dir": snapshot_dir,
        "model_version": "", "client_deadline_ms": 2000})
    idx = ItemIndex(index_settings)
    idx.upsert(list(vectors), np.stack(list(vectors.values())), model_version=model_version)
    client = GrpcIndexClient(index_settings, [[start_index_server(index_settings, idx)[1]]])
    serve = override(settings.serve, {"phase": 3, "index_deadline_ms": 2000})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ReadPath(store, client, serve)), host="127.0.0.1",
                                           port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        client.close()


def test_probe_times_a_stand_in_consumer_through_kv_and_the_backend(settings, store, catalogue,
                                                                     start_index_server, tmp_path):
    rate, seconds, probes = 300.0, 3.0, 6
    items = items_with_vectors(store, [*catalogue, "no-vector"], limit=1000)
    assert items == list(catalogue)                           # the id without a vector is left out
    with backend(settings, store, start_index_server, catalogue, "v1", tmp_path) as url, \
            stand_in(settings, catalogue) as consumer:
        report = probe(settings, rate, seconds, probes, url, items, timeout_s=TIMEOUT_S, warmup_s=0.5,
                       store=store)
        # the stand-in consumed and wrote every click sent (background ones too), nothing skipped
        wait_for(lambda: consumer.written >= report.background.sent + probes, 10, "the stand-in to catch up", 0.05)
    assert report.problems == []
    assert (report.probes_sent, report.probes_failed) == (probes, 0)
    assert (report.kv.seen, report.kv.timed_out, report.serve.seen, report.serve.timed_out) == (probes, 0, probes, 0)
    assert len(report.series) == probes
    for one in report.series:       # never less than the real delay; the answer never before the record
        assert DELAY_MS - 1 <= one["kv_ms"] <= one["serve_ms"], one
    assert report.serve.p50_ms >= report.kv.p50_ms and report.serve.max_ms >= report.kv.max_ms
    bg = report.background
    assert bg.delivered == bg.sent and bg.achieved_per_s == pytest.approx(rate, rel=0.1)
    assert bg.sent >= rate * (seconds + 0.5)                   # the load ran through warm-up and probes


def test_no_consumer_stops_the_run_and_names_the_job(settings, store, catalogue):
    t0 = time.monotonic()
    with pytest.raises(ProbeError, match=r"no KV user record .* within 2 s .*is the user-embeddings job running"):
        probe(settings, 100.0, 20.0, 4, None, list(catalogue), timeout_s=2.0, store=store)
    assert time.monotonic() - t0 < 10                         # first probe at 2.5 s + 2 s, not the whole 20 s


def test_a_backend_that_is_not_there_is_a_clear_error(settings, store, catalogue):
    with pytest.raises(ProbeError, match=r"backend at http://127\.0\.0\.1:\d+ does not answer .*recs serve"):
        probe(settings, 100.0, 2.0, 2, f"http://127.0.0.1:{free_port()}", list(catalogue), store=store)


def test_cli_prints_json_and_exits_1_with_the_reason(settings, store, catalogue, start_index_server, tmp_path):
    runner, env = CliRunner(), to_env(settings)
    args = ["probe", "freshness", "--rate", "200", "--seconds", "2", "--probes", "4", "--warmup", "0.2"]
    with backend(settings, store, start_index_server, catalogue, "v1", tmp_path) as url, \
            stand_in(settings, catalogue):
        ok = runner.invoke(cli, [*args, "--timeout", str(TIMEOUT_S), "--serve-url", url, "--json"], env=env)
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.stdout)
    assert (report["kv"]["seen"], report["serve"]["seen"], report["problems"]) == (4, 4, [])
    assert report["settings"]["items"] == N_ITEMS
    missing = runner.invoke(cli, [*args, "--timeout", "1"], env=env)
    assert missing.exit_code == 1 and "is the user-embeddings job running?" in missing.stderr


@pytest.mark.slow
def test_probe_times_the_user_embedding_job(stack_settings, start_index_server, flink_job, tmp_path):
    """The real job: click -> Flink -> user tower -> KV, and -> the backend's answer (an untrained
    artifact: the weights do not change the path a click takes)."""
    if "user-embeddings" not in flink_jobs.JOBS:
        pytest.skip("jobs/user_embeddings.py is not registered in recs.local.flink_jobs.JOBS yet")
    from models.artifact import load_artifact
    from models.export import export_untrained

    words = ["red", "blue", "silk", "wool", "dress", "shirt", "oak", "table", "lamp", "steel"]
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(words, 4)) for _ in range(N_ITEMS * 4)]
    export_untrained(stack_settings.model, tmp_path / "artifact", texts)
    s = own_topics(stack_settings, f"fresh-job-{tmp_path.name}", model={"artifact_dir": str(tmp_path / "artifact")})
    art = load_artifact(s.model.artifact_dir)
    vectors = dict(zip([f"item-{i}" for i in range(len(texts))], art.embed_items(texts), strict=True))
    store = open_store(s)
    assert all(store.put_items([ItemVector(i, v, art.model_version, 1_000) for i, v in vectors.items()]))
    rate, probes = 500.0, 20
    flink_job(s, "user-embeddings")     # cancelled after the test
    try:
        # measure the running job, not its start-up: wait for its first record
        producer = Producer(s.kafka.client_config())
        producer.produce(s.kafka.topics.clicks, Click("warm-up", "item-0", int(time.time() * 1000)).to_json(),
                         key=b"warm-up")
        assert producer.flush(10) == 0
        wait_for(lambda: store.get_users(["warm-up"])[0], 120, "the job's first user record")
        with backend(s, store, start_index_server, vectors, art.model_version, tmp_path) as url:
            report = probe(s, rate, 20.0, probes, url, list(vectors), timeout_s=30.0, warmup_s=2.0, store=store)
    finally:
        store.close()
    print(json.dumps(report.as_dict(), indent=1))     # the figures, for whoever runs it
    assert report.problems == []
    assert (report.kv.seen, report.serve.seen) == (probes, probes)
    assert report.serve.p50_ms >= report.kv.p50_ms
    assert report.background.achieved_per_s == pytest.approx(rate, rel=0.1)
