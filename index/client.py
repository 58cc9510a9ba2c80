"""Index clients: one protocol, an in-process implementation and a gRPC one with fan-out.

    client = GrpcIndexClient(settings.index)           # index.shards: [[replica, ...], ...]
    client.search(vec, k=20, filters={"category": ["shoes"]}, model_version="v3")
    # -> [(ids, scores)] per query, best first, merged over every shard

Contract (``IndexClient``):
- ``search`` takes one (d,) vector or an (n, d) batch and returns one ``(ids, scores)`` pair per
  query, best first, at most k each; an empty index gives empty lists.
- Errors: ``InvalidRequest`` (the server said INVALID_ARGUMENT), ``ModelVersionMismatch``
  (FAILED_PRECONDITION), ``IndexUnavailable`` (every replica of a shard down or too slow after
  the retries). A caller serving traffic falls back on ``IndexUnavailable``.
- gRPC: every call has a deadline (``client_deadline_ms`` unless given); UNAVAILABLE is retried up
  to ``client_retries`` times, each retry on the next replica of the shard, with a doubling
  backoff. Searches go to all shards at once (futures) and the answers are merged by score.
  Upserts and deletes are routed to the shard that owns each id (crc32(id) % shards), to every
  replica of it.
"""

from __future__ import annotations

import itertools
import time
import zlib
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Counter

from conf.settings import IndexSettings
from index.errors import IndexUnavailable, InvalidRequest, ModelVersionMismatch
from index.metrics import CLIENT_RETRIES
from index.proto import index_pb2 as pb
from index.proto import index_pb2_grpc as pb_grpc

if TYPE_CHECKING:       # the in-process client is handed an index; importing it would load FAISS
    from index.ann import ItemIndex

Filters = Mapping[str, Collection[str]] | None
Results = list[tuple[list[str], list[float]]]

EMPTY_ANSWERS = Counter("recs_index_client_empty_answers_total",
                        "Index calls that ended OK without a response message (retried)", ["method"])


class IndexClient(Protocol):
    def search(self, vectors: Any, k: int, filters: Filters = None,
               model_version: str | None = None, timeout: float | None = None) -> Results: ...
    def lookup(self, ids: Sequence[str]) -> list[bool]: ...
    def upsert(self, ids: Sequence[str], vectors: Any, categories: Sequence[str | None] | None = None,
               statuses: Sequence[str] | None = None, model_version: str | None = None) -> int: ...
    def delete(self, ids: Sequence[str]) -> int: ...
    def close(self) -> None: ...


class LocalIndexClient:
    """The protocol over an in-process ItemIndex (tests, notebooks, a single-process backend)."""

    def __init__(self, index: ItemIndex) -> None:
        self.index = index

    def search(self, vectors: Any, k: int, filters: Filters = None,
               model_version: str | None = None, timeout: float | None = None) -> Results:
        return self.index.search_raw(vectors, k, filters, model_version)   # in-process: no deadline

    def lookup(self, ids: Sequence[str]) -> list[bool]:
        return self.index.lookup(ids)

    def upsert(self, ids: Sequence[str], vectors: Any, categories: Sequence[str | None] | None = None,
               statuses: Sequence[str] | None = None, model_version: str | None = None) -> int:
        return self.index.upsert(ids, vectors, categories, statuses, model_version)

    def delete(self, ids: Sequence[str]) -> int:
        return self.index.delete(ids)

    def close(self) -> None:
        pass


def shard_of(item_id: str, shards: int) -> int:
    return zlib.crc32(item_id.encode("utf-8")) % shards


class _Shard:
    def __init__(self, addresses: list[str], options: list[tuple[str, Any]]) -> None:
        self.addresses = addresses
        self.channels = [grpc.insecure_channel(a, options=options) for a in addresses]
        self.stubs = [pb_grpc.IndexServiceStub(c) for c in self.channels]
        self.health = [health_pb2_grpc.HealthStub(c) for c in self.channels]
        self._next = itertools.count()

    def order(self) -> list[int]:
        """Replica order for one call: round-robin start, then the others (for retries)."""
        n = len(self.stubs)
        start = next(self._next) % n
        return [(start + i) % n for i in range(n)]


def _filters_pb(filters: Filters) -> list[pb.Filter]:
    return [pb.Filter(field=f, values=list(v)) for f, v in (filters or {}).items()]


