import json

import numpy as np
import pandas as pd
import pytest

from models.data import last_n, leave_last_out, load_dataset


def _write(tmp_path, clicks, listings):
    pd.DataFrame(clicks, columns=["user_id", "item_id", "ts"]).assign(event="click").to_parquet(
        tmp_path / "clicks.parquet")
    pd.DataFrame(listings, columns=["item_id", "title", "category", "attributes", "status", "ts"]
                 ).assign(description=None, price=None).to_parquet(tmp_path / "listings.parquet")


def test_load_dataset_current_state_order_and_unknown_items(tmp_path):
    attrs = json.dumps({"colour": "red"})
    _write(tmp_path,
           clicks=[("u1", "b", 30), ("u1", "a", 10), ("u2", "a", 5), ("u1", "zz", 20), ("u1", "a", 20)],
           listings=[("a", "Red dress", "dresses", attrs, "active", 1),
                     ("b", "Old title", None, None, "active", 1),
                     ("b", "New title", None, None, "removed", 2)])
    ds = load_dataset(tmp_path)
    assert ds.item_ids == ["a", "b"]
    assert ds.texts == ["Red dress . dresses . colour red", "New title"]
    assert ds.active.tolist() == [True, False]
    assert ds.dropped_clicks == 1                       # "zz" has no listing
    assert ds.user_ids == ["u1", "u2"]
    assert ds.sequences[0].tolist() == [0, 0, 1]        # ts 10, 20, 30
    assert ds.timestamps[0].tolist() == [10, 20, 30]


def test_leave_last_out_protocol():
    from models.data import Dataset

    seqs = [np.array([1, 2, 3, 4, 5]), np.array([6, 7]), np.array([0, 8, 9])]
    ds = Dataset("t", [str(i) for i in range(10)], [""] * 10, [None] * 10, np.ones(10, bool),
                 ["a", "b", "c"], seqs, [np.arange(len(s)) for s in seqs])
    sp = leave_last_out(ds)
    assert [s.tolist() for s in sp.train] == [[1, 2, 3], [6, 7], [0]]
    assert sp.val_users.tolist() == [0, 2] and sp.val_target.tolist() == [4, 8]
    assert [h.tolist() for h in sp.val_history] == [[1, 2, 3], [0]]
    assert sp.test_target.tolist() == [5, 9]
    assert [h.tolist() for h in sp.test_history] == [[1, 2, 3, 4], [0, 8]]
    held = leave_last_out(ds, exclude_items=np.array([2, 8]))
    assert [s.tolist() for s in held.train] == [[1, 3], [6, 7], [0]]
    assert held.val_target.tolist() == [4]             # user c's validation target is held out
    assert held.target_counts(10)[3] == 1


def test_last_n_right_aligned():
    ids, mask = last_n([np.array([4, 5, 6]), np.array([], np.int64), np.array([1, 2, 3, 4, 5])], 4)
    assert ids.tolist() == [[0, 4, 5, 6], [0, 0, 0, 0], [2, 3, 4, 5]]
    assert mask.tolist() == [[False, True, True, True], [False] * 4, [True] * 4]


def test_windows_cover_every_target():
    from models.train import _windows

    rng = np.random.default_rng(0)
    s = np.arange(23)
    for _ in range(5):
        wins = _windows([s, np.array([7])], 5, rng)
        assert all(2 <= len(w) <= 6 for w in wins)
        targets = set(np.concatenate([w[1:] for w in wins]).tolist())
        assert targets == set(range(1, 23))


@pytest.mark.parametrize("n", [1, 3])
def test_last_n_short(n):
    ids, mask = last_n([np.array([9])], n)
    assert ids[0, -1] == 9 and mask.sum() == 1


def _timed_ds():
    """Three users, ts in ms; item 7 is listed at 25, item 9 at 42, the rest from the start."""
    from models.data import Dataset

    seqs = [np.array([1, 2, 3, 4, 5]), np.array([6, 7, 9, 6]), np.array([0, 8, 9, 1])]
    ts = [np.array([10, 20, 30, 40, 50]), np.array([15, 25, 45, 48]), np.array([12, 22, 42, 52])]
    listed = np.zeros(10, np.int64)
    listed[7], listed[9] = 25, 42
    return Dataset("t", [str(i) for i in range(10)], [""] * 10, [None] * 10, np.ones(10, bool),
                   ["a", "b", "c"], seqs, ts, listed_ts=listed)


def test_time_split_trains_before_the_cut_and_ranks_only_listed_items():
    from models.data import time_split

    ds = _timed_ds()
    sp = time_split(ds, test_share=0.3, val_share=0.3)       # 13 clicks -> cuts at 25 and 45
    assert sp.cuts == {"val_cut": 25, "test_cut": 45}
    assert [s.tolist() for s in sp.train] == [[1, 2], [6], [0, 8]]
    # validation: every click in [25, 45) on an item listed before 25, with all earlier clicks
    # as history and the last history click as query time
    # (not item 7; nor user 2's click on item 9, listed at 42)
    assert sp.val_target.tolist() == [3, 4] and sp.val_users.tolist() == [0, 0]
    assert [h.tolist() for h in sp.val_history] == [[1, 2], [1, 2, 3]]
    assert sp.val_time.tolist() == [20, 30]
    assert sp.val_candidates.tolist() == [0, 1, 2, 3, 4, 5, 6, 8]
    # test: clicks at or after 45 on items listed before 45, not already in the history
    # (user 1's second click on item 6 is none)
    assert sp.test_target.tolist() == [5, 9, 1] and sp.test_users.tolist() == [0, 1, 2]
    assert [h.tolist() for h in sp.test_history] == [[1, 2, 3, 4], [6, 7], [0, 8, 9]]
    assert sp.test_time.tolist() == [40, 25, 42]
    assert sp.test_candidates.tolist() == list(range(10))
    assert sp.excluded_items.tolist() == [7, 9]              # listed at or after val_cut


def test_time_split_caps_targets_per_user_and_refuses_bad_shares():
    from models.data import time_split

    ds = _timed_ds()
    assert time_split(ds, 0.3, 0.3, cap=1).val_target.tolist() == [3]
    with pytest.raises(ValueError, match="sum < 1"):
        time_split(ds, 0.6, 0.5)


def test_leave_last_out_query_times_are_the_last_history_click():
    sp = leave_last_out(_timed_ds())
    assert sp.val_time.tolist() == [30, 25, 22] and sp.test_time.tolist() == [40, 45, 42]
