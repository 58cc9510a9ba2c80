"""Render bench/results/*.json into the results section of README.md (between the markers).

    .venv/bin/python bench/report.py          # every bench target runs it at the end

Each benchmark owns its JSON file; a file that is absent is skipped, so the table only ever shows
figures that a benchmark wrote.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float) and x == 0:
        return "0"
    if isinstance(x, float):
        return f"{x:,.{digits}f}" if abs(x) < 100 else f"{x:,.0f}"
    if isinstance(x, int):
        return f"{x:,}"
    return "–" if x is None else str(x)


def data_section(d: dict[str, Any]) -> list[str]:
    rows = ["**Synthetic data generation** (`make bench-data`, `bench/results/data.json`)", "",
            "| catalogue | items | users | clicks | wall s | clicks/s | peak RSS MB | Parquet MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in d["runs"]:
        rows.append(f"| {r.get('catalogue', 'default')} | {_fmt(r['items'])} | {_fmt(r['users'])} | "
                    f"{_fmt(r['events'])} | {_fmt(r['wall_s'], 1)} | {_fmt(r['events_per_s'])} | "
                    f"{_fmt(r['peak_rss_mb'], 0)} | {_fmt(r['parquet_mb'], 1)} |")
    return rows


def model_section(d: dict[str, Any]) -> list[str]:
    models = d.get("models", {})
    dataset = d.get("dataset", "")
    if isinstance(dataset, dict):
        dataset = (f"{dataset.get('dataset', '')} ({_fmt(dataset.get('clicks'))} clicks, "
                   f"{_fmt(dataset.get('users'))} users)")
    metrics = ["recall@10", "recall@20", "recall@50", "ndcg@10", "mrr"]
    rows = [f"**Model quality** (`make bench-model`, `bench/results/model_quality.json`): {dataset}, "
            f"{d.get('protocol', '')}, seeds {d.get('seeds', '')}", "",
            "| model | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for name, m in models.items():
        cells = []
        for k in metrics:
            v, sd = m.get(k), m.get(f"{k}_std")
            cells.append("–" if v is None else (f"{v:.4f} ± {sd:.4f}" if sd is not None else f"{v:.4f}"))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def towers_section(d: dict[str, Any]) -> list[str]:
    rows = ["**ONNX towers, embeddings/s** (`bench/results/towers.json`)", ""]
    for device in ("cpu", "gpu"):
        dev = d.get(device)
        if not dev:
            rows.append(f"- {device}: not measured on this machine" if device == "gpu" else "- cpu: –")
            continue
        for tower, by_batch in dev.items():
            if isinstance(by_batch, dict) and tower.endswith("_tower"):
                cells = ", ".join(f"batch {b}: {_fmt(v)}" for b, v in by_batch.items() if not isinstance(v, dict))
                rows.append(f"- {device} {tower}: {cells}")
    return rows


def ann_section(d: dict[str, Any]) -> list[str]:
    best = d.get("best_qps_at_recall_0.95", {})
    rows = ["**ANN search** (`make bench-serving`, `bench/results/ann.json`): best single-thread QPS at "
            "recall@10 ≥ 0.95", "", "| engine | QPS |", "|---|---:|"]
    for name, v in best.items():
        rows.append(f"| {name} | {_fmt(v if not isinstance(v, dict) else v.get('qps'))} |")
    for key in ("upserts_per_s", "deletes_per_s", "search_p99_ms_during_upserts"):
        if key in d:
            rows.append(f"| {key} | {_fmt(d[key])} |")
    return rows


def serve_section(d: dict[str, Any]) -> list[str]:
    at = f" at {_fmt(d['at_n'])} items" if "at_n" in d else ""
    rows = [f"**Read path, HTTP → Redis → gRPC index over loopback{at}** (`bench/results/serve.json`)", "",
            "| engine | max req/s with p99 < 10 ms | upsert visible p50 / p99 ms | delete visible p50 / p99 ms |",
            "|---|---:|---:|---:|"]
    rps, vis = d.get("max_rps_p99_under_10ms", {}), d.get("visibility_ms", {})
    for name in rps:
        v = vis.get(name, {})
        up, de = v.get("upsert", {}), v.get("delete", {})
        rows.append(f"| {name} | {_fmt(rps[name])} | {_fmt(up.get('p50'), 1)} / {_fmt(up.get('p99'), 1)} | "
                    f"{_fmt(de.get('p50'), 1)} / {_fmt(de.get('p99'), 1)} |")
    return rows


def time_split_section(d: dict[str, Any]) -> list[str]:
    ts = d.get("time_split")
    if not ts:
        return []
    cuts = ts.get("cuts", {})
    rows = [f"**Model quality, global time split** (`bench/results/model_quality.json` `time_split`): fitted "
            f"before {cuts.get('val_cut')}, targets after {cuts.get('test_cut')}; {_fmt(ts.get('test_users'))} "
            f"test users, {_fmt(ts.get('test_pairs'))} targets, seeds {ts.get('seeds')}; 95 % user-bootstrap "
            "intervals (the difference is paired: two-tower minus the model)", "",
            "| model | recall@10 | 95 % interval | two-tower minus model | 95 % interval |",
            "|---|---:|---:|---:|---:|"]
    for name, b in ts.get("bootstrap", {}).items():
        ci, dci = b.get("recall@10_ci") or [None, None], b.get("recall@10_diff_ci")
        diff = "–" if dci is None else f"{b['recall@10_diff']:+.4f}"
        rows.append(f"| {name} | {b['recall@10']:.4f} | [{ci[0]:.3f}, {ci[1]:.3f}] | {diff} | "
                    + ("–" if dci is None else f"[{dci[0]:.3f}, {dci[1]:.3f}]") + " |")
    return rows


def filtered_section(d: dict[str, Any]) -> list[str]:
    f = d.get("filtered_recall")
    if not f:
        return []
    sels = [str(x) for x in f["selectivities"]]
    rows = [f"**Filtered search** (`bench/ann.py --filtered-only`, `ann.json` `filtered_recall`): "
            f"{_fmt(f['n'])} × {f['d']}, recall@10 / single-thread QPS by share of rows passing the filter", "",
            "| distribution | engine | unfiltered | " + " | ".join(f"{float(x):.2%}" for x in sels) + " |",
            "|---|---|---:|" + "---:|" * len(sels)]
    for dist, dd in f["distributions"].items():
        for eng in ("ours", "hnswlib"):
            r = dd.get(eng)
            if not r:
                continue
            cells = [f"{r[k]['recall@10']:.3f} / {_fmt(r[k]['qps'])}" if k in r else "–" for k in ["unfiltered", *sels]]
            rows.append(f"| {dist} | {eng} | " + " | ".join(cells) + " |")
    return rows


def stall_section(d: dict[str, Any]) -> list[str]:
    st = d.get("stall")
    if not st:
        return []
    rows = [f"**Small searches beside long BatchSearches** (`bench/ann.py --stall-only`, `ann.json` `stall`): "
            f"{_fmt(st['n'])} rows, {st['batch_queries']}-query batches, server/load/client in 3 processes", "",
            "| setting | small-search p50 / p99 ms | upserts/s meanwhile |", "|---|---:|---:|",
            f"| idle | {_fmt(st['idle_p50_ms'], 2)} / {_fmt(st['idle_p99_ms'], 2)} | 0 |"]
    for name, r in st.items():
        if isinstance(r, dict) and "during_p99_ms" in r:
            rows.append(f"| {name} | {_fmt(r['during_p50_ms'], 2)} / {_fmt(r['during_p99_ms'], 2)} | "
                        f"{_fmt(r['upserts_per_s_meanwhile'], 0)} |")
    return rows


def soak_section(d: dict[str, Any]) -> list[str]:
    t, c = d["totals"], d["config"]
    lat = t["latency_ms"]
    rss = t["rss_trend_from_minute_2"]
    rows = [f"**Soak** (`make bench-soak`, `bench/results/soak.json`): {c['minutes']} minutes of mixed load against "
            f"real Redis, index server and HTTP backend ({_fmt(c['http_rate'], 0)} HTTP, {_fmt(c['search_rate'], 0)} "
            f"searches, {_fmt(c['update_rate'], 0)}×8 updates, {_fmt(c['insert_rate'], 0)} inserts, "
            f"{_fmt(c['delete_rate'], 0)} deletes a second)", "",
            "| HTTP 5xx | wrong results | failed gRPC calls | HTTP p50 / p99 ms | search p50 / p99 ms | "
            "RSS growth from minute 2, MiB (index / backend / redis) |", "|---:|---:|---:|---:|---:|---:|",
            f"| {_fmt(t['http_5xx'])} | {_fmt(t['wrong_results'])} | {_fmt(sum(t['failed_requests'].values()))} | "
            f"{_fmt(lat['http']['p50'], 1)} / {_fmt(lat['http']['p99'], 1)} | "
            f"{_fmt(lat['search']['p50'], 1)} / {_fmt(lat['search']['p99'], 1)} | "
            f"{_fmt(rss['index']['growth_mib'], 1)} / {_fmt(rss['backend']['growth_mib'], 1)} / "
            f"{_fmt(rss['redis']['growth_mib'], 1)} |"]
    return rows


def _p99(r: dict[str, Any]) -> str:
    """The best round's p99, and every round's when there were several: ``975 (1,000 / 975)``."""
    rounds = r.get("p99_ms_rounds") or []
    best = _fmt(r.get("p99_ms"), 0)
    return best if len(rounds) < 2 else f"{best} ({' / '.join(_fmt(x, 0) for x in rounds)})"


def stream_section(d: dict[str, Any]) -> list[str]:
    c, st = d.get("config", {}), d.get("settings", {})
    best = d.get("max_rate_p99_under_1s", {})
    systems = [s for s in ("flink", "plain_consumer") if any(s in row for row in d["by_rate"].values())]
    rows = [f"**Streaming user embeddings, click → KV record** (`make bench-stream`, `bench/results/stream.json`): "
            f"{c.get('seconds')} s measured per rate after {c.get('warmup_s')} s warm-up"
            + (f" (and once, before the sweep, {_fmt(c['jvm_warmup']['seconds'], 0)} s of the job at "
               f"{_fmt(c['jvm_warmup']['rate'])}/s to warm the TaskManager's JIT)" if c.get("jvm_warmup") else "")
            + f"; Flink parallelism "
            f"{st.get('parallelism')}, bundle {st.get('bundle_time_ms')} ms; peer: "
            f"{st.get('peer', {}).get('processes', 1)} process(es), fetch wait "
            f"{st.get('peer', {}).get('fetch_wait_ms')} ms; click producer linger {c.get('producer_linger_ms', 5)} ms, "
            f"clicks in the {c.get('click_form', 'reordered')} form; "
            "latency = KV write time − ts of each measured user's "
            "last click; CPU 100 = one core (system + Redis)", "",
            "| offered/s | system | achieved/s | p50 ms | p99 ms (each round) | mean ONNX batch | CPU % |",
            "|---:|---|---:|---:|---:|---:|---:|"]
    for rate, row in d["by_rate"].items():
        for s in systems:
            r = row.get(s)
            if r is None:
                continue
            if r.get("p99_ms") is None:
                rows.append(f"| {_fmt(int(rate))} | {s} | failed: {str(r.get('error', ''))[:80]} | | | | |")
                continue
            rows.append(f"| {_fmt(int(rate))} | {s} | {_fmt(r['achieved_per_s'], 0)} | {_fmt(r['p50_ms'], 0)} | "
                        f"{_p99(r)} | {_fmt(r.get('mean_batch'), 1)} | {_fmt(r['cpu_percent'], 0)} |")
    sustained, ratio = d.get("sustained_p99_under_1s") or {}, d.get("ratio_flink_to_peer") or {}
    every = d.get("every_round_p99_under_1s") or {}
    rows += ["", "Highest offered rate with p99 < 1 s: " + ", ".join(f"{s} {_fmt(best.get(s))}/s" for s in systems)
             + (" (with every lower rate under 1 s too: "
                + ", ".join(f"{s} {_fmt(sustained.get(s))}/s" for s in systems) + ")" if sustained else "")
             + (f"; the job's ratio to the peer {ratio.get('max_rate_p99_under_1s')} "
                f"({ratio.get('sustained_p99_under_1s')} sustained)" if ratio else "")
             + ("; in every round, with every lower rate: "
                + ", ".join(f"{s} {_fmt(every.get(s))}/s" for s in systems)
                + (f" (ratio {ratio.get('every_round_p99_under_1s')})" if ratio else "") if every else "")
             + (f"; `recs probe freshness` p99 {_fmt(d['freshness_probe_p99_ms'], 0)} ms"
                if d.get("freshness_probe_p99_ms") is not None else "")]
    fr = d.get("freshness")
    if fr and fr.get("kv") and fr.get("serve") and fr.get("background"):
        rows += ["", f"Freshness probe (`bench/freshness.py`: {_fmt(fr['background']['achieved_per_s'], 0)} background "
                 f"clicks/s; {fr['kv']['seen']} of {fr['kv']['seen'] + fr['kv']['timed_out']} probes seen, "
                 f"{fr['kv']['timed_out']} timed out): click → KV p50 {_fmt(fr['kv']['p50_ms'], 0)} / p99 "
                 f"{_fmt(fr['kv']['p99_ms'], 0)} ms; click → `/recommendations` answer p50 "
                 f"{_fmt(fr['serve']['p50_ms'], 0)} / p99 {_fmt(fr['serve']['p99_ms'], 0)} ms"]
    for name, ab in (d.get("ablations") or {}).items():
        if "by_rate" not in ab:     # a hand-assembled comparison (e.g. parse_paths): docs/streaming.md quotes it
            continue
        per_rate = [f"{_fmt(int(rate))}/s " + ", ".join(f"{x} p99 {_p99(r)} ms"
                                                         for x, r in row.items())
                    for rate, row in ab["by_rate"].items()]
        cfg = ab.get("config")
        about = (f"click producer linger {cfg.get('producer_linger_ms')} ms, {cfg.get('clicks_per_user')} clicks per "
                 f"user, parallelism {cfg.get('parallelism', 1)}"
                 + (f", {_fmt(cfg['warmup_s'], 0)} s warm-up a step" if cfg.get("warmup_s") else "")
                 + (f", clicks {cfg['click_form']}" if cfg.get("click_form") else "")) if cfg else ab.get("what", "")
        rows += ["", f"Ablation `{name}` ({about}): " + "; ".join(per_rate)]
    designs = d.get("designs") or []
    if designs:
        rows += ["", "Design ablation (same data, same rate, same model and KV writes):", "",
                 "| design | offered/s | achieved/s | p50 ms | p99 ms | mean batch | CPU % |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        rows += [f"| {x['design']} | {_fmt(x['offered_per_s'])} | {_fmt(x.get('achieved_per_s'), 0)} | "
                 f"{_fmt(x.get('p50_ms'), 0)} | {_fmt(x.get('p99_ms'), 0)} | {_fmt(x.get('mean_batch'), 1)} | "
                 f"{_fmt(x.get('cpu_percent'), 0)} |" for x in designs]
    ix = d.get("item_index")
    if ix:
        cfg = ix.get("config", {})
        rows += ["", f"**Streaming listings into the live index** (`bench/listings.py`): the item-index job → "
                 f"item_embeddings → the index service's feeder ({ix.get('settings', {}).get('index_kind')}), "
                 f"{cfg.get('seconds')} s a rate, every {cfg.get('remove_every')}th listing removed "
                 f"{cfg.get('remove_after_s')} s later; latency = first gRPC lookup that shows it − event ts; "
                 "search = one k = 10 query at a time during the stream; removed from answers = the read path "
                 f"(`/recommendations`) of {cfg.get('answer_probes')} probe users, vector = a removed listing's",
                 "", "| offered listings/s | achieved events/s (listings + removals shown) | visible p50 / p99 ms | "
                 "removed p50 / p99 ms | removed from answers p50 / p99 ms | search p50 / p99 ms |",
                 "|---:|---:|---:|---:|---:|---:|"]
        rows += [f"| {_fmt(x['offered_per_s'])} | {_fmt(x['achieved_per_s'], 0)} | {_fmt(x['visible_p50_ms'], 0)} / "
                 f"{_fmt(x['visible_p99_ms'], 0)} | {_fmt(x['removed_p50_ms'], 0)} / {_fmt(x['removed_p99_ms'], 0)} | "
                 f"{_fmt(x.get('removed_from_answers_p50_ms'), 0)} / {_fmt(x.get('removed_from_answers_p99_ms'), 0)} | "
                 f"{_fmt(x['search_p50_ms'], 1)} / {_fmt(x['search_p99_ms'], 1)} |" for x in ix["by_rate"]]
        rows += ["", f"Highest rate with visible p99 < 2 s: {_fmt(d.get('item_index_max_rate_p99_under_2s'))}/s "
                 f"(visible p99 {_fmt(d.get('listing_visible_p99_ms'), 0)} ms, removed p99 "
                 f"{_fmt(d.get('listing_removed_p99_ms'), 0)} ms, removed from answers p99 "
                 f"{_fmt(d.get('listing_removed_from_answers_p99_ms'), 0)} ms)"]
    return rows


def ann_all(d: dict[str, Any]) -> list[str]:
    out = ann_section(d)
    for fn in (filtered_section, stall_section):
        part = fn(d)
        if part:
            out += [""] + part
    return out


def model_all(d: dict[str, Any]) -> list[str]:
    part = time_split_section(d)
    return model_section(d) + ([""] + part if part else [])


SECTIONS: list[tuple[str, Callable[[dict[str, Any]], list[str]]]] = [
    ("data.json", data_section), ("model_quality.json", model_all), ("towers.json", towers_section),
    ("ann.json", ann_all), ("serve.json", serve_section), ("soak.json", soak_section),
    ("stream.json", stream_section),
]


def render() -> str:
    out: list[str] = []
    for name, fn in SECTIONS:
        path = RESULTS / name
        if path.exists():
            try:
                out += fn(json.loads(path.read_text())) + [""]
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                out += [f"({name}: could not render: {e})", ""]
    return "\n".join(out).strip() or "(no benchmark has been run yet)"


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{render()}\n{END}{tail}")
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
