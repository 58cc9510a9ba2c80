import numpy as np
import pytest

from models.baselines import ImplicitALS, ItemKNN, Popularity
from models.evaluate import evaluate


def blocks(n_users=40, rng=None):
    """Two user groups, each clicking only its own half of 20 items."""
    rng = rng or np.random.default_rng(0)
    seqs = []
    for u in range(n_users):
        lo = 0 if u % 2 == 0 else 10
        seqs.append(rng.choice(np.arange(lo, lo + 10), size=6, replace=False))
    return seqs


def test_popularity_counts():
    pop = Popularity([np.array([1, 2, 2]), np.array([2])], 4)
    assert pop([np.array([0])])[0].tolist() == [0, 1, 3, 0]


def test_item_knn_scores_co_clicked_items():
    knn = ItemKNN([np.array([0, 1]), np.array([0, 1]), np.array([2, 3])], 4)
    s = knn([np.array([0])])[0]
    assert s[1] > 0 and s[2] == 0 and s[3] == 0


def test_als_learns_block_structure():
    seqs = blocks()
    als = ImplicitALS(seqs, 20, factors=4, reg=0.1, alpha=10, iterations=10, seed=0)
    s = als([np.array([0, 1, 2]), np.array([10, 11, 12])])
    assert s[0, :10].mean() > s[0, 10:].mean() + 0.2
    assert s[1, 10:].mean() > s[1, :10].mean() + 0.2
    hist = [s[:-1] for s in seqs]
    tgt = np.array([s[-1] for s in seqs])
    assert evaluate(als, hist, tgt, 20)["recall@10"] > evaluate(
        Popularity(seqs, 20), hist, tgt, 20)["recall@10"]


def test_recent_popularity_counts_only_the_window_before_each_query_time():
    from models.baselines import RecentPopularity

    ts = np.array([1, 2, 3, 8, 9, 10])
    items = np.array([0, 0, 0, 1, 2, 3])
    rp = RecentPopularity(ts, items, 5, window_ms=3)
    s = rp([np.array([4]), np.array([4])], np.array([10, 4]))     # (2, 5)
    # at 10: clicks in [7, 10) -> items 1, 2 once each (the click at 10 itself is not counted);
    # the all-time count before 10 (item 0: 3 clicks) only breaks ties, below one recent click
    assert s[0][1] > s[0][0] > s[0][3] and s[0][3] == s[0][4] == 0
    assert s[0][1] == s[0][2]
    # at 4: clicks in [1, 4) -> item 0 three times; nothing from the future
    assert s[1][0] > 3 and s[1][1:].max() == 0
    with pytest.raises(ValueError, match="2 histories but 1 query times"):
        rp([np.array([4]), np.array([4])], np.array([10]))
