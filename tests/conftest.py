"""Shared fixtures. Integration fixtures start real services on free loopback ports, in a run
folder of their own, so a developer's `make up` stack (default ports) is never touched.

    test_settings   Settings with free ports and a temporary run folder (nothing started)
    redis_settings  a real redis-server            -> conf.settings.RedisSettings
    kafka_settings  a real Tansu broker + topics   -> conf.settings.KafkaSettings
    stack_settings  broker + Redis + Flink cluster -> conf.settings.Settings
    start_index_server  factory: a real gRPC index server on loopback -> (IndexServer, address)
    flink_job       factory: submit a job to the test cluster once every slot is free; cancelled after
    flink_ready     stack_settings, once every slot of the test cluster is free
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conf.settings import PROJECT_ROOT, KafkaSettings, RedisSettings, Settings, load_settings, with_overrides
from recs.local.broker import Broker
from recs.local.flink_cluster import Flink
from recs.local.processes import free_port
from recs.local.redis_server import Redis
from recs.local.stack import Stack

# Markers that tell the truth (`make test-unit` = not integration and not slow): a test is
# `integration` when it lives in tests/integration/ or uses a fixture that starts a service, and
# `slow` when it uses a fixture that trains a model; tests that start a server in their body carry
# the marker themselves.
SERVICE_FIXTURES = frozenset({"redis_settings", "kafka_settings", "stack_settings", "redis_client", "flink_job",
                              "flink_ready", "start_index_server", "index_server", "index_client", "store",
                              "kafka_topic", "produce"})
SLOW_FIXTURES = frozenset({"trained", "artifact_dir"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if "tests/integration/" in str(item.fspath).replace("\\", "/") or names & SERVICE_FIXTURES:
            item.add_marker(pytest.mark.integration)
        if names & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def test_settings() -> Iterator[Settings]:
    # Short path: Flink and Redis put sockets/pid files there.
    run_dir = Path(tempfile.mkdtemp(prefix="recs-test-"))
    base = load_settings()
    settings = with_overrides(
        base,
        kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"},
        redis={"port": free_port()},
        flink={"rest_port": free_port(), "rpc_port": free_port(), "checkpoint_interval_ms": 2000},
        stack={"run_dir": run_dir, "stack_dir": PROJECT_ROOT / ".stack", "ready_timeout_s": 60},
        data={"data_dir": run_dir / "data"},
    )
    yield settings
    leftovers = Stack(settings).leftovers()
    Stack(settings).kill_leftovers()
    shutil.rmtree(run_dir, ignore_errors=True)
    assert not leftovers, f"processes left behind by the tests: {leftovers}"


def _service(svc: Broker | Redis | Flink) -> Iterator[None]:
    svc.start()
    try:
        yield
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def _redis(test_settings: Settings) -> Iterator[None]:
    yield from _service(Redis(test_settings))


@pytest.fixture(scope="session")
def _broker(test_settings: Settings) -> Iterator[None]:
    yield from _service(Broker(test_settings))


@pytest.fixture(scope="session")
def _flink(test_settings: Settings) -> Iterator[None]:
    yield from _service(Flink(test_settings))


@pytest.fixture(scope="session")
def redis_settings(test_settings: Settings, _redis: None) -> RedisSettings:
    return test_settings.redis


@pytest.fixture(scope="session")
def kafka_settings(test_settings: Settings, _broker: None) -> KafkaSettings:
    return test_settings.kafka


@pytest.fixture(scope="session")
def stack_settings(test_settings: Settings, _broker: None, _redis: None, _flink: None) -> Settings:
    return test_settings


ENDED = ("CANCELED", "FAILED", "FINISHED")


def _flink_log_tail(fl: Flink, lines: int = 15) -> str:
    """The last WARN/ERROR lines of the cluster's TaskManager logs and .out files: why it went away."""
    out = []
    for path in sorted((fl.dir / "log").glob("*taskexecutor*")):
        text = path.read_text(errors="replace").splitlines()
        if path.suffix != ".out":
            text = [t for t in text if (" ERROR " in t or " WARN " in t or "Exception" in t)
                    and "Name collision" not in t]      # the Kafka sinks' metric names, harmless
        keep = text
        out += [f"{path.name}: {t[:300]}" for t in keep[-lines:]]
    return "\n".join(out) or "(no TaskManager log lines)"


