"""The demo's choices, without the stack: which artifact it reuses, which user it shows, which new
interest it clicks. (The whole demo is `make demo`: it starts the default stack, so no test runs it.)"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recs.contracts import Listing
from recs.local import demo
from recs.local.data.schema import CLICKS_FILE
from recs.local.item_vectors import ItemVectors


def _artifact(path: Path, fingerprint: str, dim: int) -> Path:
    path.mkdir(parents=True)
    (path / "metadata.json").write_text(json.dumps({"dim": dim, "data": {"fingerprint": fingerprint}}))
    return path


def test_an_artifact_is_reused_only_when_trained_on_this_data_with_this_dim(tmp_path):
    assert demo._fits(_artifact(tmp_path / "same", "abc", 128), "abc", 128)
    assert not demo._fits(_artifact(tmp_path / "movielens", "924aed2754f88bf1", 128), "abc", 128)
    assert not demo._fits(_artifact(tmp_path / "small", "abc", 32), "abc", 128)
    assert not demo._fits(tmp_path / "missing", "abc", 128)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metadata.json").write_text("{not json")
    assert not demo._fits(tmp_path / "broken", "abc", 128)


def _clicks(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    pq.write_table(pa.table({"user_id": [u for u, _ in rows], "item_id": [i for _, i in rows]}), tmp_path / CLICKS_FILE)
    return tmp_path


class Store:
    """get_users only: a record (any truthy value) for the users in ``has``."""

    def __init__(self, has: set[str]) -> None:
        self.has = has

    def get_users(self, ids: list[str]) -> list[object | None]:
        return [object() if u in self.has else None for u in ids]


CATEGORY = {"d1": "dresses", "d2": "dresses", "t1": "tops", "t2": "tops", "t3": "tops", "s1": "shoes"}


def test_the_user_shown_is_the_most_focused_one_with_a_record(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "MIN_CLICKS", 3)
    rows = ([("focused", "d1")] * 4                        # one category, 4 clicks: no KV record
            + [("focused-kv", "d1"), ("focused-kv", "d2"), ("focused-kv", "d1")]   # one category, 3 clicks
            + [("mixed", "d1"), ("mixed", "t1"), ("mixed", "s1"), ("mixed", "t2")]  # three categories
            + [("short", "d1")] * 2)                       # too few clicks
    data = _clicks(tmp_path, rows)
    user, clicked = demo.pick_user(data, Store({"focused-kv", "mixed", "short"}), CATEGORY)
    assert (user, clicked) == ("focused-kv", Counter({"dresses": 3}))


def _items(ids: list[str]) -> ItemVectors:
    listings = [Listing(i, f"title {i}", "active", 1, category=CATEGORY[i]) for i in ids]
    return ItemVectors(listings, np.zeros((len(ids), 4), np.float32), "v1")


def test_the_burst_is_the_most_clicked_items_of_the_biggest_never_clicked_category(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "BURST", 2)
    data = _clicks(tmp_path, [("a", "t3"), ("b", "t3"), ("c", "t2"), ("a", "s1"), ("a", "s1"), ("a", "s1")])
    items = _items(["d1", "d2", "t1", "t2", "t3", "s1"])
    # dresses were clicked; of tops (3 items) and shoes (1), tops has more: its 2 most clicked, ties by id
    assert demo.pick_burst(items, data, Counter({"dresses": 5})) == ("tops", ["t3", "t2"])
    assert demo.pick_burst(items, data, Counter({"dresses": 5, "tops": 1})) == ("shoes", ["s1"])


def test_job_summary_sums_counters_by_name_and_drops_the_age_gauges():
    m = {"0.parse.recs.valid_records": 10.0, "1.embed.recs.valid_records": 5.0, "1.embed.recs.batch_rows": 7.0,
         "1.embed.recs.click_to_kv_p50_ms": 2.6e9}
    assert demo.job_summary(m) == {"batch_rows": 7.0, "valid_records": 15.0}
