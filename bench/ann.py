"""ANN benchmark: our ItemIndex (every FAISS kind) against hnswlib and usearch, same run, same data.

    .venv/bin/python bench/ann.py                      # 1 M x 128, what bench/results/ann.json holds
    .venv/bin/python bench/ann.py --n 100000 --out /tmp/ann.json   # a quick look
    .venv/bin/python bench/ann.py --filtered-only      # only "filtered_recall" (200 k rows, ~10 min)
    .venv/bin/python bench/ann.py --stall-only         # only "stall": small searches beside long batches

Data: clustered synthetic vectors (a Gaussian mixture, 4,096 centres, L2-normalised, like item-tower
output) and 1,000 held-out queries from the same mixture; ground truth by exact inner product.
For every index: recall@10 against exact search and single-thread QPS (one query per call, the
way the server calls it) across its knob (efSearch for HNSW graphs, nprobe for IVF). Builds use
all cores (2 here) for everyone, with the same M and efConstruction. "ours" is the ItemIndex
wrapper as served (validation, normalisation, the read lock, tombstone-aware search, string ids)
with the serving settings (HNSW vectors in float16, rows laid out by k-means cell: see
docs/serving.md); the peers run as their libraries ship. The same FAISS index called directly is
reported too (``faiss-bare-HNSW``), so the wrapper's own cost is visible. Only each engine's call is
timed; mapping answers back to item numbers for recall happens afterwards.

Update figures (ours, HNSW): upserts/s and deletes/s through ItemIndex, and search p50/p99 while
a steady stream of upserts is applied (and without, as the baseline).

Measurement: every engine is swept in interleaved rounds (all engines at every knob value, then
again, ``--rounds``), each point keeping its best QPS, so a burst of load on the shared 2-core
machine cannot penalise one engine alone.

Filtered search (``filtered_recall``, also alone with ``--filtered-only``): recall@10 and QPS of
filtered searches at selectivities 0.01 %, 0.1 %, 1 %, 10 %, 50 % on ``--filtered-n`` rows (200 k:
built once per distribution), against the exact top 10 among the rows that pass the filter, ours as
served and hnswlib with its filter callback, at the served ef_search; plus an ablation of our
strategies (selector only, widened beams, entry points sampled from the matching rows, exact
search below row thresholds). Two distributions:
the bench's own mixture with the filter independent of the vectors, and a harder one (cluster sizes
from a Zipf law, per-cluster noise, 5 % uniform noise points, the filter made of whole clusters so
the matches sit away from most queries).

Stall (``stall``, also alone with ``--stall-only``): the index server in its own process; one
client thread sends long BatchSearch requests back to back, another upserts continuously, and
small searches are timed meanwhile (p50/p99), against the same small searches on an idle server.

Builds (ours HNSW, hnswlib, usearch: minutes each at 1 M) are cached under data/bench/ with the
seconds they took; a later run on the same data loads them (``--no-cache`` rebuilds). bench/serve.py
restores ours from the same snapshot.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from conf import load_settings
from conf.settings import override
from index import snapshot
from index.ann import ItemIndex

log = logging.getLogger("bench.ann")
ROOT = Path(__file__).resolve().parent.parent
K = 10
EF_SWEEP = [10, 16, 20, 24, 26, 28, 30, 32, 34, 36, 38, 40, 44, 48, 56, 64, 96, 128, 256]
NPROBE_SWEEP = [4, 8, 16, 32, 64, 128]


def clustered(n: int, d: int, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    step = 100_000
    for a in range(0, n, step):
        m = min(step, n - a)
        c = centres[rng.integers(0, len(centres), m)]
        out[a:a + m] = c + 1.0 * rng.standard_normal((m, d), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def ground_truth(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    return flat.search(q, k)[1]


def recall(found: list[np.ndarray], gt: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K].tolist()) & set(g[:K].tolist())) / K
                          for f, g in zip(found, gt, strict=False)]))


def timed_queries(fn, q: np.ndarray, budget_s: float) -> tuple[list[np.ndarray], float, list[float]]:
    """Run fn(query) one at a time until all queries or the budget; returns results, QPS, lat ms."""
    out, lat = [], []
    t_start = time.perf_counter()
    for row in q:
        t0 = time.perf_counter()
        out.append(fn(row))
        lat.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - t_start > budget_s and len(out) >= 50:
            break
    return out, len(out) / (time.perf_counter() - t_start), lat


def _cached_build(name: str, cache: Path, build, save, load) -> tuple[Any, float, bool]:
    """Build an index, or load it from ``cache`` (same data generator, same parameters).

    The build seconds are kept next to the file, so a cached run reports the real build time.
    """
    meta = cache.with_name(cache.name + ".json")
    if meta.is_file() and (cache.exists()):
        t0 = time.perf_counter()
        ix = load(cache)
        log.info("%s loaded from %s in %.1f s", name, cache, time.perf_counter() - t0)
        return ix, json.loads(meta.read_text())["build_s"], True
    t0 = time.perf_counter()
    ix = build()
    build_s = time.perf_counter() - t0
    log.info("%s built in %.1f s", name, build_s)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save(ix, cache)
    meta.write_text(json.dumps({"build_s": round(build_s, 1)}))
    return ix, build_s, False


def build_ours(kind: str, cfg, ids, x, args, cache: Path | None) -> tuple[ItemIndex, float, bool]:
    s = override(cfg, {"kind": kind, "train_min": 1})

    def build() -> ItemIndex:
        idx = ItemIndex(s)
        faiss.omp_set_num_threads(args.build_threads)     # ItemIndex sets 1 for serving
        idx.load_batch(ids, x, model_version="bench")
        return idx

    if cache is None:
        t0 = time.perf_counter()
        idx = build()
        out = (idx, time.perf_counter() - t0, False)
    else:
        out = _cached_build(f"ours {kind}", cache, build,
                            lambda ix, p: snapshot.save(ix, p, {}),
                            lambda p: snapshot.load(snapshot.latest(p), s)[0])
    faiss.omp_set_num_threads(1)
    return out


def build_hnswlib(x, cfg, args, cache: Path):
    import hnswlib

    def build():
        ix = hnswlib.Index(space="ip", dim=x.shape[1])
        ix.init_index(max_elements=len(x), M=cfg.hnsw_m, ef_construction=cfg.ef_construction,
                      random_seed=0)
        ix.set_num_threads(args.build_threads)
        ix.add_items(x, np.arange(len(x)))
        return ix

    def load(p: Path):
        ix = hnswlib.Index(space="ip", dim=x.shape[1])
        ix.load_index(str(p), max_elements=len(x))
        return ix

    ix, build_s, cached = _cached_build("hnswlib", cache, build, lambda ix, p: ix.save_index(str(p)),
                                        load)
    ix.set_num_threads(1)
    return ix, build_s, cached


def build_usearch(x, cfg, args, cache: Path):
    from usearch.index import Index

    def new():
        return Index(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=cfg.hnsw_m,
                     expansion_add=cfg.ef_construction)

    def build():
        ix = new()
        ix.add(np.arange(len(x)), x, threads=args.build_threads)
        return ix

    def load(p: Path):
        ix = new()
        ix.load(str(p))
        return ix

    return _cached_build("usearch", cache, build, lambda ix, p: ix.save(str(p)), load)


def ours_cache(n: int, cfg) -> Path:
    """Where the HNSW build of ``n`` bench vectors is cached (bench/serve.py restores it too)."""
    return ROOT / f"data/bench/ann-{n}-{cfg.hnsw_storage}{'-reordered' if cfg.hnsw_reorder else ''}"


def searchers(kind: str, ix: Any) -> tuple[str, list[int], Any]:
    """(knob name, sweep, fn(row, value) -> that engine's answer) for one engine, one query a call.

    Only the engine's own work is timed: ours answers string ids (the product's ids, mapped from
    FAISS labels inside the wrapper); turning them back into row numbers for recall happens later.
    """
    if kind in ("ours-HNSW", "ours-IVFFlat", "ours-IVFPQ", "ours-Flat"):
        knob, sweep = {"ours-HNSW": ("ef_search", EF_SWEEP), "ours-IVFFlat": ("nprobe", NPROBE_SWEEP),
                       "ours-IVFPQ": ("nprobe", NPROBE_SWEEP), "ours-Flat": ("none", [0])}[kind]

        def ours(row, v):
            kw = {} if knob == "none" else {knob: v}
            return ix.search_raw(row, K, **kw)[0][0]
        return knob, sweep, ours
    if isinstance(ix, Bare):            # a FAISS index called directly; labels mapped to items later
        fx = ix.index
        params = {ef: faiss.SearchParametersHNSW(efSearch=ef) for ef in EF_SWEEP}
        return "ef_search", EF_SWEEP, lambda row, v: fx.search(row[None, :], K, params=params[v])[1][0]
    if kind == "hnswlib":
        def hnsw(row, v):
            if ix.ef != max(v, K):
                ix.set_ef(max(v, K))
            return ix.knn_query(row, k=K)[0][0]
        return "ef_search", EF_SWEEP, hnsw
    if kind == "usearch":
        def us(row, v):
            if ix.expansion_search != v:
                ix.expansion_search = v
            return ix.search(row, K, threads=1).keys
        return "ef_search", EF_SWEEP, us
    raise ValueError(kind)


@dataclass
class Bare:
    """A FAISS index searched directly, and the item number (row of x) behind each of its labels."""

    index: Any
    items: np.ndarray


def bare_variants(idx: ItemIndex, label_of: dict[str, int], ablation: bool) -> dict[str, Bare]:
    """Our HNSW graph called without the wrapper; with ``ablation`` also the same graph with
    float32 storage and/or its rows in random (= build) order, so the file shows what each layout
    choice buys. The graph is copied, not rebuilt: the variants differ only in storage and layout.
    """
    st = idx._st
    items = np.array([label_of[i] for i in st.ids[: st.n]], np.int64)    # our rows are reordered
    out = {"faiss-bare-HNSW": Bare(st.index, items)}
    if not ablation:
        return out
    shuffle = np.random.default_rng(3).permutation(st.n).astype(np.int64)
    m, d = idx.settings.hnsw_m, idx.dim
    for storage in ("fp16", "float32"):
        for order in ("cell order", "random order"):
            if storage == "fp16" and order == "cell order":
                continue                                                   # = faiss-bare-HNSW
            fx = (faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT) if storage == "float32" else
                  faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_fp16, m, faiss.METRIC_INNER_PRODUCT))
            fx.storage.add(st.vecs[: st.n])
            fx.hnsw = st.index.hnsw                                        # a copy of the graph
            fx.ntotal = st.n
            lab = items
            if order == "random order":
                fx.permute_entries(shuffle)
                lab = items[shuffle]
            out[f"ablation: bare {storage}, {order}"] = Bare(fx, lab)
    return out


def as_items(name: str, ix: Any, label_of: dict[str, int]) -> Any:
    """Answer -> item numbers (the rows of x), to score recall; applied outside the timing."""
    if name.startswith("ours-"):
        return lambda res: np.array([label_of[i] for i in res], np.int64)
    if isinstance(ix, Bare):
        return lambda res: ix.items[res[res >= 0]]
    return lambda res: np.asarray(res, np.int64)


def sweep(engines: dict[str, Any], q, gt, args, label_of) -> dict[str, list[dict[str, Any]]]:
    """Interleaved rounds (every engine at every knob value, then again): each point keeps its
    best QPS over the rounds, so a burst of load on the shared machine hurts no engine alone."""
    plans = {name: searchers(name, ix) for name, ix in engines.items()}
    items = {name: as_items(name, ix, label_of) for name, ix in engines.items()}
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for rnd in range(args.rounds):
        for name, (knob, values, fn) in plans.items():
            budget = 2.0 if name == "ours-Flat" else args.budget_s
            for v in values:
                res, qps, _ = timed_queries(lambda row, v=v, fn=fn: fn(row, v), q, budget)
                key = (name, v)
                if key not in best:
                    found = [items[name](r) for r in res]
                    best[key] = {knob: v, "recall@10": round(recall(found, gt[: len(res)]), 4),
                                 "qps": 0.0, "queries": len(res)}
                best[key]["qps"] = round(max(best[key]["qps"], qps), 1)
        log.info("round %d of %d done", rnd + 1, args.rounds)
    out: dict[str, list[dict[str, Any]]] = {}
    for (name, _v), p in best.items():
        out.setdefault(name, []).append(p)
        log.info("%-16s %s", name, p)
    return out


def best_qps(points: list[dict], target: float = 0.95) -> float | None:
    ok = [p["qps"] for p in points if p["recall@10"] >= target]
    return max(ok) if ok else None


def updates(idx: ItemIndex, ids: list[str], d: int, centres: np.ndarray, q: np.ndarray,
            args) -> dict[str, Any]:
    """Upserts/s, deletes/s, and search latency with and without a steady upsert stream."""
    rng = np.random.default_rng(7)
    n_up = args.upserts
    new = clustered(n_up, d, 11, centres)
    targets = [ids[i] for i in rng.choice(len(ids), n_up, replace=False)]
    t0 = time.perf_counter()
    for a in range(0, n_up, 512):                       # the feeder's batch size
        idx.upsert(targets[a:a + 512], new[a:a + 512])
    upserts_per_s = n_up / (time.perf_counter() - t0)

    dels = [ids[i] for i in rng.choice(len(ids), args.deletes, replace=False)]
    t0 = time.perf_counter()
    for a in range(0, len(dels), 512):
        idx.delete(dels[a:a + 512])
    deletes_per_s = len(dels) / (time.perf_counter() - t0)
    log.info("upserts/s %.0f, deletes/s %.0f", upserts_per_s, deletes_per_s)

    def search_lat(seconds: float) -> list[float]:
        lat, t_end, i = [], time.perf_counter() + seconds, 0
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            idx.search(q[i % len(q)], K)
            lat.append((time.perf_counter() - t) * 1e3)
            i += 1
        return lat

    base = search_lat(3.0)
    stop = threading.Event()
    applied = [0]
    stream = clustered(200_000, d, 12, centres)

    def writer() -> None:                               # a steady stream: rate per second, batches of 50
        i, period = 0, 50 / args.stream_rate
        nxt = time.perf_counter()
        while not stop.is_set():
            a = (i * 50) % len(stream)
            idx.upsert([ids[(a + j) * 7 % len(ids)] for j in range(50)], stream[a:a + 50])
            applied[0] += 50
            i += 1
            nxt += period
            time.sleep(max(0.0, nxt - time.perf_counter()))

    w = threading.Thread(target=writer)
    w.start()
    t0 = time.perf_counter()
    during = search_lat(args.stream_s)
    stop.set()
    w.join()
    achieved = applied[0] / (time.perf_counter() - t0)
    pct = lambda v, p: round(float(np.percentile(v, p)), 3)  # noqa: E731
    return {"upserts_per_s": round(upserts_per_s, 1), "deletes_per_s": round(deletes_per_s, 1),
            "search_p50_ms_idle": pct(base, 50), "search_p99_ms_idle": pct(base, 99),
            "search_p50_ms_during_upserts": pct(during, 50),
            "search_p99_ms_during_upserts": pct(during, 99),
            "upsert_stream_offered_per_s": args.stream_rate,
            "upsert_stream_achieved_per_s": round(achieved, 1),
            "upsert_write_chunk": idx.settings.write_chunk}


# ----------------------------------------------------------------------- filtered search
SELECTIVITIES = [0.0001, 0.001, 0.01, 0.1, 0.5]
# Our strategies, measured on the same index by changing only these settings (ablation).
STRATEGIES = {     # max_k 10: so that "exact <= 0 rows" really means never exact (the floor is max_k)
    "selector only": {"filter_exact_rows": 0, "max_k": K, "filter_boost": 1.0, "filter_seeds": 0},
    "selector, beam x min(16, 1/sel)": {"filter_exact_rows": 0, "max_k": K, "filter_widen": 1.0,
                                        "filter_seeds": 0},
    "selector, beam x min(16, 8/sel)": {"filter_exact_rows": 0, "max_k": K, "filter_seeds": 0},
    "selector, 16 seeds, beam x min(16, 8/sel)": {"filter_exact_rows": 0, "max_k": K},
    "exact <= 2,000 rows, else seeds + beam": {"filter_exact_rows": 2_000},
    "exact <= 20,000 rows, else seeds + beam": {"filter_exact_rows": 20_000},
}


def filtered_data(kind: str, n: int, d: int, nq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, queries, u): a row passes the filter of selectivity s when u < s.

    "bench": the main bench's mixture, u uniform (the filter ignores the vectors). "hard": cluster
    sizes from a Zipf law, per-cluster noise 0.5-1.5, 5 % uniform noise points, and u ordered by
    cluster (a filter keeps whole clusters: its matches sit away from most queries).
    """
    rng = np.random.default_rng(40)
    centres = np.random.default_rng(1).standard_normal((4096, d)).astype(np.float32)
    if kind == "bench":
        x, q = clustered(n, d, 2, centres), clustered(nq, d, 3, centres)
        return x, q, rng.random(n)
    w = 1.0 / np.arange(1, len(centres) + 1) ** 1.1
    w /= w.sum()

    def draw(m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        r = np.random.default_rng(seed)
        c = r.choice(len(centres), m, p=w)
        noise = (0.5 + (np.arange(len(centres)) % 11) / 10).astype(np.float32)[c]
        out = centres[c] + noise[:, None] * r.standard_normal((m, d), dtype=np.float32)
        uniform = r.random(m) < 0.05
        out[uniform] = r.standard_normal((int(uniform.sum()), d), dtype=np.float32) * 3
        return out / np.linalg.norm(out, axis=1, keepdims=True), c

    x, cell = draw(n, 41)
    q, _ = draw(nq, 42)
    rank = rng.permutation(len(centres))[cell]            # clusters in a random order ...
    order = np.lexsort((rng.random(n), rank))             # ... rows by cluster, then at random
    u = np.empty(n)
    u[order] = (np.arange(n) + 0.5) / n
    return x, q, u


def filtered_truth(x: np.ndarray, q: np.ndarray, u: np.ndarray) -> dict[float, np.ndarray]:
    """Exact top-10 row numbers among the rows with u < s, per selectivity s (-1 pads)."""
    best = {s: (np.full((len(q), K), -np.inf, np.float32), np.full((len(q), K), -1, np.int64))
            for s in SELECTIVITIES + [1.0]}
    for a in range(0, len(x), 50_000):
        sims = q @ x[a:a + 50_000].T
        for s, (bs, bl) in best.items():
            m = sims if s == 1.0 else np.where(u[a:a + 50_000] < s, sims, -np.inf)
            cand_s = np.concatenate([bs, m], axis=1)
            cand_l = np.concatenate([bl, np.broadcast_to(np.arange(a, a + m.shape[1]), m.shape)], axis=1)
            top = np.argsort(-cand_s, axis=1)[:, :K]
            best[s] = (np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_l, top, 1))
    return {s: np.where(np.isfinite(bs), bl, -1) for s, (bs, bl) in best.items()}


