"""The read path over a real Redis and a real gRPC index: sources, fallbacks, invariants 1 and 6,
and the HTTP API."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from conf.settings import override
from index.client import GrpcIndexClient
from recs.serving.app import create_app
from recs.serving.read_path import ReadPath
from recs.stores.base import RecsList, UserRecord


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def put_user(store, uid: str, emb: np.ndarray, version: str = "v1", last_n=()) -> None:
    assert store.put_users([UserRecord(uid, emb, version, 1_000, tuple(last_n))]) == [True]


def test_nrt_path_drops_clicked_items(store, index_client, serve_settings, catalogue):
    ids, x = catalogue
    put_user(store, "u1", x[7], last_n=["item-7"])
    rec = ReadPath(store, index_client, serve_settings).recommend("u1", 5)
    assert rec.source == "nrt" and rec.model_version == "v1" and len(rec.items) == 5
    assert "item-7" not in rec.items
    assert rec.scores == sorted(rec.scores, reverse=True)


def test_model_versions_never_mix(store, index_client, serve_settings, catalogue):
    """Invariant 1: a v2 user embedding is never compared with the v1 index: fallback, counted."""
    ids, x = catalogue
    put_user(store, "u2", x[3], version="v2")
    store.put_recs([RecsList("u2", ("item-1", "item-2"), "v2", 5)])
    before = counter("recs_serve_fallbacks_total", reason="model_version_mismatch")
    rec = ReadPath(store, index_client, serve_settings).recommend("u2", 5)
    assert rec.source == "offline" and rec.items == ["item-1", "item-2"] and rec.model_version == "v2"
    assert "model_version_mismatch" in rec.fallbacks
    assert counter("recs_serve_fallbacks_total", reason="model_version_mismatch") == before + 1


def test_removed_listing_is_absent_from_every_source(store, index_client, serve_settings, catalogue):
    """Invariant 6: once the index has applied a removal, no source serves the listing."""
    ids, x = catalogue
    put_user(store, "u3", x[10])
    store.put_recs([RecsList("cold", ("item-10", "item-11", "item-12"), "v1", 5)])
    store.put_trending(RecsList("", ("item-10", "item-13"), "v1", 5))
    rp = ReadPath(store, index_client, serve_settings)
    assert rp.recommend("u3", 5).items[0] == "item-10"
    index_client.delete(["item-10"])
    assert "item-10" not in rp.recommend("u3", 50).items
    offline = rp.recommend("cold", 5)
    assert offline.source == "offline" and offline.items == ["item-11", "item-12"]
    trending = rp.recommend("nobody", 5)
    assert trending.source == "trending" and trending.items == ["item-13"]


def test_cold_start_order_and_phase_one(store, index_client, serve_settings):
    rp = ReadPath(store, index_client, serve_settings)
    empty = rp.recommend("ghost", 5)
    assert empty.source == "trending" and empty.items == [] and "no_trending" in empty.fallbacks
    store.put_trending(RecsList("", ("item-1", "item-2"), "v1", 5))
    assert rp.recommend("ghost", 5).items == ["item-1", "item-2"]
    store.put_recs([RecsList("ghost", ("item-5",), "v1", 5)])
    assert rp.recommend("ghost", 5).source == "offline"
    phase1 = ReadPath(store, None, override(serve_settings, {"phase": 1}))
    assert phase1.recommend("ghost", 5).items == ["item-5"]         # no index call in phase 1


def test_index_down_is_a_counted_fallback_and_lists_are_withheld(store, index_settings, serve_settings,
                                                                 catalogue, caplog):
    """Index down: 200, counted and logged; the offline list cannot be checked against the index
    (invariant 6), so it is withheld rather than served unchecked."""
    ids, x = catalogue
    put_user(store, "u4", x[0])
    store.put_recs([RecsList("u4", ("item-1",), "v1", 5)])
    store.put_trending(RecsList("", ("item-2",), "v1", 5))
    dead = GrpcIndexClient(override(index_settings, {"client_retries": 0,
                                                             "client_deadline_ms": 200}),
                           [["127.0.0.1:1"]])
    before = counter("recs_serve_fallbacks_total", reason="index_unavailable")
    lookups = counter("recs_serve_errors_total", where="lookup")
    rec = ReadPath(store, dead, serve_settings).recommend("u4", 5)
    assert rec.items == [] and rec.source == "trending"
    assert rec.fallbacks == ["index_unavailable", "offline_list_unverified", "offline_list_exhausted",
                             "trending_unverified", "no_trending"]
    assert counter("recs_serve_fallbacks_total", reason="index_unavailable") == before + 1
    assert counter("recs_serve_errors_total", where="lookup") == lookups   # one wait, not three
    assert "index_unavailable in search for user 'u4'" in caplog.text
    app = TestClient(create_app(ReadPath(store, dead, serve_settings)))
    r = app.get("/recommendations/u4")
    assert r.status_code == 200 and r.json()["fallbacks"][0] == "index_unavailable"


def test_answer_says_which_click_it_reflects(store, index_client, serve_settings, catalogue):
    """as_of_event_ts: the user record's event_ts on the nrt path (library and JSON), null otherwise."""
    ids, x = catalogue
    assert store.put_users([UserRecord("u6", x[30], "v1", 1_790_812_800_123, ("item-3",))]) == [True]
    store.put_trending(RecsList("", ("item-1",), "v1", 5))
    rp = ReadPath(store, index_client, serve_settings)
    assert rp.recommend("u6", 3).as_of_event_ts == 1_790_812_800_123
    assert rp.recommend("nobody", 3).as_of_event_ts is None
    app = TestClient(create_app(rp))
    assert app.get("/recommendations/u6", params={"k": 3}).json()["as_of_event_ts"] == 1_790_812_800_123
    cold = app.get("/recommendations/nobody", params={"k": 3}).json()
    assert cold["source"] == "trending" and cold["as_of_event_ts"] is None


def test_http_api(store, index_client, serve_settings, catalogue):
    ids, x = catalogue
    put_user(store, "u5", x[20])
    app = TestClient(create_app(ReadPath(store, index_client, serve_settings)))
    r = app.get("/recommendations/u5", params={"k": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["source"] == "nrt" and body["model_version"] == "v1" and len(body["items"]) == 3
    assert body["items"][0]["item_id"] == "item-20"
    assert app.get("/recommendations/u5", params={"k": 0}).status_code == 422
    assert app.get("/recommendations/u5", params={"k": 10_000}).status_code == 422
    assert app.get("/healthz").json()["ok"] is True
    assert "recs_serve_requests_total" in app.get("/metrics").text
