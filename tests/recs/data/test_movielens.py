import json

import pandas as pd

from conf import load_settings
from recs.contracts import parse_click, parse_listing
from recs.data.movielens import convert


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
