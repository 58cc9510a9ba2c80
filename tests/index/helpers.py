"""Helpers shared by the index tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import numpy as np

from index.ann import ItemIndex


def top_ids(index: ItemIndex, q: np.ndarray, k: int, **kw) -> list[list[str]]:
    return [[h.item_id for h in row] for row in index.search(q, k, **kw)]


def clustered(n: int, d: int = 16, cells: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((cells, d)).astype(np.float32)
    x = centres[rng.integers(0, cells, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
