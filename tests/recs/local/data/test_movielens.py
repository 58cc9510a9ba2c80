import json

import pandas as pd

from conf import load_settings
from recs.contracts import parse_click, parse_listing
from recs.local.data.movielens import convert


def test_reproduces_the_published_counts(tmp_path):
    counts = convert(tmp_path)
    assert counts == {"clicks": 100_004, "users": 671, "items": 9_066}
    clicks = pd.read_parquet(tmp_path / "clicks.parquet")
    listings = pd.read_parquet(tmp_path / "listings.parquet")
    assert (len(clicks), clicks.user_id.nunique(), listings.item_id.nunique()) == (100_004, 671, 9_066)
    assert clicks.ts.is_monotonic_increasing
    limits = load_settings().contracts
    for row in clicks.sample(500, random_state=0).to_dict("records"):
        parse_click({k: v for k, v in row.items() if v is not None}, limits)
    for row in listings.to_dict("records"):
        parse_listing({**row, "attributes": json.loads(row["attributes"]), "price": None}, limits)
    toy = listings[listings.item_id == "1"].iloc[0]
    assert toy.title == "Toy Story (1995)" and "Animation" in toy.description


def test_same_second_clicks_are_not_ordered_by_id(tmp_path):
    """In every tied (user, timestamp) group the order is the seeded hash, not movieId: among the
    last-click test targets that share their timestamp with the click before, about half (not
    all) have the higher movieId; the tie statistics land in the manifest."""
    from recs.local.data.movielens import TIE_ORDER, tie_key
    from recs.local.data.schema import read_manifest

    convert(tmp_path)
    clicks = pd.read_parquet(tmp_path / "clicks.parquet")
    users, movies = clicks.user_id.astype("int64").to_numpy(), clicks.item_id.astype("int64").to_numpy()
    key = tie_key(users, movies)
    same = (users[1:] == users[:-1]) & (clicks.ts.to_numpy()[1:] == clicks.ts.to_numpy()[:-1])
    assert same.sum() > 20_000                                  # tied neighbours: many
    assert (key[1:][same] > key[:-1][same]).all()               # each group in hash order
    ties = read_manifest(tmp_path)["ties"]
    assert read_manifest(tmp_path)["tie_order"] == TIE_ORDER
    assert 0.3 < ties["clicks_in_tied_groups"] < 0.34           # the 32 %
    assert 0.18 < ties["test_targets_tied_with_previous"] < 0.2  # and 19 %
    assert 0.3 < ties["tied_targets_with_higher_id"] < 0.7       # 1.0 when ordered by movieId


def test_tie_key_is_fixed_and_seeded():
    import numpy as np

    from recs.local.data.movielens import tie_key

    u, m = np.array([1, 1, 2]), np.array([5, 6, 5])
    assert tie_key(u, m).tolist() == tie_key(u, m).tolist()
    assert tie_key(u, m, seed=1).tolist() != tie_key(u, m).tolist()
    # not monotone in the id: over many ids about half of the neighbours are in id order
    ids = np.arange(10_000)
    k = tie_key(np.zeros_like(ids), ids)
    assert 0.45 < (np.diff(k.astype(np.float64)) > 0).mean() < 0.55
