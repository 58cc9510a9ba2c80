"""ItemIndex: FAISS with string item ids, upsert/delete, filters, tombstones and background compaction.

    idx = ItemIndex(settings.index)
    idx.upsert(["a", "b"], vecs, categories=["shoes", None], statuses=["active", "active"],
               model_version="v1")                              # vecs: (n, d) float32
    idx.search(queries, k=10, filters={"category": ["shoes"]})  # -> [[Hit("a", 0.93), ...], ...]
    idx.delete(["a"])

Contract
- Vectors are L2-normalised on the way in; scores are inner products (cosine).
- A label is a row number. Rows are appended, never rewritten: replacing an id kills its old row
  (a tombstone) and appends a new one; deleting kills the row. Searches exclude dead rows with an
  ``IDSelectorBitmap`` (``live & active [& category]``), so deletion works for every kind, HNSW
  included. Once dead rows pass ``compaction_dead_ratio`` a background thread rebuilds a compact
  index from the live rows, replays the writes that arrived meanwhile, and swaps it in under the
  write lock (one pointer assignment).
- Concurrency: searches hold the read side of a phase-fair readers-writer lock for one group of
  queries whose estimated cost is at most ``lock_work`` distance computations (a long BatchSearch
  releases and re-takes it between groups); a write holds the write side for one chunk of
  ``write_chunk`` items. So a search waits at most one group and one chunk. An item's replacement
  (kill old row, add new row) happens inside one chunk, so a search sees the old vector or the new
  one, never both or neither. A rebuild never holds the write lock except for the final swap.
- Limits: ``ef_search`` <= ``max_ef_search``, ``nprobe`` <= ``max_nprobe``, and a request's estimated
  cost (queries x distance computations a query) <= ``max_search_work``; item ids are non-empty,
  at most ``max_id_chars`` characters (the contract's limit), UTF-8 encodable, no control characters.
- Filters: a filter matching at most ``filter_exact_rows`` rows is answered exactly over those rows
  (every match when fewer than k qualify); a broader one searches the index with the selector and
  a beam (ef / nprobe) widened by 1 / selectivity, at most ``filter_boost`` times.
- Category names get small integer codes; a code is freed when no live row carries it, so churning
  categories does not grow memory.
- Determinism: HNSW levels are derived from the label (not from FAISS's RNG) and HNSW rows are
  inserted one at a time, so two replicas that apply the same records in the same order build the
  same graph however the records were batched. That is what makes snapshot + replay answer exactly
  like a replica that never stopped (ARCHITECTURE.md invariant 4).
- Memory layout (HNSW, the serving kind): the graph keeps its vectors in float16
  (``hnsw_storage``; half the bytes a search touches, scores within ~1e-3 of float32), and a bulk
  build or rebuild of at least 20,000 rows renumbers the rows by k-means cell and sub-cell
  (``hnsw_reorder``),
  so the nodes a search hops between sit near each other in memory. Rows appended later go at the
  end until the next rebuild. FAISS's own arrays get the same spare capacity as ours when a state
  is built or restored, so the first upsert after a restart or a rebuild does not reallocate a
  gigabyte under the write lock.
- IVF kinds need training: until ``train_min`` vectors exist they serve from an exact Flat index,
  then a rebuild trains the IVF and swaps it in.
- GPU: with ``device = auto|gpu`` and a visible GPU, Flat/IVF kinds move to the GPU; GPU FAISS takes
  no IDSelector, so filters are applied after the search with a growing over-fetch instead.
- Errors: ``InvalidRequest`` (bad dimension, NaN, k out of range, unknown filter, a limit) and
  ``ModelVersionMismatch``; both carry a message meant for the caller.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from conf.settings import IndexSettings
from index.rwlock import RWLock

log = logging.getLogger(__name__)
_F: Any = faiss    # calls the bundled stubs type too narrowly (SearchParameters* keywords, downcasts)
_ptr = faiss.swig_ptr
_INTEGER = (int, np.integer)

FILTER_FIELDS = ("category", "status")
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
STATUSES = ("active", "inactive")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InvalidRequest(ValueError):
    """A request the index refuses; the message says why (it is sent back to gRPC callers)."""


class ModelVersionMismatch(Exception):
    """A vector of one model version met an index of another (invariant 1: never compared)."""

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"index holds model_version {expected!r}, request has {got!r}")
        self.expected = expected
        self.got = got


@dataclass(frozen=True, slots=True)
class Hit:
    item_id: str
    score: float


@dataclass(frozen=True, slots=True)
class Filter:
    """Parsed filters: category names (None = any) and which statuses to return."""

    categories: frozenset[str] | None = None
    active: bool = True
    inactive: bool = False

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.categories, self.active, self.inactive)


_NO_FILTER = Filter()
_VIEW_BYTES = 256 << 20     # filter views cached (bitmaps + gathered rows) before the cache is cleared
_SEED_SAMPLE = 4096         # matching rows sampled per broad filter to pick a search's entry points from


@dataclass(slots=True)
class _FilterView:
    """What one filter selects in one state version: the selector bitmap, how many rows, and
    (when at most ``filter_exact_rows``) the rows themselves and, once needed, their vectors."""

    version: int
    bits: np.ndarray
    count: int
    rows: np.ndarray | None = None      # (m,) int64
    vecs: np.ndarray | None = None      # (m, d) float32 = state.vecs[rows]
    seeds: np.ndarray | None = None     # (s,) int32: a fixed sample of the rows (HNSW entry points)
    seed_vecs: np.ndarray | None = None  # (s, d) float32

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes + sum(a.nbytes for a in (self.rows, self.vecs, self.seeds, self.seed_vecs)
                                      if a is not None)


@dataclass
class _State:
    """Everything a search reads. Replaced as a whole by a rebuild, mutated in place by writes."""

    index: Any                       # a faiss.Index; labels 0..n-1 are rows
    built_as: str                    # the FAISS structure: "Flat" while an IVF kind is untrained
    vecs: np.ndarray                 # (cap, d) float32, normalised
    cat: np.ndarray                  # (cap,) int32 category code, -1 = none
    cat_live: np.ndarray             # (codes,) int64 live rows per category code (0 = code free)
    active: np.ndarray               # (cap,) bool
    live: np.ndarray                 # (cap,) bool: False = tombstone
    bits: np.ndarray                 # (cap/8,) uint8 bitmap of live & active (IDSelectorBitmap)
    ts: np.ndarray                   # (cap,) int64 event time of the record behind the row (0 = none)
    ids: list[str] = field(default_factory=list)
    removed: dict[str, int] = field(default_factory=dict)   # deleted id -> event time of the removal
    label_of: dict[str, int] = field(default_factory=dict)
    n: int = 0
    dead: int = 0
    selectable: int = 0              # rows that are live and active
    version: int = 0                 # bumped by every write chunk (filter bitmap cache key)


class ItemIndex:
    def __init__(self, settings: IndexSettings, *, use_gpu: bool | None = None) -> None:
        self.settings = settings
        self.dim = settings.dim
        self.model_version: str = settings.model_version
        faiss.omp_set_num_threads(settings.omp_threads)
        if use_gpu is None:
            use_gpu = settings.device == "gpu" or (
                settings.device == "auto" and hasattr(faiss, "StandardGpuResources")
                and faiss.get_num_gpus() > 0)
        if settings.device == "gpu" and not (hasattr(faiss, "StandardGpuResources")
                                             and faiss.get_num_gpus() > 0):
            raise RuntimeError("index.device = gpu but faiss sees no GPU (faiss-gpu installed?)")
        self._gpu_res = faiss.StandardGpuResources() if use_gpu else None
        self._lock = RWLock()
        self._categories: dict[str, int] = {}       # name -> code; changed under the write lock only
        self._category_names: list[str | None] = []  # code -> name, None = free
        self._free_codes: list[int] = []
        self._pending: list[tuple[Any, ...]] | None = None   # writes during a rebuild
        self._compactor: threading.Thread | None = None
        self._compactor_started = threading.Lock()
        self._writes = threading.Lock()     # one writer at a time; a rebuild's final catch-up holds it
        self._filter_cache: dict[tuple[Any, ...], _FilterView] = {}
        self._params_cache: dict[tuple[Any, ...], Any] = {}
        self.compactions = 0
        self.last_compaction_s = 0.0
        self._st = self._empty_state()

    # ------------------------------------------------------------------------------- building
    def _new_faiss(self, kind: str, n_train: int) -> tuple[Any, str]:
        s, d = self.settings, self.dim
        ix: Any
        if kind == "HNSW":
            if s.hnsw_storage == "fp16":
                ix = _F.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_fp16, s.hnsw_m, faiss.METRIC_INNER_PRODUCT)
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

    def _alloc(self, ix: Any, built: str, cap: int) -> _State:
        return _State(index=ix, built_as=built, vecs=np.zeros((cap, self.dim), np.float32),
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
            hnsw, codes = ix.hnsw, _F.downcast_index(ix.storage).codes
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

    def _empty_state(self, cap: int = 1024) -> _State:
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

    def _faiss_add(self, st: _State, vecs: np.ndarray, first_label: int, *, bulk: bool) -> None:
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
                     ts: np.ndarray | None = None, removed: dict[str, int] | None = None) -> _State:
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

    # --------------------------------------------------------------------------------- writes
    def _check_vectors(self, vectors: Any, what: str) -> np.ndarray:
        """(n, d) float32, finite, normalised; one pass (NaN and inf show up in the squared norm)."""
        if type(vectors) is np.ndarray and vectors.dtype == np.float32 and vectors.shape == (self.dim,):
            sq = float(vectors @ vectors)            # the serving hot path: one query, one BLAS call
            if math.isfinite(sq) and sq > 0:
                if abs(sq - 1.0) < 1e-6 and vectors.flags.c_contiguous:
                    return vectors[None, :]
                return (vectors / math.sqrt(sq))[None, :]
        try:
            x = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InvalidRequest(f"{what}: not numeric ({e})") from None
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InvalidRequest(f"{what}: expected dimension {self.dim}, got shape {tuple(x.shape)}")
        sq = np.einsum("ij,ij->i", x, x)
        if not np.isfinite(sq).all():
            raise InvalidRequest(f"{what}: contains NaN or infinity (or values too large to square)")
        if not sq.all():
            raise InvalidRequest(f"{what}: contains an all-zero vector (no direction to compare)")
        return np.ascontiguousarray(x / np.sqrt(sq)[:, None])   # FAISS reads raw C-order rows

    def _check_version(self, model_version: str | None) -> None:
        if not model_version:
            return
        if not self.model_version:
            self.model_version = model_version
            log.info("index model_version set to %s by the first record", model_version)
        elif model_version != self.model_version:
            raise ModelVersionMismatch(self.model_version, model_version)

    def check_ids(self, ids: Sequence[str]) -> None:
        """Item ids: non-empty strings of at most ``max_id_chars`` characters (the contract's limit),
        UTF-8 encodable, without control characters; else ``InvalidRequest`` naming the first bad one."""
        limit = self.settings.max_id_chars
        if limit is None:
            raise RuntimeError("index.max_id_chars is unset: build IndexSettings through Settings")
        for item in ids:
            if not isinstance(item, str) or not item:
                raise InvalidRequest("item ids must be non-empty strings")
            if len(item) > limit:
                raise InvalidRequest(f"item id {item[:32]!r}... is {len(item)} characters, "
                                     f"limit {limit} (contracts.max_id_chars)")
            if item.isascii() and item.isprintable():
                continue                                  # the common case, two C loops
            if _CONTROL.search(item):
                raise InvalidRequest(f"item id {item!r} contains a control character")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequest(f"item id {item!r} is not valid UTF-8 (a lone surrogate)") from None

    def _category_code(self, name: str | None) -> int:
        """The code of a category name, allocating one (a freed code first); under the write lock."""
        if not name:
            return -1
        code = self._categories.get(name)
        if code is None:
            if self._free_codes:
                code = self._free_codes.pop()
                self._category_names[code] = name
            else:
                code = len(self._category_names)
                self._category_names.append(name)
            self._categories[name] = code
        return code

    def _release_codes(self, st: _State, codes: Collection[int]) -> None:
        """Free the codes no live row of the served state carries any more (under the write lock).

        A rebuild in progress replays the same writes, so its counts reach zero at the same point.
        """
        for code in codes:
            name = self._category_names[code] if code >= 0 else None
            if name is None:
                continue
            if code >= len(st.cat_live) or st.cat_live[code] == 0:
                self._category_names[code] = None
                del self._categories[name]
                self._free_codes.append(code)

    def upsert(self, ids: Sequence[str], vectors: Any, categories: Sequence[str | None] | None = None,
               statuses: Sequence[str] | None = None, model_version: str | None = None,
               event_ts: Sequence[int] | None = None) -> int:
        """Insert or replace items; returns the number applied. Later duplicates in a batch win
        (the feeder's batches are runs of a topic); the gRPC service refuses duplicates.

        ``event_ts`` (the feeder passes the record times): an item whose stored record or removal
        is newer is left alone, so a late, older record can never bring back a removed listing
        (invariant 6) or an outdated vector. Without it every item is applied.
        """
        ids = list(ids)
        x = self._check_vectors(vectors, "vectors") if ids else np.zeros((0, self.dim), np.float32)
        if len(x) != len(ids):
            raise InvalidRequest(f"{len(ids)} ids but {len(x)} vectors")
        for name, seq in (("categories", categories), ("statuses", statuses), ("event_ts", event_ts)):
            if seq is not None and len(seq) != len(ids):
                raise InvalidRequest(f"{len(ids)} ids but {len(seq)} {name}")
        self.check_ids(ids)
        if categories is not None and any(c is not None and not isinstance(c, str) for c in categories):
            raise InvalidRequest("categories must be strings (or None / empty for none)")
        if statuses is not None and any(s not in STATUSES for s in statuses):
            raise InvalidRequest(f"status must be one of {list(STATUSES)}")
        self._check_version(model_version)
        if not ids:
            return 0
        last = {item: i for i, item in enumerate(ids)}           # dedupe: the last one wins
        keep = np.fromiter(sorted(last.values()), dtype=np.int64)
        ids = [ids[i] for i in keep]
        x = x[keep]
        cats = [categories[i] or None for i in keep] if categories else [None] * len(keep)  # coded in _write
        act = np.array([statuses[i] == "active" if statuses else True for i in keep], dtype=bool)
        ts = None if event_ts is None else np.array([event_ts[i] for i in keep], dtype=np.int64)
        step, applied = self.settings.write_chunk, 0
        for a in range(0, len(ids), step):
            op = ("u", ids[a:a + step], x[a:a + step], cats[a:a + step], act[a:a + step],
                  None if ts is None else ts[a:a + step])
            applied += self._write(op)
        self._maybe_compact()
        return applied

    def load_batch(self, ids: Sequence[str], vectors: Any, categories: Sequence[str | None] | None = None,
                   statuses: Sequence[str] | None = None, model_version: str | None = None) -> int:
        """Replace the whole content with one bulk build (OpenMP): a daily batch, a benchmark.

        Much faster than ``upsert`` for millions of rows (one batched FAISS add); the build runs
        without the lock and is swapped in like a compaction. Writes that race with it are lost,
        so call it before the feeder starts.
        """
        ids = list(ids)
        x = self._check_vectors(vectors, "vectors")
        if len(x) != len(ids) or len(set(ids)) != len(ids):
            raise InvalidRequest("load_batch needs one vector per id and unique ids")
        self.check_ids(ids)
        self._check_version(model_version)
        names = sorted({c for c in categories if c}) if categories else []
        codes = {c: i for i, c in enumerate(names)}             # a fresh code table, swapped in below
        cats = np.array([codes[c] if c else -1 for c in categories] if categories else
                        np.full(len(ids), -1), dtype=np.int32)
        act = np.array([s == "active" for s in statuses] if statuses else np.ones(len(ids)), bool)
        self.wait_compaction()
        new = self._build_state(ids, x, cats, act)
        new.cat_live = np.bincount(cats[cats >= 0], minlength=max(16, len(names))).astype(np.int64)
        with self._lock.write():
            self._st = new
            self._categories, self._category_names, self._free_codes = codes, list(names), []
            self._filter_cache.clear()
        return len(ids)

    def delete(self, ids: Sequence[str], event_ts: Sequence[int] | None = None) -> int:
        """Remove items; unknown ids are ignored. Returns how many were present.

        ``event_ts``: the removal is remembered with its time, and an item whose stored record is
        newer than the removal is kept (a re-listing after the removal wins).
        """
        ids = list(ids)
        self.check_ids(ids)
        if event_ts is not None and len(event_ts) != len(ids):
            raise InvalidRequest(f"{len(ids)} ids but {len(event_ts)} event_ts")
        removed = 0
        step = self.settings.write_chunk * 8    # a delete is cheap: a bit flip per id
        for a in range(0, len(ids), step):
            op = ("d", ids[a:a + step], None if event_ts is None else list(event_ts[a:a + step]))
            removed += self._write(op)
        self._maybe_compact()
        return removed

    def _write(self, op: tuple[Any, ...]) -> int:
        """Apply one write chunk to the served state, and log it for a rebuild in progress."""
        with self._writes, self._lock.write():
            st = self._st
            if op[0] == "u":                  # category names -> codes, here where codes may change
                op = (*op[:3], np.array([self._category_code(c) for c in op[3]], np.int32), *op[4:])
            touched = {int(st.cat[lab]) for item in op[1] if (lab := st.label_of.get(item)) is not None}
            if op[0] == "u":
                touched.update(op[3].tolist())    # a new code whose items the event-time rule refused
            n = self._apply(st, op)
            self._release_codes(st, touched)
            if self._pending is not None:
                self._pending.append(op)
            return n

    def _apply(self, st: _State, op: tuple[Any, ...]) -> int:
        if op[0] == "d":
            n = 0
            for j, item in enumerate(op[1]):
                label = st.label_of.get(item)
                if op[2] is not None:
                    t = int(op[2][j])
                    if label is not None and st.ts[label] > t:
                        continue                      # re-listed after this removal
                    st.removed[item] = max(t, st.removed.get(item, t))
                if label is not None:
                    del st.label_of[item]
                    self._kill(st, label)
                    n += 1
            st.version += 1
            return n
        _, ids, x, cats, act, ts = op
        if ts is not None:                            # the event-time rule, per item
            keep = [j for j, item in enumerate(ids) if ts[j] >= self._newest(st, item)]
            if len(keep) < len(ids):
                ids = [ids[j] for j in keep]
                x, cats, act, ts = x[keep], cats[keep], act[keep], ts[keep]
            for item in ids:
                st.removed.pop(item, None)
            if not ids:
                return 0
        for item in ids:
            label = st.label_of.get(item)
            if label is not None:
                self._kill(st, label)
        m, n0 = len(ids), st.n
        if n0 + m > len(st.live):
            self._grow(st, n0 + m)
        rows = slice(n0, n0 + m)
        st.vecs[rows] = x
        st.cat[rows] = cats
        coded = cats[cats >= 0]
        if len(coded) and coded.max() >= len(st.cat_live):
            st.cat_live = np.concatenate([st.cat_live, np.zeros(2 * int(coded.max()) + 16 - len(st.cat_live),
                                                                np.int64)])
        np.add.at(st.cat_live, coded, 1)
        st.active[rows] = act
        st.live[rows] = True
        st.ts[rows] = 0 if ts is None else ts
        self._faiss_add(st, x, n0, bulk=False)
        st.ids.extend(ids)
        for i, item in enumerate(ids):
            st.label_of[item] = n0 + i
        labels = np.arange(n0, n0 + m)[act]
        np.bitwise_or.at(st.bits, labels >> 3, (1 << (labels & 7)).astype(np.uint8))
        st.selectable += int(act.sum())
        st.n = n0 + m
        st.version += 1
        return m

    @staticmethod
    def _newest(st: _State, item: str) -> int:
        label = st.label_of.get(item)
        t = st.removed.get(item, -1)
        return max(t, int(st.ts[label])) if label is not None else t

    @staticmethod
    def _kill(st: _State, label: int) -> None:
        st.live[label] = False
        st.dead += 1
        if st.cat[label] >= 0:
            st.cat_live[st.cat[label]] -= 1
        if st.active[label]:
            st.selectable -= 1
            st.bits[label >> 3] &= np.uint8(~(1 << (label & 7)) & 0xFF)

    def _grow(self, st: _State, need: int) -> None:
        cap = max(need, 2 * len(st.live))
        log.info("index row capacity %d -> %d (one copy of the arrays under the write lock)", len(st.live), cap)
        if self._gpu_res is None or st.built_as == "HNSW":
            self._reserve(st.index, st.built_as, cap)
        st.vecs = np.concatenate([st.vecs, np.zeros((cap - len(st.vecs), st.vecs.shape[1]), np.float32)])
        st.cat = np.concatenate([st.cat, np.full(cap - len(st.cat), -1, np.int32)])
        st.active = np.concatenate([st.active, np.zeros(cap - len(st.active), bool)])
        st.live = np.concatenate([st.live, np.zeros(cap - len(st.live), bool)])
        st.bits = np.concatenate([st.bits, np.zeros(cap // 8 + 1 - len(st.bits), np.uint8)])
        st.ts = np.concatenate([st.ts, np.zeros(cap - len(st.ts), np.int64)])

    # ----------------------------------------------------------------------------- compaction
    def _needs_rebuild(self, st: _State) -> bool:
        s = self.settings
        if st.dead >= max(s.compaction_min_dead, s.compaction_dead_ratio * st.n):
            return True
        return (s.kind in ("IVFFlat", "IVFPQ") and st.built_as == "Flat"
                and st.n - st.dead >= s.train_min)

    def _maybe_compact(self) -> None:
        if self._compactor is None and self._needs_rebuild(self._st):
            self.compact(wait=False)

    def compact(self, wait: bool = True) -> None:
        """Rebuild from the live rows in a background thread and swap it in; ``wait`` joins it."""
        with self._lock.write(), self._compactor_started:
            if self._compactor is None:
                self._compactor = threading.Thread(target=self._compact, name="index-compaction",
                                                   daemon=True)
                self._compactor.start()
            t = self._compactor
        if wait:
            t.join()

    def wait_compaction(self, timeout: float | None = None) -> None:
        with self._compactor_started:     # never see a thread between its creation and start()
            t = self._compactor
        if t is not None:
            t.join(timeout)

    @property
    def compacting(self) -> bool:
        return self._compactor is not None

    def _catch_up(self, new: _State) -> bool:
        """Replay the logged writes into ``new``; swap it in (True) when at most 4 were left."""
        with self._lock.write():
            ops, self._pending = self._pending or [], []
            if len(ops) <= 4:
                for op in ops:
                    self._apply(new, op)
                self._st = new                                     # the swap
                self._pending = None
                self._filter_cache.clear()
                return True
        for op in ops:
            self._apply(new, op)
        return False

    def _compact(self) -> None:
        t0 = time.perf_counter()
        try:
            with self._lock.read():     # a consistent copy; writers wait, searches go on
                st = self._st
                rows = np.flatnonzero(st.live[: st.n])
                ids = [st.ids[r] for r in rows]
                vecs, cat, act, ts = st.vecs[rows], st.cat[rows], st.active[rows], st.ts[rows]
                removed = dict(st.removed)
                self._pending = []      # safe: no writer can run while we hold the read side
            new = self._build_state(ids, vecs, cat, act, ts, removed)   # the slow part, no lock held
            # Catch up with the writes made meanwhile, outside the lock, and swap once only a few
            # are left. Under a steady write stream the backlog may never shrink that far, so after
            # three rounds new writes pause (searches go on, on the old state) until the swap.
            for _ in range(3):
                if self._catch_up(new):
                    break
            else:
                with self._writes:
                    while not self._catch_up(new):
                        pass
            self.compactions += 1
            self.last_compaction_s = time.perf_counter() - t0
            log.info("index rebuilt as %s: %d live rows (%d dead dropped) in %.2f s",
                     new.built_as, len(ids), st.dead, self.last_compaction_s)
        except Exception:
            log.exception("index compaction failed; serving the old index")
            with self._lock.write():
                self._pending = None
        finally:
            self._compactor = None
        if self._needs_rebuild(self._st):
            self._maybe_compact()

    # ------------------------------------------------------------------------------- searches
    def parse_filters(self, filters: Mapping[str, Collection[str]] | None) -> Filter:
        """``{"category": [...], "status": ["active"|"inactive"]}``; default: active, any category."""
        if not filters:
            return _NO_FILTER
        unknown = set(filters) - set(FILTER_FIELDS)
        if unknown:
            raise InvalidRequest(f"unknown filter field(s) {sorted(unknown)}; known: {list(FILTER_FIELDS)}")
        cats: frozenset[str] | None = None
        if "category" in filters:
            values = list(filters["category"])
            if not values or len(values) > self.settings.max_categories:
                raise InvalidRequest(f"category filter needs 1..{self.settings.max_categories} values")
            if any(not isinstance(v, str) or not v for v in values):
                raise InvalidRequest("category filter values must be non-empty strings")
            cats = frozenset(values)      # names: codes are looked up under the read lock
        active, inactive = True, False
        if "status" in filters:
            statuses = set(filters["status"])
            if not statuses or statuses - set(STATUSES):
                raise InvalidRequest(f"status filter values must be among {list(STATUSES)}")
            active, inactive = "active" in statuses, "inactive" in statuses
        f = Filter(cats, active, inactive)
        return _NO_FILTER if f == _NO_FILTER else f

    def _mask(self, st: _State, f: Filter) -> np.ndarray:
        """Rows the filter selects (under the read lock: category codes do not change meanwhile)."""
        n = st.n
        m = st.live[:n].copy()
        if not (f.active and f.inactive):
            m &= st.active[:n] if f.active else ~st.active[:n]
        if f.categories is not None:
            codes = [self._categories.get(c, -2) for c in f.categories]     # unseen: matches nothing
            m &= np.isin(st.cat[:n], np.array(codes, np.int32))
        return m

    def _view(self, st: _State, f: Filter) -> _FilterView:
        """The rows a filter selects in this state version (cached until the next write)."""
        hit = self._filter_cache.get(f.key)
        if hit is not None and hit.version == st.version:
            return hit
        mask = self._mask(st, f)
        count = int(np.count_nonzero(mask))
        rows = np.flatnonzero(mask) if count <= self._exact_rows else None
        view = _FilterView(st.version, np.packbits(mask, bitorder="little"), count, rows)
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

    def _params(self, st: _State, bits: np.ndarray | None, k: int, knobs: Mapping[str, int]) -> Any:
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

    def _params_for(self, st: _State, sel: Any, k: int, knobs: Mapping[str, int]) -> Any:
        if st.built_as == "HNSW":
            ef = max(int(knobs.get("ef_search", self.settings.ef_search)), k)
            return _F.SearchParametersHNSW(sel=sel, efSearch=ef) if sel else \
                _F.SearchParametersHNSW(efSearch=ef)
        if st.built_as in ("IVFFlat", "IVFPQ"):
            nprobe = int(knobs.get("nprobe", self.settings.nprobe))
            return _F.SearchParametersIVF(sel=sel, nprobe=nprobe) if sel else \
                _F.SearchParametersIVF(nprobe=nprobe)
        return _F.SearchParameters(sel=sel) if sel else None

    def check_k(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, _INTEGER) or not 1 <= k <= self.settings.max_k:
            raise InvalidRequest(f"k must be an integer in 1..{self.settings.max_k}, got {k!r}")
        return int(k)

    def check_knobs(self, knobs: Mapping[str, int]) -> dict[str, int]:
        """``ef_search`` in 1..``max_ef_search``, ``nprobe`` in 1..``max_nprobe``; nothing else."""
        s = self.settings
        limits = {"ef_search": s.max_ef_search, "nprobe": s.max_nprobe}
        for name, v in knobs.items():
            if name not in limits:
                raise InvalidRequest(f"unknown search knob {name!r}; known: {sorted(limits)}")
            if isinstance(v, bool) or not isinstance(v, _INTEGER) or not 1 <= v <= limits[name]:
                raise InvalidRequest(f"{name} must be an integer in 1..{limits[name]} "
                                     f"(index.max_{name}), got {v!r}")
        return {name: int(v) for name, v in knobs.items()}

    def _cost(self, st: _State, k: int, knobs: Mapping[str, int]) -> int:
        """Estimated distance computations of one query (what the work limits count)."""
        s = self.settings
        if st.built_as == "HNSW":     # every expanded node scores its <= 2M level-0 neighbours
            return max(int(knobs.get("ef_search", s.ef_search)), k) * 2 * s.hnsw_m
        if st.built_as in ("IVFFlat", "IVFPQ"):
            nlist = int(st.index.nlist)
            return nlist + int(knobs.get("nprobe", s.nprobe)) * -(-st.n // nlist)
        return max(1, st.n)

    def _widen(self, st: _State, count: int, k: int, knobs: Mapping[str, int]) -> Mapping[str, int]:
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

    def _plan(self, st: _State, f: Filter, k: int,
              knobs: Mapping[str, int]) -> tuple[int, _FilterView | None, Mapping[str, int]]:
        """(distance computations a query, the filter's rows or None, knobs): under the read lock."""
        if f is _NO_FILTER:
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
        f = self.parse_filters(filters) if filters else _NO_FILTER
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
    def _gathered(st: _State, view: _FilterView | None) -> _FilterView | None:
        """Under the read lock: the view when this is an exact search, its rows' vectors copied once
        a version (rows are append-only, so the copy and ``st.ids`` stay right after the lock)."""
        if view is None or view.rows is None:
            return None
        if view.vecs is None:
            view.vecs = st.vecs[view.rows]       # (m, d); two threads may both copy: same result
        return view

    def _search_locked(self, st: _State, q: np.ndarray, k: int, f: Filter, view: _FilterView | None,
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
    def _search_exact(st: _State, view: _FilterView, q: np.ndarray,
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

    def _search_post_filter(self, st: _State, q: np.ndarray, k: int,
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

    def lookup(self, ids: Sequence[str]) -> list[bool]:
        """For each id: is it in the index, live and active (i.e. may it be recommended)?"""
        with self._lock.read():
            st = self._st
            out = []
            for item in ids:
                label = st.label_of.get(item)
                out.append(label is not None and bool(st.active[label]))
            return out

    def vector(self, item_id: str) -> np.ndarray | None:
        with self._lock.read():
            label = self._st.label_of.get(item_id)
            return None if label is None else self._st.vecs[label].copy()

    def __len__(self) -> int:
        return len(self._st.label_of)

    def stats(self) -> dict[str, Any]:
        st = self._st
        return {"kind": self.settings.kind, "built_as": st.built_as, "dim": self.dim,
                "live": len(st.label_of), "rows": st.n, "tombstones": st.dead,
                "active": st.selectable, "model_version": self.model_version,
                "compacting": self.compacting, "compactions": self.compactions,
                "last_compaction_s": round(self.last_compaction_s, 3), "gpu": self.on_gpu,
                "vector_bytes": st.n * self.dim * 4}

    # ------------------------------------------------------------------- snapshot (state I/O)
    def export_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray], list[str], Any]:
        """(meta, arrays, ids, cpu faiss index) of a consistent point; call under ``reading()``."""
        st = self._st
        n = st.n
        ix = st.index
        if self._gpu_res is not None and st.built_as != "HNSW":
            ix = faiss.index_gpu_to_cpu(ix)
        meta = {"kind": self.settings.kind, "built_as": st.built_as, "hnsw_storage": self.settings.hnsw_storage,
                "dim": self.dim, "rows": n,
                "dead": st.dead, "model_version": self.model_version,
                "categories": list(self._category_names)}
        meta["removed"] = dict(st.removed)
        arrays = {"vecs": st.vecs[:n], "cat": st.cat[:n], "active": st.active[:n],
                  "live": st.live[:n], "ts": st.ts[:n]}
        return meta, arrays, st.ids[:n], ix

    def reading(self) -> Any:
        """The read side of the lock: a consistent view for snapshots (writers wait)."""
        return self._lock.read()

    @classmethod
    def from_state(cls, settings: IndexSettings, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                   ids: list[str], faiss_index: Any | None) -> ItemIndex:
        self = cls(settings)
        if meta["dim"] != self.dim:
            raise ValueError(f"snapshot has dimension {meta['dim']}, settings say {self.dim}")
        self.model_version = meta["model_version"] or settings.model_version
        snap_version = meta["model_version"]
        if settings.model_version and snap_version and snap_version != settings.model_version:
            raise ValueError(f"snapshot is model_version {meta['model_version']!r}, "
                             f"settings say {settings.model_version!r}")
        self._category_names = list(meta["categories"])        # None = a free code
        self._categories = {c: i for i, c in enumerate(self._category_names) if c}
        n = int(meta["rows"])
        live = np.asarray(arrays["live"], bool)
        storage = meta.get("hnsw_storage", "flat")     # snapshots before the setting: float32
        same = meta["kind"] == settings.kind and (meta["built_as"] != "HNSW" or storage == settings.hnsw_storage)
        if faiss_index is None or not same or faiss_index.ntotal != n:
            rows = np.flatnonzero(live)          # different kind or storage, or no index file: rebuild
            log.warning("snapshot index is %s/%s, settings say %s/%s: rebuilding it from the vectors",
                        meta["kind"], storage, settings.kind, settings.hnsw_storage)
            self._st = self._build_state([ids[r] for r in rows], arrays["vecs"][rows],
                                         arrays["cat"][rows], arrays["active"][rows],
                                         arrays["ts"][rows], meta["removed"])
            self._free_unused_codes()
            return self
        cap = max(1024, int(n * 1.25))
        self._reserve(faiss_index, meta["built_as"], cap)
        st = self._alloc(self._to_device(faiss_index, meta["built_as"]), meta["built_as"], cap)
        st.ts[:n] = arrays["ts"]
        st.removed = {k: int(v) for k, v in meta["removed"].items()}
        st.vecs[:n] = arrays["vecs"]
        st.cat[:n] = arrays["cat"]
        st.active[:n] = arrays["active"]
        st.live[:n] = live
        st.ids = list(ids)
        st.label_of = {ids[r]: int(r) for r in np.flatnonzero(live)}
        st.n = n
        st.dead = int(meta["dead"])
        sel = live & st.active[:n]
        st.selectable = int(sel.sum())
        st.bits[: (n + 7) // 8] = np.packbits(sel, bitorder="little")
        st.cat_live = self._count_categories(st.cat[:n], live)
        if st.built_as == "HNSW":
            st.index.hnsw.efSearch = settings.ef_search
        self._st = st
        self._free_unused_codes()
        return self

    def _free_unused_codes(self) -> None:
        """After a restore: codes no live row carries (or that an older snapshot kept) are free."""
        counts = self._st.cat_live
        for code, name in enumerate(self._category_names):
            if name is not None and (code >= len(counts) or counts[code] == 0):
                self._category_names[code] = None
                del self._categories[name]
        self._free_codes = [c for c, name in enumerate(self._category_names) if name is None]