def filtered_recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    """Share of the true matches found (all of them when fewer than 10 pass)."""
    hits = [len(set(f.tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum()))
            for f, t in zip(found, truth, strict=False)]
    return float(np.mean(hits))


def filtered_part(args, cfg) -> dict[str, Any]:
    n, nq = args.filtered_n, args.filtered_queries
    bins = [0.0] + SELECTIVITIES + [1.0]
    result: dict[str, Any] = {
        "n": n, "d": args.d, "queries": nq, "k": K, "ef_search": cfg.ef_search,
        "selectivities": SELECTIVITIES,
        "served": {"filter_exact_rows": cfg.filter_exact_rows, "filter_widen": cfg.filter_widen,
                   "filter_boost": cfg.filter_boost, "filter_seeds": cfg.filter_seeds},
        "qps_note": ("single-thread QPS, one query per call, best of interleaved rounds; QPS moves with "
                     "the load of the machine (see load_average_at_start); recall does not"),
        "load_average_at_start": list(os.getloadavg()),
        "distributions": {},
    }
    try:
        import hnswlib
    except ImportError:
        hnswlib = None
        result["hnswlib"] = "not installed (pip install -c constraints.txt hnswlib==0.8.0)"
    for dist in args.filtered_dists.split(","):
        t0 = time.perf_counter()
        x, q, u = filtered_data(dist, n, args.d, nq)
        truth = filtered_truth(x, q, u)
        ids = [f"item-{i}" for i in range(n)]
        label_of = {s: i for i, s in enumerate(ids)}
        cats = [f"b{i}" for i in np.searchsorted(bins, u, side="right") - 1]   # b0: u < 0.0001, ...
        log.info("filtered %s: data + truth in %.1f s", dist, time.perf_counter() - t0)
        idx = ItemIndex(override(cfg, {"kind": "HNSW"}))
        faiss.omp_set_num_threads(args.build_threads)
        t0 = time.perf_counter()
        idx.load_batch(ids, x, categories=cats, model_version="bench")
        build_s = time.perf_counter() - t0
        faiss.omp_set_num_threads(1)
        engines: dict[str, Any] = {}
        hl = None
        if hnswlib is not None:
            hl = hnswlib.Index(space="ip", dim=args.d)
            hl.init_index(max_elements=n, M=cfg.hnsw_m, ef_construction=cfg.ef_construction, random_seed=0)
            hl.set_num_threads(args.build_threads)
            hl.add_items(x, np.arange(n))
            hl.set_num_threads(1)
            hl.set_ef(max(cfg.ef_search, K))
        served = idx.settings
        filters = {s: {"category": [f"b{i}" for i in range(SELECTIVITIES.index(s) + 1)]} for s in SELECTIVITIES}
        for name, over in STRATEGIES.items():
            engines[f"ours: {name}"] = over
        engines["ours (served)"] = {}
        if hl is not None:
            engines["hnswlib (filter callback)"] = hl
        best: dict[tuple[str, float], dict[str, Any]] = {}
        for rnd in range(args.rounds):
            for s in [1.0] + SELECTIVITIES:
                mask = u < s
                for name, eng in engines.items():
                    if s == 1.0 and name.startswith("ours:"):
                        continue                      # unfiltered: one "ours (served)" point
                    if isinstance(eng, dict):
                        idx.settings = override(served, eng)
                        idx._filter_cache.clear()
                        fn, to_items = _ours_fn(idx, None if s == 1.0 else filters[s], label_of)
                    else:
                        fn, to_items = _hnswlib_fn(eng, None if s == 1.0 else mask)
                    try:
                        res, qps, _ = timed_queries(fn, q, args.budget_s)
                    except RuntimeError as e:          # hnswlib: fewer than k matches reachable
                        log.info("%s at %s: %s", name, s, e)
                        res, qps = [], 0.0
                    key = (name, s)
                    if key not in best:
                        found = [to_items(r) for r in res]
                        best[key] = {"recall@10": round(filtered_recall(found, truth[s][: len(res)]), 4)
                                     if res else None, "qps": 0.0, "queries": len(res)}
                        if res == [] and not isinstance(eng, dict):
                            best[key]["error"] = "hnswlib raised: fewer than k results"
                    best[key]["qps"] = round(max(best[key]["qps"], qps), 1)
            log.info("filtered %s: round %d of %d", dist, rnd + 1, args.rounds)
        idx.settings = served
        idx._filter_cache.clear()
        table: dict[str, Any] = {}
        for (name, s), point in best.items():
            table.setdefault(name, {})["unfiltered" if s == 1.0 else str(s)] = point
        ok = {str(s): (table["ours (served)"][str(s)]["recall@10"] >= table["ours (served)"]["unfiltered"]["recall@10"])
              for s in SELECTIVITIES}
        rows = {str(s): int((u < s).sum()) for s in SELECTIVITIES}
        result["distributions"][dist] = {
            "rows_passing": rows, "build_s_ours": round(build_s, 1),
            "ours": table.pop("ours (served)"),
            "hnswlib": table.pop("hnswlib (filter callback)", None),
            "ablation": table,
            "filtered_recall_at_least_unfiltered": ok,
        }
        log.info("filtered %s: %s", dist, json.dumps(result["distributions"][dist]["ours"]))
    return result


