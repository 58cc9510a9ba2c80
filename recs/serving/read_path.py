"""The backend read path, as a library function: what ``GET /recommendations/{user}`` and
``recs recommend USER`` both call.

    rp = ReadPath(store, index_client, settings.serve)
    rp.recommend("u42", k=20)   # -> Recommendation(items, scores, source, model_version, reasons,
                                #                   as_of_event_ts)

Phases 2 and 3 (settings ``serve.phase``):
    KV get user:{id} ─► index Search(emb, k * overfetch + extra, model_version = the user's)
                     ─► drop already-clicked (the record's last-N) ─► top K        source "nrt"
    no user embedding, or a fallback ─► precomputed recs:{id}                     source "offline"
    nothing precomputed ─► trending                                                source "trending"
Phase 1: precomputed list, else trending; no index call at all (lists are a day old by design).

``as_of_event_ts`` says which click an answer reflects: the user record's ``event_ts`` (the newest
click in its embedding) when the source is "nrt", else None. ``recs probe freshness`` waits for it.

Rules
- Invariant 1: the search carries the user's model_version; an index of another version refuses it
  (FAILED_PRECONDITION) and the request falls back. It is counted
  (``recs_serve_fallbacks_total{reason="model_version_mismatch"}``), never compared.
- Invariant 6 (phases 2, 3): precomputed and trending lists are checked against the index
  (``lookup``: live and active) before they are served, so a removed listing is dropped as soon
  as the index has applied the removal. Index search results are live by construction. If the
  index cannot be reached, a list cannot be checked: it is withheld (counted as
  ``<list>_unverified``) rather than risk serving removed listings.
- Server-side errors never reach the caller as an error: a store error (Redis/Aerospike down or
  timing out, a record that does not decode), an index error (unavailable, INVALID_ARGUMENT for a
  zero or wrong-dimension user embedding, any other status) each become a fallback with a reason,
  counted in ``recs_serve_fallbacks_total`` and logged (WARNING, with the user id and the error).
  When nothing is left the answer is an empty list whose ``fallbacks`` say why.
- Every fallback and every dropped item is counted (Prometheus).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from prometheus_client import Counter, Histogram

from conf.settings import ServeSettings
from index.client import IndexClient
from index.errors import IndexUnavailable, InvalidRequest, ModelVersionMismatch
from recs.stores.base import EmbeddingStore, MalformedRecord, RecsList, UserRecord

log = logging.getLogger(__name__)

Source = Literal["nrt", "offline", "trending"]
T = TypeVar("T")

REQUESTS = Counter("recs_serve_requests_total", "Recommendations served, by source", ["source"])
FALLBACKS = Counter("recs_serve_fallbacks_total", "Requests that left the preferred path, by reason",
                    ["reason"])
DROPPED = Counter("recs_serve_dropped_items_total", "Candidates dropped before the top K", ["why"])
ERRORS = Counter("recs_serve_errors_total", "Server-side errors turned into fallbacks, by where",
                 ["where"])
LATENCY = Histogram("recs_serve_seconds", "Read path latency (KV + index + filtering)",
                    buckets=(5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.5))


@dataclass(frozen=True, slots=True)
class Recommendation:
    user_id: str
    items: list[str]
    scores: list[float] | None
    source: Source
    model_version: str
    fallbacks: list[str] = field(default_factory=list)
    as_of_event_ts: int | None = None   # the user record's event_ts (ms) when source is "nrt"

    def as_dict(self) -> dict[str, object]:
        scores: list[float | None] = [round(v, 6) for v in self.scores] if self.scores is not None \
            else [None] * len(self.items)
        return {"user_id": self.user_id, "source": self.source, "model_version": self.model_version,
                "items": [{"item_id": i, "score": v} for i, v in zip(self.items, scores, strict=True)],
                "fallbacks": self.fallbacks, "as_of_event_ts": self.as_of_event_ts}


class ReadPath:
    def __init__(self, store: EmbeddingStore, index: IndexClient | None, settings: ServeSettings) -> None:
        if settings.phase >= 2 and index is None:
            raise ValueError(f"phase {settings.phase} needs an index client")
        self.store = store
        self.index = index
        self.settings = settings

    def check_k(self, k: int | None) -> int:
        k = self.settings.default_k if k is None else k
        if not 1 <= k <= self.settings.max_k:
            raise InvalidRequest(f"k must be in 1..{self.settings.max_k}, got {k}")
        return k

    def recommend(self, user_id: str, k: int | None = None) -> Recommendation:
        t0 = time.perf_counter()
        k = self.check_k(k)
        fallbacks: list[str] = []
        try:
            rec = self._recommend(user_id, k, fallbacks)
        finally:
            LATENCY.observe(time.perf_counter() - t0)
        REQUESTS.labels(rec.source).inc()
        for reason in fallbacks:
            FALLBACKS.labels(reason).inc()
        return rec

    def _recommend(self, user_id: str, k: int, fallbacks: list[str]) -> Recommendation:
        clicked: set[str] = set()
        if self.settings.phase >= 2:
            user = self._user(user_id, fallbacks)
            if user is not None:
                clicked = set(user.last_n)
                found = self._search(user, k, clicked, fallbacks)
                if found is not None:
                    return found
        ok, offline = self._store_read("get_recs", lambda: self.store.get_recs([user_id])[0], user_id,
                                       fallbacks)
        if offline is not None:
            items = self._checked(offline, clicked, k, "offline_list", user_id, fallbacks)
            if items:
                return Recommendation(user_id, items, None, "offline", offline.model_version, fallbacks)
            fallbacks.append("offline_list_exhausted")
        elif ok:
            fallbacks.append("no_offline_list")
        _, trending = self._store_read("get_trending", self.store.get_trending, user_id, fallbacks)
        items = self._checked(trending, clicked, k, "trending", user_id, fallbacks) if trending else []
        if not items:
            fallbacks.append("no_trending")
        return Recommendation(user_id, items, None, "trending",
                              trending.model_version if trending else "", fallbacks)

    def _user(self, user_id: str, fallbacks: list[str]) -> UserRecord | None:
        ok, user = self._store_read("get_users", lambda: self.store.get_users([user_id])[0], user_id,
                                    fallbacks)
        if user is None and ok:
            fallbacks.append("no_user_embedding")
        return user

    def _search(self, user: UserRecord, k: int, clicked: set[str],
                fallbacks: list[str]) -> Recommendation | None:
        """Index search for the user's embedding; None (and a fallback reason) when it gives nothing."""
        assert self.index is not None
        fetch = math.ceil(k * self.settings.overfetch) + self.settings.extra_fetch
        try:
            (ids, scores), = self.index.search(user.embedding, fetch, model_version=user.model_version,
                                               timeout=self.settings.index_deadline_ms / 1000)
        except ModelVersionMismatch:
            fallbacks.append("model_version_mismatch")
            return None
        except IndexUnavailable as e:
            self._error("index_unavailable", "search", user.user_id, e, fallbacks)
            return None
        except InvalidRequest as e:      # a zero / NaN / wrong-dimension embedding in the KV store
            self._error("index_invalid_argument", "search", user.user_id, e, fallbacks)
            return None
        keep = [(i, s) for i, s in zip(ids, scores, strict=True) if i not in clicked]
        if len(keep) < len(ids):
            DROPPED.labels("clicked").inc(len(ids) - len(keep))
        if not keep:
            fallbacks.append("nothing_left_after_filtering")
            return None
        keep = keep[:k]
        return Recommendation(user.user_id, [i for i, _ in keep], [s for _, s in keep], "nrt",
                              user.model_version, fallbacks, as_of_event_ts=user.event_ts)

    def _store_read(self, what: str, read: Callable[[], T | None], user_id: str,
                    fallbacks: list[str]) -> tuple[bool, T | None]:
        """One store read -> (answered, value); a store error is (False, None) + ``store_error``."""
        try:
            return True, read()
        except _store_errors() as e:
            self._error("store_error", what, user_id, e, fallbacks)
            return False, None

    @staticmethod
    def _error(reason: str, where: str, user_id: str, e: BaseException, fallbacks: list[str]) -> None:
        ERRORS.labels(where).inc()
        log.warning("read path: %s in %s for user %r, falling back: %s: %s",
                    reason, where, user_id, type(e).__name__, e)
        if reason not in fallbacks:
            fallbacks.append(reason)

    def _checked(self, lst: RecsList, clicked: set[str], k: int, name: str, user_id: str,
                 fallbacks: list[str]) -> list[str]:
        """Drop clicked items, and (phases 2, 3) items the index does not hold as live + active.

        If the index cannot answer the check, the list is withheld (``{name}_unverified``).
        """
        cands = [i for i in lst.items if i not in clicked]
        if len(cands) < len(lst.items):
            DROPPED.labels("clicked").inc(len(lst.items) - len(cands))
        if self.settings.phase >= 2 and cands:
            assert self.index is not None
            cands = cands[: max(4 * k, k + self.settings.extra_fetch)]
            live: list[bool] | None = None
            if "index_unavailable" not in fallbacks:    # one wait for a down index per request
                try:
                    live = self.index.lookup(cands)
                except (IndexUnavailable, InvalidRequest) as e:
                    self._error("index_unavailable" if isinstance(e, IndexUnavailable)
                                else "index_invalid_argument", "lookup", user_id, e, fallbacks)
            if live is None:
                fallbacks.append(f"{name}_unverified")
                DROPPED.labels("unverified").inc(len(cands))
                return []
            kept = [i for i, ok in zip(cands, live, strict=True) if ok]
            if len(kept) < len(cands):
                DROPPED.labels("removed_or_inactive").inc(len(cands) - len(kept))
            cands = kept
        return cands[:k]


@functools.cache
def _store_errors() -> tuple[type[BaseException], ...]:
    """What a store raises when it cannot answer: the backend's errors (the EmbeddingStore
    contract), a record that does not decode, and socket-level timeouts."""
    import redis

    errors: tuple[type[BaseException], ...] = (redis.RedisError, MalformedRecord, OSError)
    try:
        from aerospike import exception as aerospike_exception
    except ImportError:
        return errors
    return (*errors, aerospike_exception.AerospikeError)
