"""Per-user means and the user bootstrap of models/quality.py."""

import numpy as np

from models.quality import bootstrap, per_user


def test_per_user_weighs_every_user_once():
    rank = np.array([0, 50, 50, 50, 3])             # user 7: one hit of four pairs; user 2: a hit
    users = np.array([7, 7, 7, 7, 2])
    m = per_user(rank, users)
    assert m["recall@10"].tolist() == [1.0, 0.25]   # sorted users: 2, 7
    assert np.allclose(m["ndcg@10"], [1 / np.log2(5), 0.25])


def test_bootstrap_intervals_cover_the_mean_and_pair_the_difference():
    rng = np.random.default_rng(0)
    a = (rng.random(400) < 0.3).astype(float)
    b = a.copy()
    b[:40] = 0.0                                    # b misses 40 of a's users: a - b = hits lost
    out = bootstrap({"two_tower": {"recall@10": a}, "other": {"recall@10": b}}, n=500, seed=0)
    lo, hi = out["two_tower"]["recall@10_ci"]
    assert lo < a.mean() < hi and hi - lo < 0.12
    d = a[:40].mean() * 40 / 400                    # the true paired difference
    dlo, dhi = out["other"]["recall@10_diff_ci"]
    assert np.isclose(out["other"]["recall@10_diff"], d) and 0 <= dlo <= d <= dhi
    # paired: far narrower than the two separate intervals would suggest
    assert dhi - dlo < (hi - lo) / 2
    assert "recall@10_diff" not in out["two_tower"]
    again = bootstrap({"two_tower": {"recall@10": a}, "other": {"recall@10": b}}, n=500, seed=0)
    assert again == out
