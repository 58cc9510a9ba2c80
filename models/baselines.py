"""Baselines scored in the same run and by the same full-ranking code as the two-tower model.

    pop = Popularity(split.train, n_items)                     # most-clicked items first
    knn = ItemKNN(split.train, n_items)                        # cosine co-occurrence, all neighbours
    mf = ImplicitALS(split.train, n_items, factors=64, reg=..., alpha=..., seed=0)
    scores = mf(histories)                                     # (B, I)
    recent = RecentPopularity(*ds.click_log(), n_items, window_ms=7 * DAY_MS)
    scores = recent(histories, times)                          # (B, I), clicks before each time

Each is fitted on the training prefixes only and scores any click history, so at test time every
model sees the same history (train + validation click). ImplicitALS is Hu, Koren & Volinsky (2008)
with conjugate-gradient updates (as in the `implicit` package, which is not installed here) on a
dense user x item matrix: fine for MovieLens-small and the synthetic sets (a few thousand users and
items). A user's vector for scoring is folded in from the given history with the item factors
fixed, i.e. the same least-squares step training uses, so the validation click counts at test
time as it does for the other models.
"""

from __future__ import annotations

import numpy as np


def _matrix(seqs: list[np.ndarray], n_items: int) -> np.ndarray:
    """(U, I) float32 binary click matrix."""
    r = np.zeros((len(seqs), n_items), np.float32)
    for u, s in enumerate(seqs):
        r[u, s] = 1.0
    return r


class Popularity:
    def __init__(self, train: list[np.ndarray], n_items: int) -> None:
        counts = np.zeros(n_items, np.float32)
        for s in train:
            np.add.at(counts, s, 1.0)
        self.counts = counts                                         # (I,)

    def __call__(self, histories: list[np.ndarray]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(histories), len(self.counts)))  # (B, I)


DAY_MS = 86_400_000


class RecentPopularity:
    """Time-aware popularity: score(j) at query time t = clicks on j by anyone in [t - window, t),
    ties broken by all clicks on j before t. Uses only clicks before the moment of the
    recommendation (strictly: a click at t itself, such as a target sharing the history's last
    timestamp, is not counted). It is fitted on the whole click log, since at time t every earlier
    click of every user is known; a scorer with query times (models/evaluate.py `times`)."""

    def __init__(self, ts: np.ndarray, items: np.ndarray, n_items: int, window_ms: int) -> None:
        order = np.argsort(ts, kind="stable")
        self.ts, self.items = ts[order], items[order]                # (n,), (n,) time order
        self.n_items, self.window_ms = n_items, window_ms

    def __call__(self, histories: list[np.ndarray], times: np.ndarray) -> np.ndarray:
        if len(times) != len(histories):
            raise ValueError(f"{len(histories)} histories but {len(times)} query times")
        out = np.empty((len(times), self.n_items), np.float64)      # (B, I)
        for b, t in enumerate(times):
            lo = np.searchsorted(self.ts, t - self.window_ms, "left")
            hi = np.searchsorted(self.ts, t, "left")
            prior = np.bincount(self.items[:hi], minlength=self.n_items)
            out[b] = np.bincount(self.items[lo:hi], minlength=self.n_items) + prior / (prior.max(initial=0) + 1.0)
        return out


class ItemKNN:
    """score(u, j) = sum over clicked i of cos(i, j), cos from the user x item co-click matrix."""

    def __init__(self, train: list[np.ndarray], n_items: int) -> None:
        self.x = _matrix(train, n_items)                             # (U, I)
        self.inv_norm = 1.0 / np.sqrt(np.maximum(self.x.sum(0), 1.0))  # (I,)

    def __call__(self, histories: list[np.ndarray]) -> np.ndarray:
        h = _matrix(histories, self.x.shape[1]) * self.inv_norm      # (B, I)
        return ((h @ self.x.T) @ self.x) * self.inv_norm             # (B, U) @ (U, I) -> (B, I)


def _cg(matvec, b: np.ndarray, x: np.ndarray, steps: int) -> np.ndarray:
    """Batched conjugate gradient: solve A_k x_k = b_k for every column k of (f, K) arrays."""
    r = b - matvec(x)
    p = r.copy()
    rs = (r * r).sum(0)
    for _ in range(steps):
        ap = matvec(p)
        alpha = rs / np.maximum((p * ap).sum(0), 1e-12)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(0)
        p = r + (rs_new / np.maximum(rs, 1e-12)) * p
        rs = rs_new
    return x


class ImplicitALS:
    """Weighted matrix factorization for implicit feedback: confidence 1 + alpha on clicks."""

    def __init__(self, train: list[np.ndarray], n_items: int, factors: int = 64, reg: float = 1.0,
                 alpha: float = 10.0, iterations: int = 15, cg_steps: int = 3, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.reg, self.alpha = reg, alpha
        r = _matrix(train, n_items)                                  # (U, I)
        x = rng.normal(0, 0.01, (factors, r.shape[0])).astype(np.float32)  # (f, U) users
        y = rng.normal(0, 0.01, (factors, n_items)).astype(np.float32)     # (f, I) items
        for _ in range(iterations):
            x = self._solve(r, y, x, cg_steps)
            y = self._solve(r.T, x, y, cg_steps)
        self.y = y

    def _solve(self, r: np.ndarray, other: np.ndarray, init: np.ndarray, steps: int) -> np.ndarray:
        """Rows of r (K, M) against fixed factors other (f, M): minimize
        sum_m c_km (p_km - a_k . o_m)^2 + reg |a_k|^2 for every k; returns (f, K)."""
        gram = other @ other.T                                      # (f, f)
        b = (1.0 + self.alpha) * (other @ r.T)                      # (f, K)

        def matvec(a: np.ndarray) -> np.ndarray:                    # (f, K) -> (f, K)
            return gram @ a + self.alpha * (other @ (r.T * (other.T @ a))) + self.reg * a

        return _cg(matvec, b, init, steps).astype(np.float32)

    def __call__(self, histories: list[np.ndarray]) -> np.ndarray:
        r = _matrix(histories, self.y.shape[1])                      # (B, I)
        x = np.zeros((self.y.shape[0], len(histories)), np.float32)
        x = self._solve(r, self.y, x, steps=10)                       # (f, B) fold-in, near-exact
        return x.T @ self.y                                          # (B, I)
