"""Background compaction: once tombstones pass ``compaction_dead_ratio`` (or an IVF kind has enough
rows to train), rebuild from the live rows without the lock, replay the write chunks logged
meanwhile, and swap the new state in under the write lock (one pointer assignment).
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from index.apply import Apply
from index.heap import release_free_heap
from index.state import State

log = logging.getLogger("index.ann")



class Compaction(Apply):
    def _needs_rebuild(self, st: State) -> bool:
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
                self._compactor = threading.Thread(target=self._compact_and_release, name="index-compaction",
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

    def _catch_up(self, new: State) -> bool:
        """Replay the logged writes into ``new``; swap it in (True) when at most 4 were left."""
        with self._lock.write():
            chunks, self._pending = self._pending or [], []
            if len(chunks) <= 4:
                for chunk in chunks:
                    self._apply(new, chunk)
                self._st = new                                     # the swap
                self._pending = None
                self._filter_cache.clear()
                return True
        for chunk in chunks:
            self._apply(new, chunk)
        return False

    def _compact_and_release(self) -> None:
        self._compact()             # the old state and the rebuild's temporaries are garbage now
        log.debug("returned the freed heap to the OS in %.3f s", release_free_heap())

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
