"""Parquet layout of event files: the contract's field names, so any tool (pandas, Spark, DuckDB)
reads them without recstream.

    clicks.parquet    user_id, item_id, ts (epoch ms), event, session_id
    listings.parquet  item_id, title, description, category, attributes (JSON object as a string),
                      price, status ("active" | "removed"), ts — one row per listing event; the last
                      row of an item_id is its current state
    users.parquet     (synthetic data only) the ground truth: user_id, interests, colour, drift_ts,
                      interests_after
    manifest.json     what produced the folder and the counts
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

CLICKS_FILE = "clicks.parquet"
LISTINGS_FILE = "listings.parquet"
USERS_FILE = "users.parquet"
MANIFEST_FILE = "manifest.json"

CLICK_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("item_id", pa.string()),
    ("ts", pa.int64()),
    ("event", pa.string()),
    ("session_id", pa.string()),
])

LISTING_SCHEMA = pa.schema([
    ("item_id", pa.string()),
    ("title", pa.string()),
    ("description", pa.string()),
    ("category", pa.string()),
    ("attributes", pa.string()),
    ("price", pa.float64()),
    ("status", pa.string()),
    ("ts", pa.int64()),
])

USER_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("interests", pa.list_(pa.string())),
    ("colour", pa.string()),
    ("drift_ts", pa.int64()),
    ("interests_after", pa.list_(pa.string())),
])


def write_manifest(out_dir: Path, **fields: Any) -> None:
    (out_dir / MANIFEST_FILE).write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")


def read_manifest(out_dir: Path) -> dict[str, Any]:
    return json.loads((out_dir / MANIFEST_FILE).read_text())
