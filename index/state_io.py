"""The index's state as plain arrays and back: what ``index/snapshot.py`` writes and reads."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import faiss
import numpy as np

from index.layout import Layout

log = logging.getLogger("index.ann")


class StateIO(Layout):
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

    def _restore(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], ids: list[str],
                 faiss_index: Any | None) -> None:
        """Fill a fresh index from ``export_state``'s output (``ItemIndex.from_state``)."""
        settings = self.settings
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
            return
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

    def _free_unused_codes(self) -> None:
        """After a restore: codes no live row carries (or that an older snapshot kept) are free."""
        counts = self._st.cat_live
        for code, name in enumerate(self._category_names):
            if name is not None and (code >= len(counts) or counts[code] == 0):
                self._category_names[code] = None
                del self._categories[name]
        self._free_codes = [c for c, name in enumerate(self._category_names) if name is None]
