"""Small typed records of the index, importable without FAISS: hits, filters, write chunks.

A write travels as one ``UpsertChunk`` or ``DeleteChunk``: applied to the served state and, while a
rebuild runs, logged and replayed into the new state (index/compaction.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FILTER_FIELDS = ("category", "status")
STATUSES = ("active", "inactive")


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


NO_FILTER = Filter()


@dataclass(frozen=True, slots=True)
class UpsertChunk:
    """At most ``write_chunk`` items inserted or replaced under one hold of the write lock."""

    ids: list[str]
    vecs: np.ndarray            # (m, d) float32, normalised
    cats: np.ndarray            # (m,) int32 category codes, -1 = none (coded under the write lock)
    active: np.ndarray          # (m,) bool
    ts: np.ndarray | None       # (m,) int64 event times, None = apply unconditionally


@dataclass(frozen=True, slots=True)
class DeleteChunk:
    """Items removed under one hold of the write lock; ``ts``: the removals' event times, or None."""

    ids: list[str]
    ts: list[int] | None


WriteChunk = UpsertChunk | DeleteChunk
