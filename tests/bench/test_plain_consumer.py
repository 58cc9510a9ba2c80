"""bench/plain_consumer.py, the streaming benchmark's peer: its pure parts (parse a batch, group by
user, the last-N list entries) without services, and its Redis last-N state on a real Redis."""

from __future__ import annotations

import importlib.util
import json
import sys
from types import ModuleType

import pytest

from conf.settings import PROJECT_ROOT, RedisSettings, load_settings
from recs.contracts import Click


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_plain_consumer", PROJECT_ROOT / "bench" / "plain_consumer.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module       # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


pc = _load()
TS = 1_790_812_800_000


def click(user: str, item: str, ts: int) -> Click:
    return Click(user_id=user, item_id=item, ts=ts)


def test_entries_round_trip_any_id_and_keep_list_order() -> None:
    clicks = [click("u", 'it:"1"', TS + 5), click("u", "ítem\\2", TS), click("u", "i 3", TS + 5)]
    raw = [pc.encode_entry(c).encode() for c in clicks]
    assert pc.window(raw) == (['it:"1"', "ítem\\2", "i 3"], [TS + 5, TS, TS + 5])


def test_window_drops_exact_duplicates_of_a_replayed_batch_only() -> None:
    batch = [click("u", "a", TS), click("u", "b", TS + 1)]
    replayed = [pc.encode_entry(c) for c in batch + batch]
    assert pc.window(replayed) == (["a", "b"], [TS, TS + 1])
    # the same item clicked again at another time is a new position (the model counts repeats)
    again = [pc.encode_entry(c) for c in [*batch, click("u", "a", TS + 2)]]
    assert pc.window(again) == (["a", "b", "a"], [TS, TS + 1, TS + 2])


def test_by_user_keeps_first_seen_user_order_and_arrival_order() -> None:
    cs = [click("u2", "a", TS + 3), click("u1", "b", TS), click("u2", "c", TS + 1)]
    assert pc.by_user(cs) == {"u2": [cs[0], cs[2]], "u1": [cs[1]]}


def test_parse_batch_splits_clicks_dead_letters_and_nulls() -> None:
    settings = load_settings()
    good = json.dumps({"user_id": "u1", "item_id": "i1", "ts": TS, "event": "click"}).encode()
    no_ts = json.dumps({"user_id": "u1", "item_id": "i1", "event": "click"}).encode()
    out = pc.parse_batch([good, None, no_ts, b"\xff{"], settings, "clicks-x")
    assert out.clicks == [click("u1", "i1", TS)]
    assert out.null_values == 1
    letters = [json.loads(d) for d in out.dead_letters]
    assert [(d["field"], d["source_topic"], d["stage"]) for d in letters] == [
        ("ts", "clicks-x", "parse"), ("$", "clicks-x", "parse")]
    assert letters[0]["raw"] == no_ts.decode() and letters[1]["raw_b64"]


@pytest.fixture()
def lastn(redis_settings: RedisSettings, redis_client):  # type: ignore[no-untyped-def]
    return pc.RedisLastN(redis_client, "t:", keep=3, ttl_s=60)   # keep: max_len + reorder_slack in the peer


def test_redis_last_n_keeps_the_newest_entries_per_user_in_one_call(lastn, redis_client) -> None:  # type: ignore[no-untyped-def]
    first = lastn.push([click("u1", "a", TS), click("u2", "x", TS), click("u1", "b", TS + 1)])
    assert first == {"u1": (["a", "b"], [TS, TS + 1]), "u2": (["x"], [TS])}
    second = lastn.push([click("u1", "c", TS + 2), click("u1", "d", TS + 3)])
    assert second == {"u1": (["b", "c", "d"], [TS + 1, TS + 2, TS + 3])}   # keep = 3, oldest dropped
    assert 0 < redis_client.ttl("t:lastn:u1") <= 60


def test_redis_last_n_replay_of_a_batch_gives_the_same_window(lastn) -> None:  # type: ignore[no-untyped-def]
    # A replayed batch pushes its entries again; while they fit in the slack the window is unchanged.
    batch = [click("u1", "a", TS)]
    assert lastn.push(batch) == lastn.push(batch) == {"u1": (["a"], [TS])}
