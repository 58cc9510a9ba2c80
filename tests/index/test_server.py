"""The gRPC service on loopback: answers like the in-process index, refuses every kind of bad
request with a clear status and keeps serving, honours deadlines, retries and fans out."""

from __future__ import annotations

import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conf.settings import override
from index.ann import ItemIndex
from index.client import GrpcIndexClient, shard_of
from index.errors import IndexUnavailable, InvalidRequest, ModelVersionMismatch
from index.proto import index_pb2 as pb
from index.proto import index_pb2_grpc as pb_grpc


@pytest.fixture
def served(index_server, make_index_settings, unit_vectors):
    s = make_index_settings(kind="Flat", max_batch=64, max_message_bytes=64 * 1024, max_k=100)
    idx = ItemIndex(s)
    x = unit_vectors(200)
    idx.upsert([f"i{i}" for i in range(200)], x, categories=[f"c{i % 3}" for i in range(200)],
               model_version="v1")
    server, addr = index_server(idx, kind="Flat", max_batch=64, max_message_bytes=64 * 1024, max_k=100)
    channel = grpc.insecure_channel(addr)
    yield idx, x, addr, pb_grpc.IndexServiceStub(channel), s
    channel.close()


def test_search_and_batch_search_match_the_index(served):
    idx, x, addr, stub, s = served
    client = GrpcIndexClient(s, [[addr]])
    assert client.search(x[3], 5) == idx.search_raw(x[3], 5)
    got = client.search(x[:4], 5, filters={"category": ["c1"]})
    assert [ids for ids, _ in got] == [ids for ids, _ in idx.search_raw(x[:4], 5, {"category": ["c1"]})]
    assert client.lookup(["i1", "nope"]) == [True, False]
    client.close()


BAD = [
    ("Search", pb.SearchRequest(vector=[0.1] * 8, k=5), "dimension 16"),
    ("Search", pb.SearchRequest(vector=[float("nan")] * 16, k=5), "NaN"),
    ("Search", pb.SearchRequest(vector=[0.1] * 16, k=0), "k must be"),
    ("Search", pb.SearchRequest(vector=[0.1] * 16, k=101), "k must be"),
    ("Search", pb.SearchRequest(vector=[0.1] * 16, k=5, filters=[pb.Filter(field="colour", values=["red"])]),
     "unknown filter"),
    ("Search", pb.SearchRequest(vector=[0.1] * 16, k=5, filters=[pb.Filter(field="category", values=[])]),
     "category filter"),
    ("Search", pb.SearchRequest(vector=[0.1] * 16, k=5, filters=[pb.Filter(field="status", values=["x"])] * 2),
     "given twice"),
    ("Search", pb.SearchRequest(vector=[0.1] * 16, k=5, ef_search=-1), "ef_search"),
    ("Search", pb.SearchRequest(vector=[0.0] * 16, k=5), "all-zero"),
    ("BatchSearch", pb.BatchSearchRequest(vectors=[0.1] * 32, dim=8, k=5), "dim: expected 16"),
    ("BatchSearch", pb.BatchSearchRequest(vectors=[0.1] * 20, dim=16, k=5), "whole number"),
    ("BatchSearch", pb.BatchSearchRequest(vectors=[0.1] * 16 * 65, dim=16, k=5), "65 queries, limit 64"),
    ("Upsert", pb.UpsertRequest(items=[pb.Item(id="a", vector=[0.1] * 3)]), "dimension 16"),
    ("Upsert", pb.UpsertRequest(items=[pb.Item(id="", vector=[0.1] * 16)]), "non-empty"),
    ("Upsert", pb.UpsertRequest(items=[pb.Item(id="a", vector=[0.1] * 16, status="gone")]), "status"),
    ("Upsert", pb.UpsertRequest(items=[pb.Item(id=f"a{i}", vector=[0.1] * 16) for i in range(65)]),
     "65 items"),
    ("Upsert", pb.UpsertRequest(items=[pb.Item(id="a", vector=[float("inf")] * 16)]), "infinity"),
]