class GrpcIndexClient:
    def __init__(self, settings: IndexSettings, shards: list[list[str]] | None = None) -> None:
        self.settings = settings
        shards = shards if shards is not None else settings.shards
        if not shards or any(not s for s in shards):
            raise ValueError("index client needs at least one shard with at least one replica")
        limit = settings.max_message_bytes
        options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
                   ("grpc.enable_retries", 0)]   # retries are ours: they move to another replica
        self.shards = [_Shard(list(s), options) for s in shards]
        self.timeout = settings.client_deadline_ms / 1000

    # ---------------------------------------------------------------------------- plumbing
    @staticmethod
    def _raise(e: grpc.RpcError) -> NoReturn:
        code, details = e.code(), e.details()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidRequest(details) from None
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            raise ModelVersionMismatch("index", details) from None
        raise IndexUnavailable(f"{code.name}: {details}") from None

    def _call(self, shard: _Shard, method: str, request: Any, timeout: float | None,
              first: Any = None, replica: int | None = None, order: list[int] | None = None) -> Any:
        """One unary call with retries on UNAVAILABLE (next replica each time); never returns None.

        ``first``: a future already sent to ``order[0]``; ``replica``: that replica only.
        A call that ends OK without a response message (grpc-python hands back ``None`` there
        instead of raising, as other gRPC languages do; seen while a server is stopping) counts as
        an UNAVAILABLE attempt. When every attempt failed, ``IndexUnavailable`` is raised.
        """
        if order is None:
            order = shard.order() if replica is None else [replica]
        backoff = self.settings.client_backoff_ms / 1000
        failure = "no attempt made"
        for attempt in range(self.settings.client_retries + 1):
            r = order[attempt % len(order)]
            try:
                if attempt == 0 and first is not None:
                    answer = first.result()
                else:
                    answer = getattr(shard.stubs[r], method)(request, timeout=timeout or self.timeout)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    self._raise(e)
                failure = f"UNAVAILABLE: {e.details()}"
            else:
                if answer is not None:
                    return answer
                failure = f"{method} on {shard.addresses[r]} ended OK without a response message"
                EMPTY_ANSWERS.labels(method).inc()
            if attempt < self.settings.client_retries:
                CLIENT_RETRIES.labels(method).inc()
                time.sleep(backoff)
                backoff *= 2
        raise IndexUnavailable(f"{failure} (after {self.settings.client_retries + 1} attempts)")

    # ------------------------------------------------------------------------------- calls
    def search(self, vectors: Any, k: int, filters: Filters = None,
               model_version: str | None = None, timeout: float | None = None,
               **knobs: int) -> Results:
        x = np.asarray(vectors, dtype=np.float32)
        single = x.ndim == 1
        if single:
            req: Any = pb.SearchRequest(vector=x.tolist(), k=k, filters=_filters_pb(filters),
                                        model_version=model_version or "", **knobs)
            method = "Search"
        else:
            req = pb.BatchSearchRequest(vectors=x.ravel().tolist(), dim=x.shape[1] if x.ndim == 2 else 0,
                                        k=k, filters=_filters_pb(filters),
                                        model_version=model_version or "", **knobs)
            method = "BatchSearch"
        t = timeout or self.timeout
        if len(self.shards) == 1:               # no fan-out: a plain blocking call is cheaper
            a = self._call(self.shards[0], method, req, t)
            return [(list(a.ids), list(a.scores))] if single else \
                [(list(r.ids), list(r.scores)) for r in a.results]
        pending = []
        for shard in self.shards:               # fan out: every shard at once
            order = shard.order()
            fut = getattr(shard.stubs[order[0]], method).future(req, timeout=t)
            pending.append((shard, fut, order))
        answers = [self._call(shard, method, req, t, first=fut, order=order)
                   for shard, fut, order in pending]
        per_shard = [[(list(a.ids), list(a.scores))] if single else
                     [(list(r.ids), list(r.scores)) for r in a.results] for a in answers]
        if len(per_shard) == 1:
            return per_shard[0]
        return [self._merge([s[q] for s in per_shard], k) for q in range(len(per_shard[0]))]

    @staticmethod
    def _merge(parts: list[tuple[list[str], list[float]]], k: int) -> tuple[list[str], list[float]]:
        best: dict[str, float] = {}
        for ids, scores in parts:
            for i, s in zip(ids, scores, strict=True):
                if s > best.get(i, -np.inf):
                    best[i] = s
        top = sorted(best.items(), key=lambda kv: -kv[1])[:k]
        return [i for i, _ in top], [s for _, s in top]

    def lookup(self, ids: Sequence[str]) -> list[bool]:
        out = [False] * len(ids)
        for si, shard in enumerate(self.shards):
            idx = [i for i, item in enumerate(ids) if len(self.shards) == 1
                   or shard_of(item, len(self.shards)) == si]
            if idx:
                live = self._call(shard, "Lookup", pb.LookupRequest(ids=[ids[i] for i in idx]), None).live
                for i, v in zip(idx, live, strict=True):
                    out[i] = v
        return out

    def _by_shard(self, ids: Sequence[str]) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for i, item in enumerate(ids):
            groups.setdefault(shard_of(item, len(self.shards)), []).append(i)
        return groups

    def upsert(self, ids: Sequence[str], vectors: Any, categories: Sequence[str | None] | None = None,
               statuses: Sequence[str] | None = None, model_version: str | None = None) -> int:
        x = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
        applied = 0
        for si, idx in self._by_shard(ids).items():
            items = [pb.Item(id=ids[i], vector=x[i].tolist(),
                             category=(categories[i] or "") if categories else "",
                             status=statuses[i] if statuses else "active") for i in idx]
            req = pb.UpsertRequest(items=items, model_version=model_version or "")
            shard = self.shards[si]
            for r in range(len(shard.stubs)):                 # every replica of the shard
                applied_r = self._call(shard, "Upsert", req, None, replica=r).applied
            applied += applied_r
        return applied

    def delete(self, ids: Sequence[str]) -> int:
        deleted = 0
        for si, idx in self._by_shard(ids).items():
            shard = self.shards[si]
            req = pb.DeleteRequest(ids=[ids[i] for i in idx])
            for r in range(len(shard.stubs)):
                deleted_r = self._call(shard, "Delete", req, None, replica=r).deleted
            deleted += deleted_r
        return deleted

    def stats(self) -> list[pb.StatsResponse]:
        return [self._call(s, "Stats", pb.StatsRequest(), None, replica=r)
                for s in self.shards for r in range(len(s.stubs))]

    def healthy(self, timeout: float = 1.0) -> bool:
        """True when one replica of every shard answers SERVING."""
        for shard in self.shards:
            ok = False
            for h in shard.health:
                try:
                    resp = h.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
                    ok = resp.status == health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError:
                    continue
                if ok:
                    break
            if not ok:
                return False
        return True

    def close(self) -> None:
        for s in self.shards:
            for c in s.channels:
                c.close()
