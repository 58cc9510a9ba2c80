import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conf import load_settings
from recs.contracts import parse_click, parse_listing
from recs.local.data.schema import CLICK_SCHEMA, LISTING_SCHEMA
from recs.local.data.synth import COLOURS, SynthConfig, generate

LIMITS = load_settings().contracts
NOW = 1_900_000_000_000


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    counts = generate(out, SynthConfig(events=30_000, items=600, users=300, seed=7, chunk=7_000), progress=False)
    return out, counts


def test_counts_and_schemas(synth):
    out, counts = synth
    clicks = pq.read_table(out / "clicks.parquet")
    listings = pq.read_table(out / "listings.parquet")
    assert clicks.schema == CLICK_SCHEMA and listings.schema == LISTING_SCHEMA
    assert clicks.num_rows == counts["clicks"] == 30_000
    assert pq.ParquetFile(out / "clicks.parquet").num_row_groups == 5  # streamed in chunks
    assert listings.to_pandas().item_id.nunique() == counts["items"] == 600
    assert json.loads((out / "manifest.json").read_text())["clicks"] == 30_000


def test_same_seed_same_data_other_seed_other_data(synth, tmp_path):
    out, _ = synth
    generate(tmp_path / "a", SynthConfig(events=30_000, items=600, users=300, seed=7, chunk=7_000), progress=False)
    generate(tmp_path / "b", SynthConfig(events=30_000, items=600, users=300, seed=8, chunk=7_000), progress=False)
    same = pq.read_table(tmp_path / "a" / "clicks.parquet")
    assert same.equals(pq.read_table(out / "clicks.parquet"))
    assert pq.read_table(tmp_path / "a" / "listings.parquet").equals(pq.read_table(out / "listings.parquet"))
    assert not same.equals(pq.read_table(tmp_path / "b" / "clicks.parquet"))


def test_every_event_satisfies_its_contract(synth):
    out, _ = synth
    for row in pq.read_table(out / "clicks.parquet").slice(0, 2000).to_pylist():
        parse_click(row, LIMITS, NOW)
    for row in pq.read_table(out / "listings.parquet").to_pylist():
        parse_listing({**row, "attributes": json.loads(row["attributes"])}, LIMITS, NOW)


def test_clicks_only_hit_listings_live_at_click_time(synth):
    out, _ = synth
    clicks = pd.read_parquet(out / "clicks.parquet")
    events = pd.read_parquet(out / "listings.parquet")
    created = events[events.status == "active"].groupby("item_id").ts.min()
    removed = events[events.status == "removed"].set_index("item_id").ts
    c = clicks.join(created.rename("created"), on="item_id").join(removed.rename("removed"), on="item_id")
    assert (c.created <= c.ts).all()
    assert ((c.removed.isna()) | (c.ts < c.removed)).all()
    assert 0 < len(removed) < len(created)  # some listings are removed during the period
    assert (events.ts.diff().dropna() >= 0).all()  # listing events in time order


def test_clicks_follow_the_users_true_interests_and_colours(synth):
    out, _ = synth
    clicks = pd.read_parquet(out / "clicks.parquet")
    items = pd.read_parquet(out / "listings.parquet").drop_duplicates("item_id").set_index("item_id")
    users = pd.read_parquet(out / "users.parquet").set_index("user_id")
    c = clicks.join(items[["category", "attributes"]], on="item_id").join(users, on="user_id")
    current = np.where(c.drift_ts.notna() & (c.ts >= c.drift_ts), c.interests_after, c.interests)
    in_interest = np.mean([cat in list(cur) for cat, cur in zip(c.category, current, strict=True)])
    assert in_interest > 0.6  # vs ~1/16 .. 3/16 for a random category
    colour_word = c.attributes.map(lambda a: json.loads(a)["colour"])
    family = {w: fam for fam, words in COLOURS.items() for w in words}
    assert np.mean(colour_word.map(family) == c.colour) > 0.4  # vs 0.1 at random
    assert users.drift_ts.notna().mean() == pytest.approx(0.3, abs=0.08)


def test_popularity_is_skewed(synth):
    out, _ = synth
    counts = pd.read_parquet(out / "clicks.parquet").item_id.value_counts()
    top_share = counts.iloc[: len(counts) // 10].sum() / counts.sum()
    assert top_share > 0.3  # the top 10 % of items draw far more than 10 % of clicks


def test_titles_use_colour_synonyms(synth):
    out, _ = synth
    titles = " ".join(pd.read_parquet(out / "listings.parquet").title).split()
    assert {"red", "scarlet", "crimson"} <= set(titles)
