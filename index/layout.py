"""FAISS construction and the row layout: which structure a kind builds, its spare capacity, the
label-determined HNSW levels, the k-means locality order of a bulk build, and a whole state built
from rows (a rebuild, a bulk load, a restore of another kind).
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from index.state import IndexBase, State

F: Any = faiss    # calls the bundled stubs type too narrowly (SearchParameters* keywords, downcasts)
REORDER_MIN_ROWS = 20_000   # below this the vectors fit in cache: a k-means pass would buy nothing
LEAF_ROWS = 64              # rows per innermost cell of the locality order


def _kmeans_cells(x: np.ndarray, k: int) -> np.ndarray:
    """Spherical k-means cell of every row (trained on at most 32 rows a cell, seeded)."""
    if k <= 1:
        return np.zeros(len(x), np.int64)
    km = faiss.Kmeans(x.shape[1], k, niter=8, seed=1234, spherical=True, max_points_per_centroid=32,
                      min_points_per_centroid=1)
    sample = x if len(x) <= 32 * k else x[np.random.default_rng(0).choice(len(x), 32 * k, replace=False)]
    km.train(sample)
    return km.index.search(x, 1)[1][:, 0]


class Layout(IndexBase):
    def _new_faiss(self, kind: str, n_train: int) -> tuple[Any, str]:
        s, d = self.settings, self.dim
        ix: Any
        if kind == "HNSW":
            if s.hnsw_storage == "fp16":
                ix = F.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_fp16, s.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            else:
                ix = faiss.IndexHNSWFlat(d, s.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            ix.hnsw.efConstruction = s.ef_construction
            ix.hnsw.efSearch = s.ef_search
            return ix, "HNSW"
        if kind in ("IVFFlat", "IVFPQ") and n_train >= s.train_min:
            nlist = max(1, min(s.ivf_nlist, n_train // 39))
            quantizer = faiss.IndexFlatIP(d)
            if kind == "IVFFlat":
                ix = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                ix = faiss.IndexIVFPQ(quantizer, d, nlist, s.pq_m, s.pq_nbits,
                                      faiss.METRIC_INNER_PRODUCT)
            ix.nprobe = s.nprobe
            return ix, kind
        return faiss.IndexFlatIP(d), "Flat"

    def _alloc(self, ix: Any, built: str, cap: int) -> State:
        return State(index=ix, built_as=built, vecs=np.zeros((cap, self.dim), np.float32),
                      cat=np.full(cap, -1, np.int32), cat_live=np.zeros(16, np.int64),
                      active=np.zeros(cap, bool),
                      live=np.zeros(cap, bool), bits=np.zeros(cap // 8 + 1, np.uint8),
                      ts=np.zeros(cap, np.int64))

    @staticmethod
    def _reserve(ix: Any, built: str, rows: int) -> None:
        """Give FAISS's growing arrays room for ``rows`` rows now, so no later add reallocates.

        FAISS sizes them exactly on a bulk add or a read; the next insert would then copy them all
        (~0.5 s at 1 M) while holding the write lock. The SWIG vectors have no ``reserve``: a resize
        up and back down leaves the capacity behind.
        """
        n = int(ix.ntotal)
        if built == "HNSW" and n:
            hnsw, codes = ix.hnsw, F.downcast_index(ix.storage).codes
            per_node = hnsw.neighbors.size() / n
            wants = [(codes, rows * codes.size() // n), (hnsw.levels, rows), (hnsw.offsets, rows + 1),
                     (hnsw.neighbors, int(per_node * rows * 1.02) + 1024)]
        elif built == "Flat" and n:
            wants = [(ix.codes, rows * ix.codes.size() // n)]
        else:
            return                      # IVF lists grow one list at a time: no large copy
        for vec, want in wants:
            size = vec.size()
            if want > size:
                vec.resize(want)
                vec.resize(size)

    def _locality_order(self, vecs: np.ndarray) -> np.ndarray | None:
        """Rows grouped by k-means cell, then by sub-cell of ~64 rows; None when not worth it.

        A search walks from a node to its neighbours, which are mostly in the same cell: with the
        cell's rows next to each other, those hops land on pages and cache lines already loaded.
        Two levels (about 1,000 cells, each split into 64-row leaves) cost ~3 s at 1 M and beat one
        flat level of 4,096 cells (bench/results/ann.json, docs/serving.md).
        """
        n = len(vecs)
        if not self.settings.hnsw_reorder or n < REORDER_MIN_ROWS:
            return None
        top = _kmeans_cells(vecs, min(1024, n // 256))
        order = np.argsort(top, kind="stable")
        bounds = np.searchsorted(top[order], np.arange(top.max() + 2))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            if b - a > 2 * LEAF_ROWS:
                rows = order[a:b]
                order[a:b] = rows[np.argsort(_kmeans_cells(vecs[rows], (b - a) // LEAF_ROWS), kind="stable")]
        return order.astype(np.int64)

    def _empty_state(self, cap: int = 1024) -> State:
        ix, built = self._new_faiss(self.settings.kind, 0)
        return self._alloc(self._to_device(ix, built), built, cap)

    def _to_device(self, ix: Any, built: str) -> Any:
        if self._gpu_res is None or built == "HNSW":
            return ix
        return faiss.index_cpu_to_gpu(self._gpu_res, 0, ix)

    @property
    def on_gpu(self) -> bool:
        return self._gpu_res is not None and self._st.built_as != "HNSW"

    def _hnsw_levels(self, labels: np.ndarray) -> np.ndarray:
        """FAISS-style geometric levels (stored as level + 1), a pure function of the label."""
        z = labels.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        with np.errstate(over="ignore"):
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        u = ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
        m_l = 1.0 / math.log(self.settings.hnsw_m)
        return (np.floor(-np.log(u) * m_l).astype(np.int32) + 1).clip(1, 16)

    def _faiss_add(self, st: State, vecs: np.ndarray, first_label: int, *, bulk: bool) -> None:
        if st.built_as != "HNSW":
            st.index.add(vecs)
            return
        levels = self._hnsw_levels(np.arange(first_label, first_label + len(vecs)))
        hnsw = st.index.hnsw
        if bulk:   # a rebuild: one batch (OpenMP), levels preset so they stay label-determined
            for lv in levels:
                hnsw.levels.push_back(int(lv))
            st.index.add(vecs)
            return
        for i, lv in enumerate(levels):  # one at a time: the graph does not depend on batching
            hnsw.levels.push_back(int(lv))
            st.index.add(vecs[i:i + 1])

    def _build_state(self, ids: list[str], vecs: np.ndarray, cat: np.ndarray, active: np.ndarray,
                     ts: np.ndarray | None = None, removed: dict[str, int] | None = None) -> State:
        n = len(ids)
        ix, built = self._new_faiss(self.settings.kind, n)
        if built in ("IVFFlat", "IVFPQ"):
            rng = np.random.default_rng(0)
            sample = vecs if n <= 256 * ix.nlist else vecs[rng.choice(n, 256 * ix.nlist, replace=False)]
            ix.train(sample)
        st = self._alloc(ix, built, max(1024, int(n * 1.25)))
        if n and built == "HNSW":
            self._faiss_add(st, vecs, 0, bulk=True)        # the graph, in the order given
            order = self._locality_order(vecs)
            if order is not None:                         # then renumber: new row i = old row order[i]
                ix.permute_entries(order)
                ids = [ids[i] for i in order]
                vecs, cat, active = vecs[order], cat[order], active[order]
                ts = None if ts is None else ts[order]
        elif n:
            self._faiss_add(st, vecs, 0, bulk=True)
        self._reserve(ix, built, len(st.live))
        st.removed = dict(removed or {})
        if ts is not None:
            st.ts[:n] = ts
        st.vecs[:n] = vecs
        st.cat[:n] = cat
        st.active[:n] = active
        st.live[:n] = True
        st.ids = list(ids)
        st.label_of = {item: i for i, item in enumerate(ids)}
        st.n = n
        st.selectable = int(active.sum())
        st.bits[: (n + 7) // 8] = np.packbits(st.active[:n], bitorder="little")
        st.cat_live = self._count_categories(st.cat[:n], st.live[:n])
        st.index = self._to_device(st.index, built)
        return st

    def _count_categories(self, cat: np.ndarray, live: np.ndarray) -> np.ndarray:
        used = cat[live & (cat >= 0)]
        return np.bincount(used, minlength=max(16, len(self._category_names))).astype(np.int64)
