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


SECTIONS: list[tuple[str, Callable[[dict[str, Any]], list[str]]]] = [
    ("data.json", data_section), ("model_quality.json", model_section), ("towers.json", towers_section),
    ("ann.json", ann_section), ("serve.json", serve_section),
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