def _ours_fn(idx: ItemIndex, f: dict[str, list[str]] | None, label_of: dict[str, int]) -> tuple[Any, Any]:
    return (lambda row: idx.search_raw(row, K, f)[0][0],
            lambda r: np.array([label_of[i] for i in r], np.int64))


def _hnswlib_fn(ix: Any, mask: np.ndarray | None) -> tuple[Any, Any]:
    cb = None if mask is None else (lambda label: bool(mask[label]))
    return lambda row: ix.knn_query(row, k=K, filter=cb)[0][0], lambda r: np.asarray(r, np.int64)


# ----------------------------------------------------------------------- stall scenario
def _stall_server(cfg, n: int, d: int, conn) -> None:
    """Child process: an HNSW index of n bench vectors behind the gRPC server; sends its port, then
    applies settings overrides sent by the parent (a dict) until it sends None."""
    from index.server import IndexServer

    centres = np.random.default_rng(1).standard_normal((4096, d)).astype(np.float32)
    idx = ItemIndex(cfg)
    faiss.omp_set_num_threads(2)
    idx.load_batch([f"item-{i}" for i in range(n)], clustered(n, d, 2, centres))
    faiss.omp_set_num_threads(1)
    server = IndexServer(cfg, idx).start()
    conn.send(server.port)
    while (over := conn.recv()) is not None:               # the same server, other limits
        idx.settings = server.servicer.settings = override(cfg, over)
        conn.send("ok")
    server.stop(0)


