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
  ``ModelVersionMismatch`` (index/errors.py, no FAISS); both carry a message meant for the caller.

The parts, one module each: ``checks`` (request validation), ``types`` (hits, filters, typed
write chunks), ``state`` (what a search reads), ``layout`` (FAISS construction, row order),
``apply`` (one chunk applied to a state), ``compaction`` (the rebuild thread), ``writes`` (the
write API), ``search`` (filters, limits, the read lock per group), ``state_io`` (arrays for
snapshots). ``ItemIndex`` puts them together.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import faiss
import numpy as np

from conf.settings import IndexSettings
from index.rwlock import RWLock
from index.search import Search
from index.state_io import StateIO
from index.writes import Writes

log = logging.getLogger(__name__)


class ItemIndex(Writes, Search, StateIO):
    def __init__(self, settings: IndexSettings, *, use_gpu: bool | None = None) -> None:
        self.settings = settings
        self.dim = settings.dim
        self.model_version = settings.model_version
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
        self._categories = {}
        self._category_names = []
        self._free_codes = []
        self._pending = None
        self._compactor = None
        self._compactor_started = threading.Lock()
        self._writes = threading.Lock()
        self._filter_cache = {}
        self._params_cache = {}
        self.compactions = 0
        self.last_compaction_s = 0.0
        self._st = self._empty_state()

    @classmethod
    def from_state(cls, settings: IndexSettings, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                   ids: list[str], faiss_index: Any | None) -> ItemIndex:
        """An index restored from ``export_state``'s output (rebuilt when kind or storage differ)."""
        index = cls(settings)
        index._restore(meta, arrays, ids, faiss_index)
        return index

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
