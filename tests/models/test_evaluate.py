import numpy as np
import pytest

from models.evaluate import evaluate, ranks


def fixed(scores):
    s = np.asarray(scores, dtype=np.float64)
    return lambda hist: np.tile(s, (len(hist), 1))


def test_ranks_exclude_history_and_exact_metrics():
    scorer = fixed([9, 8, 7, 6, 5, 4, 3, 2, 1, 0.5, 0.25, 0.1])
    hist = [np.array([0]), np.array([], np.int64)]
    rank, top = ranks(scorer, hist, np.array([2, 11]), 12)
    assert rank.tolist() == [1, 11]                   # item 0 excluded for user 0
    assert top[0, :3].tolist() == [1, 2, 3]
    m = evaluate(scorer, hist, np.array([2, 11]), 12)
    assert m["recall@10"] == 0.5 and m["recall@20"] == 1.0
    assert m["ndcg@10"] == pytest.approx(0.5 / np.log2(3))
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 12) / 2)


def test_candidates_restrict_ranking():
    scorer = fixed(np.arange(20, 0, -1))
    m = evaluate(scorer, [np.array([], np.int64)], np.array([19]), 20, candidates=np.array([18, 19]))
    assert m["mrr"] == 0.5                            # only item 18 outranks 19


def test_ties_are_broken_randomly_not_by_catalogue_order():
    scorer = fixed(np.zeros(1000))                    # every item ties with every other
    hist = [np.array([], np.int64)] * 1000
    rank, _ = ranks(scorer, hist, np.arange(1000), 1000)
    assert sorted(rank.tolist()) == list(range(1000))  # a strict order: each rank once
    assert abs(np.corrcoef(np.arange(1000), rank)[0, 1]) < 0.1
