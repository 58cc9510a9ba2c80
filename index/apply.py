"""Applying one write chunk to a state: kill replaced rows, append new ones, keep the bitmaps and
category counts right, honour event times. Used on the served state and, during a rebuild, to
replay the logged chunks into the new one.
"""

from __future__ import annotations

import logging

import numpy as np

from index.layout import Layout
from index.state import State
from index.types import DeleteChunk, WriteChunk

log = logging.getLogger("index.ann")


class Apply(Layout):
    def _apply(self, st: State, chunk: WriteChunk) -> int:
        if isinstance(chunk, DeleteChunk):
            n = 0
            for j, item in enumerate(chunk.ids):
                label = st.label_of.get(item)
                if chunk.ts is not None:
                    t = int(chunk.ts[j])
                    if label is not None and st.ts[label] > t:
                        continue                      # re-listed after this removal
                    st.removed[item] = max(t, st.removed.get(item, t))
                if label is not None:
                    del st.label_of[item]
                    self._kill(st, label)
                    n += 1
            st.version += 1
            return n
        ids, x, cats, act, ts = chunk.ids, chunk.vecs, chunk.cats, chunk.active, chunk.ts
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
    def _newest(st: State, item: str) -> int:
        label = st.label_of.get(item)
        t = st.removed.get(item, -1)
        return max(t, int(st.ts[label])) if label is not None else t

    @staticmethod
    def _kill(st: State, label: int) -> None:
        st.live[label] = False
        st.dead += 1
        if st.cat[label] >= 0:
            st.cat_live[st.cat[label]] -= 1
        if st.active[label]:
            st.selectable -= 1
            st.bits[label >> 3] &= np.uint8(~(1 << (label & 7)) & 0xFF)

    def _grow(self, st: State, need: int) -> None:
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
