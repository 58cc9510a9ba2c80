"""Model-quality reports shared by `recs eval` and bench/model_quality.py.

    rows = compare(ds, split, trained, seed=0)             # two_tower + baselines, val and test
    ci = bootstrap(per_user, n=2000, seed=0)               # user-bootstrap CIs, paired differences
    new = new_items_report(ds, held_out, trained)          # text-only retrieval of unseen items
    rec = interest_recovery(ds, users, trained)            # synthetic data: known interests
    print(format_table(summary))

Baselines are fitted on the same training prefixes. The MF baseline's two hyper-parameters are
chosen on the VALIDATION split from a small grid (recorded in the output); the test split is scored
once per model, never used for a choice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from models.baselines import DAY_MS, ImplicitALS, ItemKNN, Popularity, RecentPopularity
from models.data import Dataset, Split
from models.evaluate import evaluate, metrics_from_ranks, ranks
from models.train import Trained

log = logging.getLogger(__name__)

MF_GRID = [(reg, alpha) for reg in (1.0, 10.0, 50.0) for alpha in (5.0, 20.0)]  # (reg, alpha)
METRICS = ("recall@10", "recall@20", "recall@50", "ndcg@10", "mrr", "coverage@10")
RECENT_WINDOWS_DAYS = (1, 7, 30, 90, 365, 1095, 3650)  # recent-popularity windows (validation)
TIMED = {"recent_popularity"}              # scorers that take query times


def tune_mf(split: Split, n_items: int, seed: int) -> tuple[ImplicitALS, dict[str, Any]]:
    """Pick (reg, alpha) by validation Recall@10; factors fixed at 64 (as d is fixed for ours)."""
    best, best_m, tried = None, -1.0, []
    for reg, alpha in MF_GRID:
        mf = ImplicitALS(split.train, n_items, factors=64, reg=reg, alpha=alpha, seed=seed)
        m = evaluate(mf, split.val_history, split.val_target, n_items,
                     candidates=split.val_candidates)["recall@10"]
        tried.append({"reg": reg, "alpha": alpha, "val_recall@10": m})
        if m > best_m:
            best, best_m = mf, m
    chosen = max(tried, key=lambda r: r["val_recall@10"])
    log.info("MF chosen on validation: reg=%s alpha=%s (val recall@10 %.4f)",
             chosen["reg"], chosen["alpha"], chosen["val_recall@10"])
    assert best is not None
    return best, {"factors": 64, **chosen, "grid": tried}


def tune_recent(ds: Dataset, split: Split) -> tuple[RecentPopularity, dict[str, Any]]:
    """Pick the recent-popularity window by validation Recall@10."""
    ts, items = ds.click_log()
    fitted, tried = [], []
    for days in RECENT_WINDOWS_DAYS:
        rp = RecentPopularity(ts, items, ds.n_items, window_ms=days * DAY_MS)
        m = evaluate(rp, split.val_history, split.val_target, ds.n_items,
                     candidates=split.val_candidates, times=split.val_time)["recall@10"]
        fitted.append(rp)
        tried.append({"window_days": days, "val_recall@10": m})
    best = int(np.argmax([t["val_recall@10"] for t in tried]))    # first of equals: shortest
    log.info("recent popularity chosen on validation: %d days (val recall@10 %.4f)",
             tried[best]["window_days"], tried[best]["val_recall@10"])
    return fitted[best], {**tried[best], "grid": tried}


def compare(ds: Dataset, split: Split, trained: Trained, seed: int,
            mf: ImplicitALS | None = None, recent: RecentPopularity | None = None,
            test_ranks: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {"val": metrics, "test": metrics}} for the two-tower model and the baselines, on the
    split's candidates and query times. ``test_ranks`` (optional) receives each model's (T,) test
    ranks, for per-user means and bootstrap intervals."""
    scorers = {"two_tower": trained.scorer(ds),
               "popularity": Popularity(split.train, ds.n_items),
               "recent_popularity": recent or tune_recent(ds, split)[0],
               "item_knn": ItemKNN(split.train, ds.n_items),
               "mf": mf or tune_mf(split, ds.n_items, seed)[0]}
    out = {}
    for name, scorer in scorers.items():
        timed = name in TIMED
        top = min(10, ds.n_items - 1)
        rv, tv = ranks(scorer, split.val_history, split.val_target, ds.n_items, seed,
                       split.val_candidates, top, split.val_time if timed else None)
        rt, tt = ranks(scorer, split.test_history, split.test_target, ds.n_items, seed,
                       split.test_candidates, top, split.test_time if timed else None)
        out[name] = {"val": metrics_from_ranks(rv, tv, ds.n_items),
                     "test": metrics_from_ranks(rt, tt, ds.n_items)}
        if test_ranks is not None:
            test_ranks[name] = rt
    return out


