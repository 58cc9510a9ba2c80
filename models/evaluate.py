"""Full-catalogue ranking metrics: every item is a candidate, none is sampled away.

    m = evaluate(scorer, histories, targets, n_items)   # {"recall@10": ..., "ndcg@10": ..., ...}

A scorer maps a batch of click histories to a (B, I) score matrix over the whole catalogue; a
time-aware scorer also takes the (B,) query times (`times=`: when each recommendation is made).
Items in a user's history are excluded (score -inf) before ranking. Ties (e.g. zero-popularity
items) are broken by a fixed-seed random jitter far below any real score gap, so no model gains
from an arbitrary catalogue order. With one target per user, Recall@K is the hit rate at K;
NDCG@10 = 1/log2(rank + 2) when rank < 10; MRR = 1/(rank + 1) over the full ranking;
coverage@10 = distinct items in all top-10 lists / catalogue size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Scorer = Callable[..., np.ndarray]  # B histories [, (B,) query times] -> (B, I) scores
KS = (10, 20, 50)
CHUNK = 512  # users scored at a time: bounds memory at CHUNK x I float64


def ranks(scorer: Scorer, histories: list[np.ndarray], targets: np.ndarray, n_items: int,
          seed: int = 0, candidates: np.ndarray | None = None,
          top: int = 10, times: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of each target and the (B, top) recommended items. ``candidates`` (optional)
    restricts ranking to a subset of items (new-item report); by default all I items compete."""
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(0.0, 1e-7, size=n_items)            # (I,) tie-break
    allowed = np.ones(n_items, bool)
    if candidates is not None:
        allowed[:] = False
        allowed[candidates] = True
    out_rank = np.empty(len(targets), np.int64)
    out_top = np.empty((len(targets), top), np.int64)
    for lo in range(0, len(targets), CHUNK):
        hist = histories[lo:lo + CHUNK]
        s = (scorer(hist) if times is None else scorer(hist, times[lo:lo + CHUNK]))
        s = s.astype(np.float64) + jitter                    # (B, I)
        s[:, ~allowed] = -np.inf
        for b, h in enumerate(hist):
            s[b, h] = -np.inf                                # already clicked: excluded
        t = targets[lo:lo + CHUNK]
        ts = s[np.arange(len(t)), t]                         # (B,)
        out_rank[lo:lo + len(t)] = (s > ts[:, None]).sum(1)
        part = np.argpartition(-s, top, axis=1)[:, :top]     # (B, top) unordered
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1)
        out_top[lo:lo + len(t)] = np.take_along_axis(part, order, 1)
    return out_rank, out_top


def metrics_from_ranks(rank: np.ndarray, top: np.ndarray, n_items: int,
                       ks: tuple[int, ...] = KS) -> dict[str, float]:
    m = {f"recall@{k}": float((rank < k).mean()) for k in ks}
    m["ndcg@10"] = float(np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0).mean())
    m["mrr"] = float((1.0 / (rank + 1.0)).mean())
    m["coverage@10"] = float(len(np.unique(top[:, :10])) / n_items)
    m["users"] = int(len(rank))
    return m


def evaluate(scorer: Scorer, histories: list[np.ndarray], targets: np.ndarray, n_items: int,
             seed: int = 0, candidates: np.ndarray | None = None,
             times: np.ndarray | None = None) -> dict[str, float]:
    rank, topk = ranks(scorer, histories, targets, n_items, seed, candidates,
                       top=min(10, n_items - 1), times=times)
    return metrics_from_ranks(rank, topk, n_items)