def flink_slots_free(settings: Settings, timeout_s: float = 120.0) -> None:
    """Wait until the test cluster has a TaskManager, every slot free and no job left running.

    A job an earlier test left cancelling, or a TaskManager that went away, would otherwise fail the
    next test with NoResourceAvailable and a message about something else (CI, stop 13: five Flink
    tests timed out that way, after the tests before them passed). Jobs still running are cancelled;
    a TaskManager whose process is gone is started again, with a warning that quotes its log. It is
    checked on every pass, not once: a TaskManager that was still shutting down when the wait began
    (CI, stop 16: it died on the previous test's job cancel and was still exiting) is restarted too."""
    from recs.local import flink_jobs

    fl = Flink(settings)
    deadline = time.monotonic() + timeout_s
    while True:
        if not fl.taskmanager_pids():
            warnings.warn(f"the Flink TaskManager process was gone before this test; starting it again. "
                          f"Its log ends:\n{_flink_log_tail(fl)}", stacklevel=2)
            fl.start_taskmanager()
        o = fl.overview() or {}
        left = [j for j in flink_jobs.list_jobs(settings) if j["state"] not in ENDED] if o else []
        if not left and o.get("taskmanagers", 0) >= 1 and 1 <= o.get("slots-total", 0) == o.get("slots-available"):
            return
        for j in left:      # tests run one at a time: a job not ended now is an earlier test's
            if j["state"] != "CANCELLING":
                flink_jobs.cancel(settings, j["jid"])
        if time.monotonic() > deadline:
            raise AssertionError(f"the Flink test cluster has no free slots after {timeout_s:.0f} s: "
                                 f"{fl.detail()}; jobs not ended: {left}\n{_flink_log_tail(fl)}")
        time.sleep(1.0)


@pytest.fixture
def flink_ready(stack_settings: Settings) -> Settings:
    """The stack's settings, once the test cluster has every slot free (for tests that submit jobs
    through other code than ``flink_job``, e.g. `recs replay`)."""
    flink_slots_free(stack_settings)
    return stack_settings


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A failed test that ran Flink jobs says what the cluster looked like, and what its log ends with."""
    outcome = yield
    report = outcome.get_result()
    settings = getattr(item, "funcargs", {}).get("stack_settings")
    uses_flink = {"flink_job", "flink_ready"} & set(getattr(item, "fixturenames", ()))
    if report.failed and uses_flink and settings is not None:
        fl = Flink(settings)
        report.sections.append(("flink cluster", f"{fl.detail()}\n{_flink_log_tail(fl)}"))


@pytest.fixture
def flink_job(stack_settings: Settings):  # type: ignore[no-untyped-def]
    """Factory: ``flink_job(settings, "user-embeddings", **submit_options)`` -> job id. The test's
    first job is submitted once every slot of the test cluster is free; each job the test submitted
    is cancelled after it."""
    from recs.local import flink_jobs

    submitted: list[tuple[Settings, str]] = []

    def submit(settings: Settings, job: str, **options: Any) -> str:
        if not submitted:       # the test's own jobs share the cluster with each other
            flink_slots_free(settings)
        submitted.append((settings, flink_jobs.submit(settings, job, **options)))
        return submitted[-1][1]

    yield submit
    for settings, job_id in submitted:
        if flink_jobs.job_status(settings, job_id) not in ENDED:
            flink_jobs.cancel(settings, job_id, wait_s=60)


@pytest.fixture
def start_index_server():  # type: ignore[no-untyped-def]
    """Factory: ``start_index_server(settings, index=None)`` -> (IndexServer, "127.0.0.1:PORT"):
    a real gRPC index server on loopback (``settings.port`` 0 = a free port), stopped after the test."""
    from index.ann import ItemIndex
    from index.server import IndexServer

    started: list[IndexServer] = []

    def start(settings, index=None):  # type: ignore[no-untyped-def]
        server = IndexServer(settings, index or ItemIndex(settings)).start()
        started.append(server)
        return server, f"127.0.0.1:{server.port}"

    yield start
    for server in started:
        server.stop(0)


@pytest.fixture()
def redis_client(redis_settings: RedisSettings):  # type: ignore[no-untyped-def]
    """A client on the test Redis, flushed after the test."""
    from recs.stores.redis_store import redis_client as open_redis

    client = open_redis(redis_settings)
    yield client
    client.flushdb()
    client.close()