def per_user(rank: np.ndarray, users: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pair ranks -> each user's mean hit@10 and NDCG@10, (U',) over users with a pair, in
    sorted user order: every user weighs the same, however many pairs they have."""
    uniq, inv = np.unique(users, return_inverse=True)
    n = np.bincount(inv, minlength=len(uniq))
    hit = (rank < 10).astype(np.float64)
    ndcg = np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0)
    return {"recall@10": np.bincount(inv, hit, len(uniq)) / n,
            "ndcg@10": np.bincount(inv, ndcg, len(uniq)) / n}


def bootstrap(values: dict[str, dict[str, np.ndarray]], n: int = 2000, seed: int = 0,
              reference: str = "two_tower", level: float = 0.95) -> dict[str, dict[str, Any]]:
    """User bootstrap: ``values`` = {model: {metric: (U,) per-user values, same users}}. Returns
    {model: {metric: mean, metric_ci: [lo, hi], metric_diff_ci: CI of reference - model}}, the
    difference paired on the same resampled users (percentile intervals)."""
    any_model = next(iter(values.values()))
    n_users = len(next(iter(any_model.values())))
    idx = np.random.default_rng(seed).integers(0, n_users, size=(n, n_users))   # (n, U)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    out: dict[str, dict[str, Any]] = {}
    for model, metrics in values.items():
        row: dict[str, Any] = {"users": n_users}
        for k, v in metrics.items():
            boot = v[idx].mean(1)                                          # (n,)
            row[k] = float(v.mean())
            row[f"{k}_ci"] = [float(x) for x in np.percentile(boot, q)]
            if model != reference and reference in values:
                d = (values[reference][k] - v)[idx].mean(1)
                row[f"{k}_diff"] = float((values[reference][k] - v).mean())
                row[f"{k}_diff_ci"] = [float(x) for x in np.percentile(d, q)]
        out[model] = row
    return out


def aggregate(per_seed: Sequence[dict[str, dict[str, float]]]) -> dict[str, float]:
    """[{metric: value}] over seeds -> {metric: mean, metric_std: std}."""
    out: dict[str, float] = {}
    for k in METRICS:
        vals = np.array([m[k] for m in per_seed])
        out[k] = float(vals.mean())
        out[f"{k}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    return out


def format_table(models: dict[str, dict[str, float]], title: str = "") -> str:
    head = "| model | " + " | ".join(METRICS) + " |"
    lines = [title, "", head, "|" + "---|" * (len(METRICS) + 1)] if title else [head, "|" + "---|" * (len(METRICS) + 1)]
    for name, m in models.items():
        cells = [f"{m[k]:.4f} ± {m.get(k + '_std', 0.0):.4f}" for k in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pick_new_items(ds: Dataset, share: float, seed: int) -> np.ndarray:
    """A random ``share`` of the clicked items, held out of training entirely."""
    clicked = np.unique(np.concatenate(ds.sequences))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(clicked, size=max(1, int(share * len(clicked))), replace=False))


def new_items_report(ds: Dataset, held_out: np.ndarray, trained: Trained,
                     max_pairs: int = 20000, seed: int = 0) -> dict[str, Any]:
    """For every click on a held-out item: rank it, from its text-only vector, for that user's
    history at that moment (a) among the held-out items and (b) over the whole catalogue."""
    is_new = np.zeros(ds.n_items, bool)
    is_new[held_out] = True
    hist, tgt = [], []
    for s in ds.sequences:
        for p in np.flatnonzero(is_new[s]):
            if p > 0:
                hist.append(s[:p])
                tgt.append(s[p])
    rng = np.random.default_rng(seed)
    if len(tgt) > max_pairs:
        keep = np.sort(rng.choice(len(tgt), max_pairs, replace=False))
        hist, tgt = [hist[i] for i in keep], [tgt[i] for i in keep]
    tgt_arr = np.array(tgt, np.int64)
    scorer = trained.scorer(ds)
    among_new = evaluate(scorer, hist, tgt_arr, ds.n_items, seed, candidates=held_out)
    full = evaluate(scorer, hist, tgt_arr, ds.n_items, seed)
    return {
        "held_out_items": int(len(held_out)),
        "pairs": int(len(tgt_arr)),
        "protocol": "items removed from all training/validation sequences and from tokenizer "
                    "training; each later click on one is a target, ranked from the user's "
                    "history at that moment",
        "among_held_out": {k: among_new[k] for k in ("recall@10", "recall@50", "ndcg@10", "mrr")},
        "among_held_out_chance_recall@10": 10 / len(held_out),
        "full_catalogue": {k: full[k] for k in ("recall@10", "recall@50", "ndcg@10", "mrr")},
        "full_catalogue_chance_recall@10": 10 / ds.n_items,
    }


def interest_recovery(ds: Dataset, split: Split, users: Any, trained: Trained,
                      colour_family: dict[str, str] | None = None,
                      seed: int = 0) -> dict[str, Any]:
    """Synthetic data: share of each user's top-10 (active items, history excluded) whose category
    is among the user's true current interests, for the model, popularity and random."""
    truth = users.set_index("user_id")
    cats = np.array([c or "" for c in ds.categories])
    active = np.flatnonzero(ds.active)
    uidx = split.test_users
    hists = split.test_history
    last_ts = np.array([ds.timestamps[u][-1] for u in uidx])
    interests, colours = [], []
    for u, ts in zip(uidx, last_ts, strict=True):
        row = truth.loc[ds.user_ids[u]]
        drifted = row["drift_ts"] is not None and not np.isnan(row["drift_ts"]) and row["drift_ts"] <= ts
        interests.append(set(row["interests_after"] if drifted else row["interests"]))
        colours.append(row["colour"])
    item_colour = None
    if colour_family is not None:
        item_colour = np.array([colour_family.get(_colour_word(t), "") for t in ds.texts])

    def shares(top: np.ndarray) -> dict[str, float]:
        cat = np.mean([np.isin(cats[t], list(i)).mean() for t, i in zip(top, interests, strict=True)])
        out = {"interest_share@10": float(cat)}
        if item_colour is not None:
            out["colour_share@10"] = float(np.mean(
                [(item_colour[t] == c).mean() for t, c in zip(top, colours, strict=True)]))
        return out

    dummy = np.zeros(len(uidx), np.int64)
    result = {}
    for name, scorer in {"two_tower": trained.scorer(ds),
                         "popularity": Popularity(split.train, ds.n_items)}.items():
        _, top = ranks(scorer, hists, dummy, ds.n_items, seed, candidates=active, top=10)
        result[name] = shares(top)
    # random recommender: expected share = share of active catalogue in the user's categories
    rnd = {"interest_share@10": float(np.mean([np.isin(cats[active], list(i)).mean()
                                               for i in interests]))}
    if item_colour is not None:
        rnd["colour_share@10"] = float(np.mean([(item_colour[active] == c).mean() for c in colours]))
    result["random"] = rnd
    return {**result, "users": int(len(uidx))}


def _colour_word(text: str) -> str:
    """The colour attribute of a synthetic listing's text ("... . colour scarlet . ...")."""
    for part in text.split(" . "):
        if part.startswith("colour "):
            return part[len("colour "):]
    return ""


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"