@pytest.mark.parametrize(("method", "request_", "match"), BAD, ids=[f"{m}-{x}" for m, _, x in BAD])
def test_bad_requests_get_invalid_argument_and_the_server_survives(served, method, request_, match):
    idx, x, addr, stub, s = served
    with pytest.raises(grpc.RpcError) as e:
        getattr(stub, method)(request_, timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert match in e.value.details()
    assert list(stub.Search(pb.SearchRequest(vector=x[0].tolist(), k=1), timeout=5).ids) == ["i0"]
    assert len(idx) == 200


def test_other_failures_have_their_own_status(served):
    idx, x, addr, stub, s = served
    with pytest.raises(grpc.RpcError) as e:                          # invariant 1 over the wire
        stub.Search(pb.SearchRequest(vector=x[0].tolist(), k=5, model_version="v2"), timeout=5)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "'v1'" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:                          # over max_message_bytes
        stub.BatchSearch(pb.BatchSearchRequest(vectors=[0.1] * 16 * 2000, dim=16, k=5), timeout=5)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as e:                          # a deadline nobody can meet
        stub.Search(pb.SearchRequest(vector=x[0].tolist(), k=5), timeout=-1)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    client = GrpcIndexClient(s, [[addr]])
    with pytest.raises(InvalidRequest, match="dimension"):
        client.search(x[0, :4], 5)
    with pytest.raises(ModelVersionMismatch):
        client.search(x[0], 5, model_version="v9")
    assert client.search(x[0], 1)[0][0] == ["i0"]


def test_health_reports_serving_state(index_server):
    server, addr = index_server(kind="Flat")
    with grpc.insecure_channel(addr) as ch:
        h = health_pb2_grpc.HealthStub(ch)
        check = lambda name: h.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status  # noqa: E731
        assert check("") == health_pb2.HealthCheckResponse.SERVING
        assert check("recstream.index.v1.IndexService") == health_pb2.HealthCheckResponse.SERVING
        server.set_serving(False)
        assert check("") == health_pb2.HealthCheckResponse.NOT_SERVING


def test_client_retries_unavailable_on_the_next_replica(served, make_index_settings):
    idx, x, addr, stub, s = served
    dead = "127.0.0.1:1"                                          # nothing listens there
    client = GrpcIndexClient(override(s, {"client_retries": 2, "client_deadline_ms": 2000}),
                             [[dead, addr]])
    from prometheus_client import REGISTRY

    retries = lambda: REGISTRY.get_sample_value("recs_index_client_retries_total",  # noqa: E731
                                                {"method": "Search"}) or 0.0
    before = retries()
    for _ in range(4):                                             # round-robin starts on each
        assert client.search(x[0], 1)[0][0] == ["i0"]
    assert retries() == before + 2                                 # every other call hit the dead one
    only_dead = GrpcIndexClient(override(s, {"client_retries": 1}), [[dead]])
    with pytest.raises(IndexUnavailable, match="UNAVAILABLE"):
        only_dead.search(x[0], 1)


def test_fan_out_over_shards_merges_like_one_index(index_server, make_index_settings, unit_vectors):
    x = unit_vectors(300, seed=5)
    ids = [f"i{i}" for i in range(300)]
    whole = ItemIndex(make_index_settings(kind="Flat"))
    whole.upsert(ids, x)
    addrs = [index_server(kind="Flat", shard_index=i, shard_count=3)[1] for i in range(3)]
    client = GrpcIndexClient(make_index_settings(), [[a] for a in addrs])
    assert client.upsert(ids, x) == 300                            # routed by crc32(id) % 3
    sizes = [st.live for st in client.stats()]
    assert sum(sizes) == 300 and all(n > 50 for n in sizes)
    assert sizes[0] == sum(shard_of(i, 3) == 0 for i in ids)
    q = unit_vectors(10, seed=6)
    got = client.search(q, 10)
    want = whole.search_raw(q, 10)
    assert [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], rtol=1e-5)
    assert client.delete(ids[:10]) == 10
    assert not set(ids[:10]) & {i for row, _ in client.search(x[:10], 5) for i in row}


def test_upsert_and_delete_are_visible_to_the_next_search(served):
    idx, x, addr, stub, s = served
    client = GrpcIndexClient(s, [[addr]])
    v = -x[0]
    client.upsert(["fresh"], v[None, :], categories=["c9"])
    assert client.search(v, 1)[0][0] == ["fresh"]
    client.delete(["fresh"])
    assert "fresh" not in client.search(v, 10)[0][0]


