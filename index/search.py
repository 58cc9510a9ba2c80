"""Searches: filters turned into selector bitmaps (or exact row sets), the beam widened for broad
filters, the cost limits, and the read lock held one group of queries at a time.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import faiss
import numpy as np

from index import checks
from index.errors import InvalidRequest, ModelVersionMismatch
from index.layout import F, Layout
from index.state import FilterView, State
from index.types import NO_FILTER, Filter, Hit

_ptr = faiss.swig_ptr
_VIEW_BYTES = 256 << 20     # filter views cached (bitmaps + gathered rows) before the cache is cleared
_SEED_SAMPLE = 4096         # matching rows sampled per broad filter to pick a search's entry points from


class Search(Layout):
    def parse_filters(self, filters: Mapping[str, Collection[str]] | None) -> Filter:
        """``{"category": [...], "status": ["active"|"inactive"]}``; default: active, any category."""
        return checks.parse_filters(filters, self.settings)

    def _mask(self, st: State, f: Filter) -> np.ndarray:
        """Rows the filter selects (under the read lock: category codes do not change meanwhile)."""
        n = st.n
        m = st.live[:n].copy()
        if not (f.active and f.inactive):
            m &= st.active[:n] if f.active else ~st.active[:n]
        if f.categories is not None:
            codes = [self._categories.get(c, -2) for c in f.categories]     # unseen: matches nothing
            m &= np.isin(st.cat[:n], np.array(codes, np.int32))
        return m

    def _view(self, st: State, f: Filter) -> FilterView:
        """The rows a filter selects in this state version (cached until the next write)."""
        hit = self._filter_cache.get(f.key)
        if hit is not None and hit.version == st.version:
            return hit
        mask = self._mask(st, f)
        count = int(np.count_nonzero(mask))
        rows = np.flatnonzero(mask) if count <= self._exact_rows else None
        view = FilterView(st.version, np.packbits(mask, bitorder="little"), count, rows)
        if rows is None and st.built_as == "HNSW" and self.settings.filter_seeds:
            # A broad filter on the graph: start the search from the sampled matching rows nearest
            # the query (besides nothing else), so matches that sit away from the query's own
            # neighbourhood are reached (a filter of whole clusters). Sample fixed by seed.
            sel = np.flatnonzero(mask)
            take = np.random.default_rng(0).choice(len(sel), min(len(sel), _SEED_SAMPLE), replace=False)
            view.seeds = sel[np.sort(take)].astype(np.int32)
            view.seed_vecs = st.vecs[view.seeds]
        if len(self._filter_cache) > 256 or sum(v.nbytes for v in list(self._filter_cache.values())) > _VIEW_BYTES:
            self._filter_cache.clear()
        self._filter_cache[f.key] = view
        return view

    @property
    def _exact_rows(self) -> int:
        return max(self.settings.filter_exact_rows, self.settings.max_k)

    def _params(self, st: State, bits: np.ndarray | None, k: int, knobs: Mapping[str, int]) -> Any:
        if bits is None:    # no selector: parameter objects are read-only, cache them
            key = (st.built_as, k, tuple(knobs.items()))
            params = self._params_cache.get(key)
            if params is None:
                if len(self._params_cache) > 1024:
                    self._params_cache.clear()
                params = self._params_cache[key] = self._params_for(st, None, k, knobs)
            return params
        sel = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
        params = self._params_for(st, sel, k, knobs)
        if params is not None:
            params.keep_alive = (sel, bits)    # the C++ side holds raw pointers to both
        return params

    def _params_for(self, st: State, sel: Any, k: int, knobs: Mapping[str, int]) -> Any:
        if st.built_as == "HNSW":
            ef = max(int(knobs.get("ef_search", self.settings.ef_search)), k)
            return F.SearchParametersHNSW(sel=sel, efSearch=ef) if sel else \
                F.SearchParametersHNSW(efSearch=ef)
        if st.built_as in ("IVFFlat", "IVFPQ"):
            nprobe = int(knobs.get("nprobe", self.settings.nprobe))
            return F.SearchParametersIVF(sel=sel, nprobe=nprobe) if sel else \
                F.SearchParametersIVF(nprobe=nprobe)
        return F.SearchParameters(sel=sel) if sel else None

    def check_k(self, k: int) -> int:
        return checks.check_k(k, self.settings)

    def check_knobs(self, knobs: Mapping[str, int]) -> dict[str, int]:
        """``ef_search`` in 1..``max_ef_search``, ``nprobe`` in 1..``max_nprobe``; nothing else."""
        return checks.check_knobs(knobs, self.settings)

    def _cost(self, st: State, k: int, knobs: Mapping[str, int]) -> int:
        """Estimated distance computations of one query (what the work limits count)."""
        s = self.settings
        if st.built_as == "HNSW":     # every expanded node scores its <= 2M level-0 neighbours
            return max(int(knobs.get("ef_search", s.ef_search)), k) * 2 * s.hnsw_m
        if st.built_as in ("IVFFlat", "IVFPQ"):
            nlist = int(st.index.nlist)
            return nlist + int(knobs.get("nprobe", s.nprobe)) * -(-st.n // nlist)
        return max(1, st.n)

    def _widen(self, st: State, count: int, k: int, knobs: Mapping[str, int]) -> Mapping[str, int]:
        """A broader beam for a filter that selects a fraction f of the rows: x filter_widen / f,
        at most x filter_boost (and at most nlist). Not capped by max_ef_search, a limit on what a
        caller may ask: a broad filter on a large index may need ef 1,024 (docs/serving.md)."""
        s = self.settings
        boost = min(float(s.filter_boost), s.filter_widen * st.n / max(1, count))
        if boost <= 1.0:
            return knobs
        if st.built_as == "HNSW":
            ef = max(int(knobs.get("ef_search", s.ef_search)), k)
            return {**knobs, "ef_search": math.ceil(ef * boost)}
        if st.built_as in ("IVFFlat", "IVFPQ"):
            nprobe = int(knobs.get("nprobe", s.nprobe))
            return {**knobs, "nprobe": max(nprobe, min(int(st.index.nlist), math.ceil(nprobe * boost)))}
        return knobs

    def _plan(self, st: State, f: Filter, k: int,
              knobs: Mapping[str, int]) -> tuple[int, FilterView | None, Mapping[str, int]]:
        """(distance computations a query, the filter's rows or None, knobs): under the read lock."""
        if f is NO_FILTER:
            return self._cost(st, k, knobs), None, knobs
        view = self._view(st, f)
        if view.rows is not None:            # few rows qualify: score them all, exactly
            return max(1, view.count), view, knobs
        knobs = self._widen(st, view.count, k, knobs)
        return self._cost(st, k, knobs), view, knobs

    def work(self, n_queries: int, k: int, filters: Mapping[str, Collection[str]] | None = None,
             **knobs: int) -> int:
        """Estimated distance computations of a search request (validated like ``search``)."""
        k = self.check_k(k)
        f = self.parse_filters(filters)
        knobs = self.check_knobs(knobs)
        with self._lock.read():
            return n_queries * self._plan(self._st, f, k, knobs)[0]

    def search(self, queries: Any, k: int, filters: Mapping[str, Collection[str]] | None = None,
               model_version: str | None = None, **knobs: int) -> list[list[Hit]]:
        """Top-k live items per query, best first; fewer than k when fewer qualify.

        ``knobs``: ``ef_search`` (HNSW) or ``nprobe`` (IVF) for this call only.
        """
        return [[Hit(i, s) for i, s in zip(ids, scores, strict=True)]
                for ids, scores in self.search_raw(queries, k, filters, model_version, **knobs)]

    def search_raw(self, queries: Any, k: int, filters: Mapping[str, Collection[str]] | None = None,
                   model_version: str | None = None, **knobs: int) -> list[tuple[list[str], list[float]]]:
        """``search`` as (ids, scores) per query: the server's hot path, no per-hit objects.

        The read lock is held for one group of queries at a time, a group costing at most
        ``lock_work`` distance computations (at least one query), so a write waiting behind a long
        batch waits for one group, and the searches behind that write for one group and one chunk.
        A request estimated above ``max_search_work`` is refused before any work.
        """
        k = self.check_k(k)
        q = self._check_vectors(queries, "queries")
        f = self.parse_filters(filters) if filters else NO_FILTER
        if model_version and self.model_version and model_version != self.model_version:
            raise ModelVersionMismatch(self.model_version, model_version)
        if knobs:
            knobs = self.check_knobs(knobs)
        nq, s = len(q), self.settings
        lock = self._lock
        lock.acquire_read()
        try:
            st = self._st
            if st.n == 0:
                return [([], []) for _ in range(nq)]
            per, view, kn = self._plan(st, f, k, knobs)
            if nq * per > s.max_search_work:
                raise InvalidRequest(
                    f"search too expensive: {nq} queries x ~{per:,} distance computations = {nq * per:,}, "
                    f"limit {s.max_search_work:,} (index.max_search_work); send fewer queries or a "
                    f"smaller k / ef_search / nprobe")
            group = max(1, s.lock_work // per)
            exact = self._gathered(st, view)
            out = [] if exact else self._search_locked(st, q[:group], k, f, view, kn)
        finally:
            lock.release_read()
        if exact:                           # scored outside the lock: the view is a private copy
            out = self._search_exact(st, exact, q[:group], k)
        for a in range(group, nq, group):   # re-take the lock between groups: writes get their turn
            lock.acquire_read()
            try:
                st = self._st
                _, view, kn = self._plan(st, f, k, knobs)
                exact = self._gathered(st, view)
                if not exact:
                    out += self._search_locked(st, q[a:a + group], k, f, view, kn)
            finally:
                lock.release_read()
            if exact:
                out += self._search_exact(st, exact, q[a:a + group], k)
        return out

    @staticmethod
    def _gathered(st: State, view: FilterView | None) -> FilterView | None:
        """Under the read lock: the view when this is an exact search, its rows' vectors copied once
        a version (rows are append-only, so the copy and ``st.ids`` stay right after the lock)."""
        if view is None or view.rows is None:
            return None
        if view.vecs is None:
            view.vecs = st.vecs[view.rows]       # (m, d); two threads may both copy: same result
        return view

    def _search_locked(self, st: State, q: np.ndarray, k: int, f: Filter, view: FilterView | None,
                       knobs: Mapping[str, int]) -> list[tuple[list[str], list[float]]]:
        """One group of queries, under the read lock."""
        if self.on_gpu:
            return self._search_post_filter(st, q, k, f)
        if view is not None:
            bits: np.ndarray | None = view.bits
        else:
            bits = None if st.selectable == st.n else st.bits
        params = self._params(st, bits, k, knobs)   # holds the selector, which holds bits
        nq = len(q)                                 # FAISS's own search(), minus its Python checks
        scores = np.empty((nq, k), np.float32)
        labels = np.empty((nq, k), np.int64)
        if view is not None and view.seeds is not None and view.seed_vecs is not None:
            e = min(self.settings.filter_seeds, len(view.seeds))
            near_s, near = faiss.knn(q, view.seed_vecs, e, metric=faiss.METRIC_INNER_PRODUCT)   # (nq, e)
            entry = np.ascontiguousarray(view.seeds[near], np.int32)
            entry_d = np.ascontiguousarray(near_s, np.float32)      # similarities, as FAISS returns them
            st.index.search_level_0(nq, _ptr(q), k, _ptr(entry), _ptr(entry_d), _ptr(scores),
                                    _ptr(labels), e, 2, params)
        else:
            st.index.search_c(nq, _ptr(q), k, _ptr(scores), _ptr(labels), params)
        del params
        ids = st.ids
        out = []
        for row_l, row_s in zip(labels.tolist(), scores.tolist(), strict=True):
            if row_l and row_l[-1] < 0:
                m = row_l.index(-1)
                row_l, row_s = row_l[:m], row_s[:m]
            out.append(([ids[lab] for lab in row_l], row_s))
        return out

    @staticmethod
    def _search_exact(st: State, view: FilterView, q: np.ndarray,
                      k: int) -> list[tuple[list[str], list[float]]]:
        """Score every selected row (float32, exact): complete when fewer than k qualify."""
        assert view.rows is not None and view.vecs is not None
        if not len(view.rows):
            return [([], []) for _ in range(len(q))]
        # FAISS's exhaustive search: SIMD on the calling thread for a few queries (no BLAS threads)
        scores, top = faiss.knn(q, view.vecs, k, metric=faiss.METRIC_INNER_PRODUCT)   # (nq, k)
        ids, rows = st.ids, view.rows
        out = []
        for row_t, row_s in zip(top.tolist(), scores.tolist(), strict=True):
            if row_t and row_t[-1] < 0:
                m = row_t.index(-1)
                row_t, row_s = row_t[:m], row_s[:m]
            out.append(([ids[rows[t]] for t in row_t], row_s))
        return out

    def _search_post_filter(self, st: State, q: np.ndarray, k: int,
                            f: Filter) -> list[tuple[list[str], list[float]]]:
        """GPU FAISS takes no IDSelector: over-fetch, drop excluded rows, widen until k remain."""
        mask = self._mask(st, f)
        out: list[tuple[list[str], list[float]]] = []
        for row in q:
            fetch = min(st.n, 2 * k + 16)
            while True:
                scores, labels = st.index.search(row[None, :], min(fetch, 2048))
                keep = [(lab, s) for lab, s in zip(labels[0], scores[0], strict=True)
                        if lab >= 0 and mask[lab]]
                if len(keep) >= k or fetch >= min(st.n, 2048):
                    break
                fetch *= 4
            out.append(([st.ids[lab] for lab, _ in keep[:k]], [float(s) for _, s in keep[:k]]))
        return out
