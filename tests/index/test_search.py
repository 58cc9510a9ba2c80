"""Filtered search (index/search.py): exact answers for selective filters, recall for broad ones."""

from __future__ import annotations

import numpy as np
import pytest

from index.ann import ItemIndex

from .helpers import clustered


# ----------------------------------------------------------------- filtered search (issue 8, item 5)
@pytest.mark.parametrize("kind", ["HNSW", "IVFFlat"])
def test_a_selective_filter_returns_every_match(make_index_settings, kind):
    """5 items in a category, k = 10: all 5 come back (the API's promise), best first, scores exact."""
    idx = ItemIndex(make_index_settings(kind=kind, compaction_min_dead=10**6, nprobe=1))
    x = clustered(4000, seed=21)
    cats = ["rare" if i % 800 == 7 else f"c{i % 7}" for i in range(4000)]
    idx.upsert([f"i{i}" for i in range(4000)], x, categories=cats)
    idx.wait_compaction()
    assert idx.stats()["built_as"] == kind
    rare = [i for i, c in enumerate(cats) if c == "rare"]
    q = clustered(50, seed=22)
    for row, qv in zip(idx.search_raw(q, 10, {"category": ["rare"]}), q, strict=True):
        want = sorted(rare, key=lambda i: -float(x[i] @ qv))
        assert row[0] == [f"i{i}" for i in want]
        np.testing.assert_allclose(row[1], [float(x[i] @ qv) for i in want], rtol=1e-5, atol=1e-6)


def _recall(got: list[tuple[list[str], list[float]]], want: list[list[str]]) -> float:
    return float(np.mean([len(set(g[0]) & set(w)) / len(w) for g, w in zip(got, want, strict=True)]))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["HNSW", "IVFFlat"])
def test_filtered_recall_is_at_least_the_unfiltered_recall(make_index_settings, kind):
    """At 5 %, 20 % and 50 % selectivity, on both strategies (exact rows; widened beam), recall@10 with
    the filter is at least recall@10 without one, at the same ef_search / nprobe."""
    n = 6000
    x = clustered(n, seed=23)
    q = clustered(200, seed=24)
    cats = np.random.default_rng(25).random(n)
    for exact_rows in (10**5, 100):                       # every filter exact; every filter widened
        idx = ItemIndex(make_index_settings(kind=kind, ef_search=16, nprobe=1, hnsw_m=8,
                                            filter_exact_rows=exact_rows, max_k=10))
        for sel in (0.05, 0.2, 0.5):
            labels = np.where(cats < sel, "in", "out")
            idx.upsert([f"i{i}" for i in range(n)], x, categories=list(labels))
            idx.wait_compaction()
            truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
            unfiltered = _recall(idx.search_raw(q, 10), [[f"i{i}" for i in row] for row in truth])
            sims = np.where(labels == "in", q @ x.T, -np.inf)
            ftruth = [[f"i{i}" for i in row] for row in np.argsort(-sims, axis=1)[:, :10]]
            filtered = _recall(idx.search_raw(q, 10, {"category": ["in"]}), ftruth)
            assert unfiltered < 1.0                          # the beam is small enough to miss
            assert filtered >= unfiltered, (exact_rows, sel, filtered, unfiltered)
