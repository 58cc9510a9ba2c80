"""What a search reads (``State``), the rows a filter selects (``FilterView``), and the attributes
every part of ``ItemIndex`` shares (``IndexBase``). No FAISS import: the index object is opaque here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conf.settings import IndexSettings
from index.checks import check_ids, check_vectors
from index.rwlock import RWLock
from index.types import WriteChunk


@dataclass(slots=True)
class FilterView:
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
class State:
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


class IndexBase:
    """The attributes ``ItemIndex.__init__`` sets, declared once for the modules that share them."""

    settings: IndexSettings
    dim: int
    model_version: str
    _gpu_res: Any
    _lock: RWLock
    _categories: dict[str, int]             # name -> code; changed under the write lock only
    _category_names: list[str | None]       # code -> name, None = free
    _free_codes: list[int]
    _pending: list[WriteChunk] | None       # writes logged during a rebuild
    _compactor: threading.Thread | None
    _compactor_started: threading.Lock
    _writes: threading.Lock                 # one writer at a time; a rebuild's final catch-up holds it
    _filter_cache: dict[tuple[Any, ...], FilterView]
    _params_cache: dict[tuple[Any, ...], Any]
    compactions: int
    last_compaction_s: float
    _st: State

    def _check_vectors(self, vectors: Any, what: str) -> np.ndarray:
        return check_vectors(vectors, self.dim, what)

    def check_ids(self, ids: Any) -> None:
        check_ids(ids, self.settings)