def test_metrics_endpoint(index_server, unit_vectors):
    from recs.local.processes import free_port

    port = free_port()
    server, addr = index_server(kind="Flat", metrics_port=port)
    server.index.upsert(["a", "b"], unit_vectors(2))
    server.index.delete(["a"])
    GrpcIndexClient(server.settings, [[addr]]).search(unit_vectors(1)[0], 1)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'recs_index_items{replica="index-0"} 1.0' in body
    assert 'recs_index_tombstones{replica="index-0"} 1.0' in body
    assert 'recs_index_request_seconds_count{method="Search"}' in body


class _ExpiredContext:
    """A servicer context whose deadline has passed (a request that waited in the queue too long)."""

    def time_remaining(self) -> float:
        return 0.0

    def abort(self, code, details):
        raise RuntimeError(f"{code.name}: {details}")


def test_server_skips_requests_whose_deadline_passed(make_index_settings, unit_vectors):
    from index.server import IndexServicer

    s = make_index_settings(kind="Flat")
    idx = ItemIndex(s)
    servicer = IndexServicer(idx, s)
    with pytest.raises(RuntimeError, match="DEADLINE_EXCEEDED: deadline passed"):
        servicer.Upsert(pb.UpsertRequest(items=[pb.Item(id="a", vector=unit_vectors(1)[0].tolist())]),
                        _ExpiredContext())
    assert len(idx) == 0                                            # nothing was applied


# ------------------------------------------------------------------ limits and fairness (issue 8)
LIMITS = dict(kind="Flat", max_batch=64, max_message_bytes=64 * 1024, max_k=100, max_ef_search=512,
              max_nprobe=16, max_search_work=20_000, max_id_chars=12)


@pytest.fixture
def limited(index_server, unit_vectors):
    server, addr = index_server(**LIMITS)
    server.index.upsert([f"i{i}" for i in range(100)], unit_vectors(100))
    channel = grpc.insecure_channel(addr)
    yield server, pb_grpc.IndexServiceStub(channel)
    channel.close()


