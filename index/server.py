"""The gRPC index service: Search, BatchSearch, Upsert, Delete, Lookup, Stats + grpc.health.v1.

    server = IndexServer(settings.index, ItemIndex(settings.index)).start()   # server.port
    ...
    server.stop()

Requests are validated before they touch the index: wrong dimension, NaN/inf, k out of range,
an unknown filter field, too many queries or items, ef_search/nprobe over their limit, a search
estimated above ``max_search_work``, a response that could exceed ``max_message_bytes`` (queries x
k x the largest id and score), an item id that is empty, too long (``max_id_chars``), not UTF-8 or
holds a control character, a duplicate id in one Upsert -> INVALID_ARGUMENT naming the limit; a
vector of another model version -> FAILED_PRECONDITION; a request message over
``max_message_bytes`` -> RESOURCE_EXHAUSTED (gRPC itself); more than ``heavy_requests`` searches
that each cost more than one lock group at once -> RESOURCE_EXHAUSTED (retry later; small searches
keep their handler threads). A request whose deadline has already passed is not executed
(DEADLINE_EXCEEDED), and one that finished after its deadline is counted as DEADLINE_EXCEEDED.
Anything unexpected is logged and answered INTERNAL; the server keeps serving.
Health: NOT_SERVING until ``set_serving(True)`` (the CLI calls it once the feeder has caught up).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from conf.settings import IndexSettings
from index.ann import ItemIndex
from index.errors import InvalidRequest, ModelVersionMismatch
from index.metrics import REQUEST_SECONDS, REQUESTS, IndexCollector, registry_for
from index.proto import index_pb2 as pb
from index.proto import index_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "recstream.index.v1.IndexService"
HIT_BYTES = 4 + 1 + 1 + 2   # a packed float score + an id's tag and length prefix (<= 2 bytes: ids <= 16 KiB)
RESULT_BYTES = 16           # a SearchResponse's own tags and lengths, besides its hits and model_version


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class IndexServicer(pb_grpc.IndexServiceServicer):
    def __init__(self, index: ItemIndex, settings: IndexSettings,
                 extra_stats: Callable[[], dict[str, Any]] | None = None) -> None:
        self.index = index
        self.settings = settings
        self.extra_stats = extra_stats or dict
        self._heavy = threading.BoundedSemaphore(settings.heavy_requests)

    # ---------------------------------------------------------------------------- plumbing
    def _run(self, method: str, context: grpc.ServicerContext, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the request ran")
            out = fn()
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:   # the caller has its DEADLINE_EXCEEDED
                code = grpc.StatusCode.DEADLINE_EXCEEDED
            return out
        except _Abort as e:
            code, msg = e.code, str(e)
        except InvalidRequest as e:
            code, msg = grpc.StatusCode.INVALID_ARGUMENT, str(e)
        except ModelVersionMismatch as e:
            code, msg = grpc.StatusCode.FAILED_PRECONDITION, str(e)
        except Exception as e:  # the server must survive anything a request does
            log.exception("%s failed", method)
            code, msg = grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"
        finally:
            REQUEST_SECONDS.labels(method).observe(time.perf_counter() - t0)
            REQUESTS.labels(method, code.name).inc()
        context.abort(code, msg)

    def _filters(self, filters: Any) -> dict[str, list[str]] | None:
        out: dict[str, list[str]] = {}
        for f in filters:
            if f.field in out:
                raise InvalidRequest(f"filter field {f.field!r} given twice")
            out[f.field] = list(f.values)
        return out or None

    def _knobs(self, request: Any) -> dict[str, int]:
        """ef_search / nprobe of a request: 0 = the server default, else 1..max_ef_search / max_nprobe."""
        knobs = {}
        for name, limit in (("ef_search", self.settings.max_ef_search), ("nprobe", self.settings.max_nprobe)):
            v = getattr(request, name)
            if v < 0 or v > limit:
                raise InvalidRequest(f"{name} must be 0 (default) or 1..{limit} (index.max_{name}), got {v}")
            if v:
                knobs[name] = v
        return knobs

    def _check_response_size(self, n_queries: int, k: int) -> None:
        """Refuse a search whose answer could exceed the message limit, before any work.

        Worst case: every hit carries an id of ``max_id_chars`` characters of 4 UTF-8 bytes each.
        """
        max_id_bytes = 4 * (self.settings.max_id_chars or 0)
        worst = n_queries * (k * (max_id_bytes + HIT_BYTES) + RESULT_BYTES + len(self.index.model_version))
        limit = self.settings.max_message_bytes
        if worst > limit:
            raise InvalidRequest(
                f"response could reach {worst:,} bytes ({n_queries} queries x k {k} x "
                f"{max_id_bytes + HIT_BYTES} bytes an id and score), over the message limit of "
                f"{limit:,} bytes (index.max_message_bytes); send fewer queries or a smaller k")

    def _vector(self, values: Any, what: str) -> np.ndarray:
        x = np.asarray(values, dtype=np.float32)
        if x.size != self.index.dim:
            raise InvalidRequest(f"{what}: expected dimension {self.index.dim}, got {x.size}")
        return x

    # ------------------------------------------------------------------------------- RPCs
    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        def run() -> pb.SearchResponse:
            q = self._vector(request.vector, "vector")
            self._check_response_size(1, request.k)
            (ids, scores), = self.index.search_raw(q, request.k, self._filters(request.filters),
                                                   request.model_version or None, **self._knobs(request))
            return pb.SearchResponse(ids=ids, scores=scores, model_version=self.index.model_version)
        return self._run("Search", context, run)

    def BatchSearch(self, request: pb.BatchSearchRequest,
                    context: grpc.ServicerContext) -> pb.BatchSearchResponse:
        def run() -> pb.BatchSearchResponse:
            if request.dim != self.index.dim:
                raise InvalidRequest(f"dim: expected {self.index.dim}, got {request.dim}")
            x = np.asarray(request.vectors, dtype=np.float32)
            if x.size == 0 or x.size % request.dim:
                raise InvalidRequest(f"vectors: {x.size} floats is not a whole number of "
                                     f"{request.dim}-d queries (and at least one)")
            x = x.reshape(-1, request.dim)
            if len(x) > self.settings.max_batch:
                raise InvalidRequest(f"{len(x)} queries, limit {self.settings.max_batch}")
            self._check_response_size(len(x), request.k)
            filters, knobs = self._filters(request.filters), self._knobs(request)
            heavy = self.index.work(len(x), request.k, filters, **knobs) > self.settings.lock_work
            if heavy and not self._heavy.acquire(blocking=False):
                raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"{self.settings.heavy_requests} large searches already running "
                             f"(index.heavy_requests); retry later or send fewer queries")
            try:
                rows = self.index.search_raw(x, request.k, filters, request.model_version or None, **knobs)
            finally:
                if heavy:
                    self._heavy.release()
            mv = self.index.model_version
            return pb.BatchSearchResponse(results=[pb.SearchResponse(ids=i, scores=s, model_version=mv)
                                                   for i, s in rows])
        return self._run("BatchSearch", context, run)

    def Upsert(self, request: pb.UpsertRequest, context: grpc.ServicerContext) -> pb.UpsertResponse:
        def run() -> pb.UpsertResponse:
            items = request.items
            if len(items) > self.settings.max_batch:
                raise InvalidRequest(f"{len(items)} items, limit {self.settings.max_batch}")
            if not items:
                return pb.UpsertResponse(applied=0)
            ids = [it.id for it in items]
            self.index.check_ids(ids)                 # before any message quotes an id
            if len(set(ids)) != len(ids):
                dup = next(i for n, i in enumerate(ids) if i in ids[:n])
                raise InvalidRequest(f"item id {dup!r} appears more than once in one Upsert "
                                     f"(send one record per id)")
            x = np.empty((len(items), self.index.dim), np.float32)
            for i, it in enumerate(items):
                x[i] = self._vector(it.vector, f"item {it.id!r}")
            statuses = [it.status or "active" for it in items]
            n = self.index.upsert(ids, x, [it.category or None for it in items],
                                  statuses, request.model_version or None)
            return pb.UpsertResponse(applied=n)
        return self._run("Upsert", context, run)

    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        def run() -> pb.DeleteResponse:
            return pb.DeleteResponse(deleted=self.index.delete(self._ids(request.ids)))
        return self._run("Delete", context, run)

    def Lookup(self, request: pb.LookupRequest, context: grpc.ServicerContext) -> pb.LookupResponse:
        def run() -> pb.LookupResponse:
            return pb.LookupResponse(live=self.index.lookup(self._ids(request.ids)))
        return self._run("Lookup", context, run)

    def _ids(self, ids: Any) -> list[str]:
        """Ids of a Delete or Lookup (cheap per id: 16 x the batch limit of vector requests)."""
        if len(ids) > self.settings.max_batch * 16:
            raise InvalidRequest(f"{len(ids)} ids, limit {self.settings.max_batch * 16}")
        return list(ids)

    def stats(self) -> dict[str, Any]:
        return {**self.index.stats(), "replica_id": self.settings.replica_id,
                "shard_index": self.settings.shard_index, "shard_count": self.settings.shard_count,
                **self.extra_stats()}

    def Stats(self, request: pb.StatsRequest, context: grpc.ServicerContext) -> pb.StatsResponse:
        def run() -> pb.StatsResponse:
            s = self.stats()
            return pb.StatsResponse(
                replica_id=s["replica_id"], kind=s["kind"], built_as=s["built_as"], dim=s["dim"],
                live=s["live"], rows=s["rows"], tombstones=s["tombstones"],
                model_version=s["model_version"], compacting=s["compacting"],
                compactions=s["compactions"], feeder_lag=int(s.get("feeder_lag", 0)),
                offsets={k: int(v) for k, v in s.get("offsets", {}).items()},
                shard_index=s["shard_index"], shard_count=s["shard_count"])
        return self._run("Stats", context, run)


class IndexServer:
    """A gRPC server around one ItemIndex, with health checking and (optionally) /metrics."""

    def __init__(self, settings: IndexSettings, index: ItemIndex,
                 extra_stats: Callable[[], dict[str, Any]] | None = None) -> None:
        self.settings = settings
        self.index = index
        self.servicer = IndexServicer(index, settings, extra_stats)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.port = 0
        self._metrics_server: Any = None
        self._server: grpc.Server | None = None

    def start(self, serving: bool = True) -> IndexServer:
        limit = self.settings.max_message_bytes
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.settings.server_threads,
                                       thread_name_prefix="index-rpc"),
            options=[("grpc.max_send_message_length", limit),
                     ("grpc.max_receive_message_length", limit),
                     ("grpc.so_reuseport", 0)])
        pb_grpc.add_IndexServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        addr = f"{self.settings.host}:{self.settings.port}"
        self.port = server.add_insecure_port(addr)
        if not self.port:
            raise OSError(f"cannot bind the index service to {addr}")
        server.start()
        self._server = server
        self.set_serving(serving)
        if self.settings.metrics_port:
            from prometheus_client import start_http_server

            reg = registry_for(IndexCollector(self.settings.replica_id, self.servicer.stats))
            self._metrics_server = start_http_server(self.settings.metrics_port,
                                                     addr=self.settings.host, registry=reg)
        log.info("index service on %s:%d (%s, %d items)", self.settings.host, self.port,
                 self.settings.kind, len(self.index))
        return self

    def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    def stop(self, grace_s: float = 1.0) -> None:
        if self._server is not None:
            self.set_serving(False)
            self._server.stop(grace_s).wait()
            self._server = None
        if self._metrics_server is not None:
            server, _thread = self._metrics_server
            server.shutdown()
            self._metrics_server = None