def _stall_load(addr: str, ef: int, n: int, d: int, pause_s: float, conn) -> None:
    """Load process (its own GIL, so the timed client is not slowed by it): 128-query BatchSearch
    requests back to back in one thread, 64-item Upserts in another (``pause_s`` between them: 0 =
    back to back), until told."""
    import grpc

    from index.proto import index_pb2 as pb
    from index.proto import index_pb2_grpc as pb_grpc

    centres = np.random.default_rng(1).standard_normal((4096, d)).astype(np.float32)
    batch_q, new = clustered(128, d, 4, centres), clustered(20_000, d, 5, centres)
    stop = threading.Event()
    batch_ms: list[float] = []
    upserted = [0]

    def batches() -> None:
        with grpc.insecure_channel(addr) as ch:
            stub = pb_grpc.IndexServiceStub(ch)
            req = pb.BatchSearchRequest(vectors=batch_q.ravel().tolist(), dim=d, k=10, ef_search=ef)
            while not stop.is_set():
                t0 = time.perf_counter()
                stub.BatchSearch(req, timeout=60)
                batch_ms.append((time.perf_counter() - t0) * 1e3)

    def upserts() -> None:
        with grpc.insecure_channel(addr) as ch:
            stub = pb_grpc.IndexServiceStub(ch)
            i = 0
            while not stop.is_set():
                a = (i * 64) % len(new)
                items = [pb.Item(id=f"item-{(a + j) * 7 % n}", vector=new[a + j].tolist()) for j in range(64)]
                stub.Upsert(pb.UpsertRequest(items=items), timeout=60)
                upserted[0] += 64
                i += 1
                stop.wait(pause_s)

    threads = [threading.Thread(target=batches), threading.Thread(target=upserts)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    conn.send("running")
    conn.recv()
    stop.set()
    for t in threads:
        t.join()
    conn.send({"batch_median_ms": round(float(np.median(batch_ms)), 3), "batches": len(batch_ms),
               "upserts_per_s_meanwhile": round(upserted[0] / (time.perf_counter() - t0), 1)})


# The stall scenario under the served limits and under the first ones tried (ablation).
# (settings overrides, seconds between two 64-item Upserts; 0 = back to back)
STALL_VARIANTS: dict[str, tuple[dict[str, Any], float]] = {
    "served": ({}, 0.0),
    "served, one 64-item upsert every 0.2 s": ({}, 0.2),
    "write_chunk 4, lock_work 16,384": ({"write_chunk": 4, "lock_work": 16_384}, 0.0),
    "lock_work 65,536, max_ef_search 1,024": ({"lock_work": 65_536, "max_ef_search": 1024}, 0.0),
}


def stall_part(args, cfg) -> dict[str, Any]:
    """p50/p99 of small searches (k = 90, as the read path asks) while long BatchSearch requests
    and upserts run, against an idle server; and a request over the work limit."""
    import grpc

    from index.proto import index_pb2 as pb
    from index.proto import index_pb2_grpc as pb_grpc

    n, d = args.stall_n, args.d
    cfg = override(cfg, {"kind": "HNSW", "port": 0, "metrics_port": 0})
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_stall_server, args=(cfg, n, d, child))
    proc.start()
    port = parent.recv()
    centres = np.random.default_rng(1).standard_normal((4096, d)).astype(np.float32)
    q = clustered(2000, d, 3, centres)
    addr = f"127.0.0.1:{port}"
    out: dict[str, Any] = {"n": n, "d": d, "small_search_k": 90, "batch_queries": 128,
                           "upsert_batch": 64, "seconds_each": args.stall_s,
                           "note": "server, load (batches + upserts) and the timed client in three "
                                   "processes sharing the machine's cores",
                           "load_average_at_start": list(os.getloadavg())}

    def small(seconds: float) -> list[float]:
        lat: list[float] = []
        with grpc.insecure_channel(addr) as ch:
            stub = pb_grpc.IndexServiceStub(ch)
            t_end, i = time.perf_counter() + seconds, 0
            while time.perf_counter() < t_end:
                req = pb.SearchRequest(vector=q[i % len(q)].tolist(), k=90)
                t0 = time.perf_counter()
                stub.Search(req, timeout=60)
                lat.append((time.perf_counter() - t0) * 1e3)
                i += 1
        return lat

    def scenario(ef: int, pause_s: float) -> dict[str, Any]:
        conn, far = ctx.Pipe()
        load = ctx.Process(target=_stall_load, args=(addr, ef, n, d, pause_s, far))
        load.start()
        conn.recv()                                         # the load is running
        time.sleep(0.5)
        busy = small(args.stall_s)
        conn.send("stop")
        stats = conn.recv()
        load.join(30)
        return {"during_p50_ms": pct(busy, 50), "during_p99_ms": pct(busy, 99),
                "during_max_ms": round(max(busy), 3), "during_searches": len(busy), **stats}

    pct = lambda v, p: round(float(np.percentile(v, p)), 3)  # noqa: E731
    try:
        idle = small(args.stall_s)
        out.update({"idle_p50_ms": pct(idle, 50), "idle_p99_ms": pct(idle, 99), "idle_searches": len(idle)})
        for name, (over, pause_s) in STALL_VARIANTS.items():
            parent.send(over)
            parent.recv()
            v = override(cfg, over)
            out[name] = {"lock_work": v.lock_work, "batch_ef_search": v.max_ef_search,
                         "write_chunk": v.write_chunk, "upsert_pause_s": pause_s,
                         **scenario(v.max_ef_search, pause_s)}
            log.info("stall %s: %s", name, out[name])
        parent.send({})
        parent.recv()
        with grpc.insecure_channel(addr) as ch:
            stub = pb_grpc.IndexServiceStub(ch)
            over_limit = pb.BatchSearchRequest(vectors=clustered(1024, d, 6, centres).ravel().tolist(), dim=d,
                                               k=10, ef_search=cfg.max_ef_search)
            try:
                stub.BatchSearch(over_limit, timeout=60)
                out["over_the_work_limit"] = "accepted"
            except grpc.RpcError as e:
                out["over_the_work_limit"] = f"{e.code().name}: {e.details()}"
        log.info("stall: %s", out)
    finally:
        parent.send(None)
        proc.join(30)
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in result["curves"].items():
        pts = r["points"]
        ax.plot([p["recall@10"] for p in pts], [p["qps"] for p in pts], marker="o", label=name,
                ls="--" if name.startswith("ablation") else "-", ms=3 if name.startswith("ablation") else 5)
    ax.axvline(0.95, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("recall@10")
    ax.set_ylabel("queries/s, one thread")
    ax.set_yscale("log")
    ax.set_title(f"{result['n']:,} x {result['d']}, single-thread search")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_filtered(fr: dict, path: Path) -> None:
    """recall@10 against selectivity, per distribution: ours as served, hnswlib, the ablation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dists = fr["distributions"]
    fig, axes = plt.subplots(1, len(dists), figsize=(6 * len(dists), 4.5), squeeze=False)
    sels = [str(x) for x in fr["selectivities"]]
    for ax, (dist, r) in zip(axes[0], dists.items(), strict=True):
        lines = {"ours (served)": r["ours"], "hnswlib (filter callback)": r["hnswlib"], **r["ablation"]}
        for name, pts in lines.items():
            if not pts:
                continue
            ax.plot([float(x) * 100 for x in sels], [pts[x]["recall@10"] or 0 for x in sels], marker="o",
                    label=name.removeprefix("ours: "), lw=2.5 if name == "ours (served)" else 1,
                    ls="-" if name in ("ours (served)", "hnswlib (filter callback)") else "--")
        ax.axhline(r["ours"]["unfiltered"]["recall@10"], color="grey", ls=":", lw=1, label="ours, unfiltered")
        ax.set_xscale("log")
        ax.set_xlabel("rows passing the filter, %")
        ax.set_ylabel("filtered recall@10")
        ax.set_title(f"{dist}: {fr['n']:,} x {fr['d']}, ef_search {fr['ef_search']}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--kinds", default="HNSW,IVFFlat,IVFPQ,Flat")
    ap.add_argument("--peers", default="hnswlib,usearch")
    ap.add_argument("--budget-s", type=float, default=1.0, help="time per curve point and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best QPS kept")
    ap.add_argument("--no-cache", action="store_true",
                    help="build every index (default: reuse data/bench/ builds of the same data)")
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--no-ablation", dest="ablation", action="store_false",
                    help="skip the float32 / random-order copies of our graph")
    ap.add_argument("--upserts", type=int, default=20_000)
    ap.add_argument("--deletes", type=int, default=50_000)
    ap.add_argument("--stream-rate", type=float, default=1000.0, help="upserts/s during the p99 test")
    ap.add_argument("--stream-s", type=float, default=10.0)
    ap.add_argument("--filtered-only", action="store_true",
                    help="run only the filtered-search part; its key is replaced in --out")
    ap.add_argument("--filtered-n", type=int, default=200_000, help="rows of the filtered part")
    ap.add_argument("--filtered-queries", type=int, default=500)
    ap.add_argument("--filtered-dists", default="bench,hard")
    ap.add_argument("--stall-only", action="store_true",
                    help="run only the stall scenario; its key is replaced in --out")
    ap.add_argument("--stall-n", type=int, default=200_000)
    ap.add_argument("--stall-s", type=float, default=10.0, help="seconds of small searches, each phase")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/ann.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    cfg = override(load_settings().index, {"dim": args.d, "compaction_min_dead": 10**9})
    if args.filtered_only or args.stall_only:
        previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
        if args.filtered_only:
            previous["filtered_recall"] = filtered_part(args, cfg)
            plot_filtered(previous["filtered_recall"], args.out.with_name(args.out.stem + "_filtered.png"))
        if args.stall_only:
            previous["stall"] = stall_part(args, cfg)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(previous, indent=1))
        return
    t0 = time.perf_counter()
    centres = np.random.default_rng(1).standard_normal((4096, args.d)).astype(np.float32)
    x = clustered(args.n, args.d, 2, centres)
    q = clustered(args.queries, args.d, 3, centres)
    gt = ground_truth(x, q, K)
    ids = [f"item-{i}" for i in range(args.n)]
    label_of = {s: i for i, s in enumerate(ids)}
    log.info("data + ground truth in %.1f s", time.perf_counter() - t0)

    cache = ROOT / "data/bench"
    engines: dict[str, Any] = {}
    builds: dict[str, dict[str, Any]] = {}
    kinds = args.kinds.split(",")
    ours_hnsw = None
    for kind in kinds:
        c = ours_cache(args.n, cfg) if kind == "HNSW" and not args.no_cache else None
        idx, build_s, cached = build_ours(kind, cfg, ids, x, args, c)
        engines[f"ours-{kind}"] = idx
        builds[f"ours-{kind}"] = {"build_s": round(build_s, 1), "cached": cached}
        if kind == "HNSW":
            ours_hnsw = idx
            engines.update(bare_variants(idx, label_of, args.ablation))
    peers = [p for p in args.peers.split(",") if p]
    if "hnswlib" in peers:
        ix, b, cached = build_hnswlib(x, cfg, args, cache / f"hnswlib-{args.n}.bin")
        engines["hnswlib"], builds["hnswlib"] = ix, {"build_s": round(b, 1), "cached": cached}
    if "usearch" in peers:
        ix, b, cached = build_usearch(x, cfg, args, cache / f"usearch-{args.n}.usearch")
        engines["usearch"], builds["usearch"] = ix, {"build_s": round(b, 1), "cached": cached}
    faiss.omp_set_num_threads(1)
    curves = {name: {"knob": next(iter(pts[0])),
                     "points": pts, **builds.get(name, {})}
              for name, pts in sweep(engines, q, gt, args, label_of).items()}
    upd = updates(ours_hnsw, ids, args.d, centres, q, args) if ours_hnsw is not None else {}

    best = {name: best_qps(r["points"]) for name, r in curves.items()}
    ours = max((v for k, v in best.items() if k.startswith("ours-") and v), default=None)
    peers = [best.get(p) for p in ("hnswlib", "usearch") if best.get(p)]
    result = {
        "n": args.n, "d": args.d, "queries": args.queries, "k": K, "metric": "inner product",
        "data": "Gaussian mixture, 4096 centres, noise 1.0, L2-normalised",
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform(),
                    "faiss": faiss.__version__},
        "hnsw": {"M": cfg.hnsw_m, "ef_construction": cfg.ef_construction,
                 "ours_storage": cfg.hnsw_storage, "ours_reordered": cfg.hnsw_reorder},
        "ivf": {"nlist": cfg.ivf_nlist, "pq_m": cfg.pq_m, "pq_nbits": cfg.pq_nbits},
        "curves": curves,
        "best_qps_at_recall_0.95": {"ours": ours, "hnswlib": best.get("hnswlib"),
                                    "usearch": best.get("usearch")},
        "best_qps_at_recall_0.95_per_curve": best,
        "ours_vs_best_peer": round(ours / max(peers), 3) if ours and peers else None,
        **upd,
        "filtered_recall": filtered_part(args, cfg),
        "stall": stall_part(args, cfg),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(result, args.out.with_suffix(".png"))
    plot_filtered(result["filtered_recall"], args.out.with_name(args.out.stem + "_filtered.png"))
    log.info("best QPS at recall 0.95: %s; ratio ours/best peer %s", result["best_qps_at_recall_0.95"],
             result["ours_vs_best_peer"])


if __name__ == "__main__":
    main()