def _invalid(call, request) -> str:
    with pytest.raises(grpc.RpcError) as e:
        call(request, timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    return e.value.details()


LIMIT_CASES = [
    ("Search", pb.SearchRequest(vector=[0.1] * 16, k=5, ef_search=513), "index.max_ef_search"),
    ("Search", pb.SearchRequest(vector=[0.1] * 16, k=5, nprobe=17), "index.max_nprobe"),
    # 100 rows: a Flat query costs 100 distance computations, 64 queries 6,400 (under 20,000) ...
    ("BatchSearch", pb.BatchSearchRequest(vectors=[0.1] * 16 * 64, dim=16, k=100), "index.max_message_bytes"),
    ("Upsert", pb.UpsertRequest(items=[pb.Item(id="x" * 13, vector=[0.1] * 16)]), "limit 12"),
    ("Upsert", pb.UpsertRequest(items=[pb.Item(id="a\x00b", vector=[0.1] * 16)]), "control character"),
    ("Upsert", pb.UpsertRequest(items=[pb.Item(id="a", vector=[0.1] * 16), pb.Item(id="b", vector=[0.2] * 16),
                                       pb.Item(id="a", vector=[0.3] * 16)]), "more than once"),
    ("Delete", pb.DeleteRequest(ids=["y" * 13]), "limit 12"),
]


@pytest.mark.parametrize(("method", "request_", "match"), LIMIT_CASES, ids=[m for _, _, m in LIMIT_CASES])
def test_limits_get_invalid_argument_naming_the_limit(limited, method, request_, match):
    server, stub = limited
    assert match in _invalid(getattr(stub, method), request_)
    assert len(server.index) == 100                              # nothing applied, server serving
    assert len(stub.Search(pb.SearchRequest(vector=[0.1] * 16, k=3), timeout=5).ids) == 3


def test_work_limit_and_response_size_are_checked_before_the_search(limited, unit_vectors):
    server, stub = limited
    q = unit_vectors(64, seed=3).ravel().tolist()
    # 64 queries x k 10 fits the 64 KiB message limit at 12-character ids (64 x 10 x 56 bytes) ...
    assert len(stub.BatchSearch(pb.BatchSearchRequest(vectors=q[:16 * 60], dim=16, k=10), timeout=5).results) == 60
    # ... and 64 x 100 rows = 6,400 distance computations is under the work limit of 20,000; grow the
    # index so the same request costs 64 x 400 = 25,600
    server.index.upsert([f"j{i}" for i in range(300)], unit_vectors(300, seed=4))
    msg = _invalid(stub.BatchSearch, pb.BatchSearchRequest(vectors=q[:16 * 64], dim=16, k=10))
    assert "25,600" in msg and "20,000 (index.max_search_work)" in msg
    with pytest.raises(InvalidRequest, match="max_search_work"):    # the same limit in process
        server.index.search_raw(np.array(q, np.float32).reshape(64, 16), 10)


def test_ids_over_the_contract_limit_and_unicode(index_server, unit_vectors, base_index_settings):
    server, addr = index_server(kind="Flat")                       # the shipped id limit
    limit = base_index_settings.max_id_chars
    from conf import load_settings

    assert limit == load_settings().contracts.max_id_chars
    with grpc.insecure_channel(addr) as ch:
        stub = pb_grpc.IndexServiceStub(ch)
        v = unit_vectors(1)[0].tolist()
        assert f"limit {limit}" in _invalid(stub.Upsert, pb.UpsertRequest(
            items=[pb.Item(id="x" * (1 << 20), vector=v)]))          # the 1 MB id of the issue
        ok = ["é" * limit, "見" * limit, "a-b_c:d/e"]                  # at the limit, any script
        assert stub.Upsert(pb.UpsertRequest(items=[pb.Item(id=i, vector=v) for i in ok]), timeout=5).applied == 3
    with pytest.raises(InvalidRequest, match="UTF-8"):
        server.index.upsert(["a\ud800"], unit_vectors(1))
    with pytest.raises(InvalidRequest, match="control"):
        server.index.delete(["tab\there"])


def _requests_total(method: str, code: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("recs_index_requests_total", {"method": method, "code": code}) or 0.0


def test_refused_and_failed_requests_are_not_counted_ok(limited, unit_vectors, monkeypatch):
    server, stub = limited
    ok, invalid = _requests_total("BatchSearch", "OK"), _requests_total("BatchSearch", "INVALID_ARGUMENT")
    _invalid(stub.BatchSearch, pb.BatchSearchRequest(vectors=[0.1] * 16 * 64, dim=16, k=100))
    assert _requests_total("BatchSearch", "INVALID_ARGUMENT") == invalid + 1
    internal = _requests_total("Search", "INTERNAL")
    monkeypatch.setattr(server.index, "search_raw", lambda *a, **kw: 1 / 0)
    with pytest.raises(grpc.RpcError) as e:
        stub.Search(pb.SearchRequest(vector=[0.1] * 16, k=3), timeout=5)
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert _requests_total("Search", "INTERNAL") == internal + 1
    assert _requests_total("BatchSearch", "OK") == ok


def test_a_long_batch_search_does_not_stall_other_searches(index_server, unit_vectors):
    """Issue 8: a long BatchSearch, upserts waiting for the write lock, and small searches at the
    same time. The batch re-takes the read lock between groups of ``lock_work``, and the lock lets
    the searches that waited through a write chunk in before the next chunk, so a small search
    waits at most one group and one chunk. (Before: it waited for the whole batch, 100s of ms.)"""
    import threading
    import time

    n, d = 20_000, 32
    x = unit_vectors(n, d=d, seed=11)
    over = dict(kind="HNSW", dim=d, hnsw_m=16, ef_construction=40, hnsw_reorder=False,
                max_ef_search=1024, max_search_work=10**9, lock_work=32_768, heavy_requests=4)
    server, addr = index_server(**over)
    server.index.load_batch([f"i{i}" for i in range(n)], x)
    stop = threading.Event()
    batch_s: list[float] = []

    def long_batches() -> None:
        with grpc.insecure_channel(addr) as ch:
            stub = pb_grpc.IndexServiceStub(ch)
            req = pb.BatchSearchRequest(vectors=unit_vectors(256, d=d, seed=12).ravel().tolist(), dim=d,
                                        k=10, ef_search=1024)
            while not stop.is_set():
                t0 = time.perf_counter()
                stub.BatchSearch(req, timeout=60)
                batch_s.append(time.perf_counter() - t0)

    def upserts() -> None:
        rng = np.random.default_rng(13)
        while not stop.is_set():
            rows = rng.integers(0, n, 8)
            server.index.upsert([f"i{r}" for r in rows], x[rows])
            time.sleep(0.002)

    threads = [threading.Thread(target=long_batches), threading.Thread(target=upserts)]
    for t in threads:
        t.start()
    lat = []
    try:
        with grpc.insecure_channel(addr) as ch:
            stub = pb_grpc.IndexServiceStub(ch)
            q = unit_vectors(400, d=d, seed=14)
            time.sleep(0.2)
            deadline = time.monotonic() + 30     # 400 searches, and as many as it takes to span 3 batches
            while (len(lat) < len(q) or len(batch_s) < 3) and time.monotonic() < deadline:
                v = q[len(lat) % len(q)]
                t0 = time.perf_counter()
                stub.Search(pb.SearchRequest(vector=v.tolist(), k=10), timeout=30)
                lat.append(time.perf_counter() - t0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    p50, p99 = np.percentile(lat, [50, 99]) * 1000
    print(f"\nsmall searches during long batches + upserts: p50 {p50:.2f} ms, p99 {p99:.2f} ms; "
          f"batch {np.median(batch_s) * 1000:.0f} ms ({len(batch_s)} batches)")
    assert len(batch_s) >= 3 and min(batch_s) > 0.1        # the batches really were long
    assert p99 < 50, f"p99 {p99:.1f} ms"                   # 10 ms on a quiet machine; CPU is shared


def test_large_searches_beyond_heavy_requests_are_refused_at_once(index_server, unit_vectors, monkeypatch):
    """Large searches beyond ``heavy_requests`` are refused at once (RESOURCE_EXHAUSTED), so they can
    never occupy every handler thread; a small search still runs meanwhile."""
    import threading
    import time

    server, addr = index_server(kind="Flat", heavy_requests=1, lock_work=50)
    server.index.upsert([f"i{i}" for i in range(100)], unit_vectors(100))
    slow, inside = server.index.search_raw, threading.Event()

    def slow_search(q, *a, **kw):
        if len(q) > 1:                                   # the batch: hold its slot a while
            inside.set()
            time.sleep(1.0)
        return slow(q, *a, **kw)

    monkeypatch.setattr(server.index, "search_raw", slow_search)
    batch = pb.BatchSearchRequest(vectors=unit_vectors(4, seed=1).ravel().tolist(), dim=16, k=5)
    with grpc.insecure_channel(addr) as ch:
        stub = pb_grpc.IndexServiceStub(ch)
        first = stub.BatchSearch.future(batch, timeout=10)
        assert inside.wait(5)
        with pytest.raises(grpc.RpcError) as e:
            stub.BatchSearch(batch, timeout=5)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "index.heavy_requests" in e.value.details()
        assert len(stub.Search(pb.SearchRequest(vector=[0.1] * 16, k=3), timeout=5).ids) == 3
        assert len(first.result().results) == 4
        assert len(stub.BatchSearch(batch, timeout=10).results) == 4     # the slot is free again


class _LateContext(_ExpiredContext):
    """Time left when the handler starts, none when it ends (the caller gave up meanwhile)."""

    def __init__(self) -> None:
        self.calls = 0

    def time_remaining(self) -> float:
        self.calls += 1
        return 1.0 if self.calls == 1 else 0.0


def test_an_answer_after_the_deadline_is_not_counted_ok(make_index_settings, unit_vectors):
    from index.server import IndexServicer

    s = make_index_settings(kind="Flat")
    idx = ItemIndex(s)
    idx.upsert(["a"], unit_vectors(1))
    ok, late = _requests_total("Search", "OK"), _requests_total("Search", "DEADLINE_EXCEEDED")
    IndexServicer(idx, s).Search(pb.SearchRequest(vector=unit_vectors(1)[0].tolist(), k=1), _LateContext())
    assert (_requests_total("Search", "OK"), _requests_total("Search", "DEADLINE_EXCEEDED")) == (ok, late + 1)
