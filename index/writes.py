"""The write API: ``upsert``, ``load_batch`` and ``delete`` checked, deduplicated, cut into typed
chunks and applied under the write lock; category names coded and freed.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from index.compaction import Compaction
from index.errors import InvalidRequest, ModelVersionMismatch
from index.state import State
from index.types import STATUSES, DeleteChunk, UpsertChunk, WriteChunk

log = logging.getLogger("index.ann")


class Writes(Compaction):
    def _check_version(self, model_version: str | None) -> None:
        if not model_version:
            return
        if not self.model_version:
            self.model_version = model_version
            log.info("index model_version set to %s by the first record", model_version)
        elif model_version != self.model_version:
            raise ModelVersionMismatch(self.model_version, model_version)


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

    def _release_codes(self, st: State, codes: Collection[int]) -> None:
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
        cats = [categories[i] or None for i in keep] if categories else [None] * len(keep)  # coded under the lock
        act = np.array([statuses[i] == "active" if statuses else True for i in keep], dtype=bool)
        ts = None if event_ts is None else np.array([event_ts[i] for i in keep], dtype=np.int64)
        step, applied = self.settings.write_chunk, 0
        for a in range(0, len(ids), step):
            with self._writes, self._lock.write():     # category names -> codes, here where codes may change
                codes = np.array([self._category_code(c) for c in cats[a:a + step]], np.int32)
                applied += self._commit(UpsertChunk(ids[a:a + step], x[a:a + step], codes, act[a:a + step],
                                                    None if ts is None else ts[a:a + step]))
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
            chunk = DeleteChunk(ids[a:a + step], None if event_ts is None else list(event_ts[a:a + step]))
            with self._writes, self._lock.write():
                removed += self._commit(chunk)
        self._maybe_compact()
        return removed

    def _commit(self, chunk: WriteChunk) -> int:
        """Apply one chunk to the served state and log it for a rebuild in progress (write lock held)."""
        st = self._st
        touched = {int(st.cat[lab]) for item in chunk.ids if (lab := st.label_of.get(item)) is not None}
        if isinstance(chunk, UpsertChunk):
            touched.update(chunk.cats.tolist())    # a new code whose items the event-time rule refused
        n = self._apply(st, chunk)
        self._release_codes(st, touched)
        if self._pending is not None:
            self._pending.append(chunk)
        return n
