"""ONNX Runtime throughput and latency of both towers at batch sizes 1, 8, 64, 256, 1024.

    flock /tmp/recstream-heavy.lock .venv/bin/python bench/towers.py          # make bench-model
    .venv/bin/python bench/towers.py --artifact artifacts/model --seconds 1

Writes bench/results/towers.json ({"cpu": {"user_tower": {"256": embeddings_per_s, ...},
"item_tower": {...}, "latency_ms": {...}}, "gpu": {...} or null}) and bench/results/towers.png.

Runs the artifact in [model] artifact_dir (what `bench/model_quality.py` or `recs export` wrote); if
there is none, it exports an untrained model of the configured shape (speed does not depend on the
weights) and says so in the JSON. Inputs: user tower (B, N, d) unit vectors with every column
valid (the worst case, N = max_len); item tower real-looking listing texts, tokenized outside the
timed region (the tokenizer's cost is reported separately). Each point: warm-up, then repeated
runs for at least --seconds; embeddings/s = B x runs / time; latency p50/p99 per batch.
CUDA (and TensorRT, if it loads) are measured when onnxruntime offers them; otherwise "gpu": null.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf import load_settings  # noqa: E402
from models.artifact import load_artifact  # noqa: E402
from models.tokenizer import encode  # noqa: E402

log = logging.getLogger("bench.towers")
BATCHES = (1, 8, 64, 256, 1024)
TEXTS = ["Sava scarlet silk midi dress . dresses . An elegant midi dress in scarlet silk, size M.",
         "Toy Story (1995) . Adventure . Adventure, Animation, Children, Comedy, Fantasy",
         "Luterden navy stretch denim skinny jeans . jeans . brand Luterden . colour navy",
         "Oak coffee table . furniture . A sturdy coffee table in light oak."]


def _artifact_path(requested: Path | None) -> tuple[Path, str]:
    path = requested or load_settings().model.artifact_dir
    if (path / "metadata.json").is_file():
        return path, "trained"
    import torch

    from models.export import export
    from models.tokenizer import train_tokenizer
    from models.train import Trained, build_model

    cfg = load_settings().model
    torch.manual_seed(0)
    tok = train_tokenizer(TEXTS * 50, cfg.vocab_size, cfg.max_tokens)
    model = build_model(cfg, cfg.vocab_size).eval()
    out = Path(tempfile.mkdtemp(prefix="towers-bench-"))
    export(Trained(model, tok, cfg), out)
    return out, "untrained (no artifact found; same shapes, speed does not depend on weights)"


def _time(sess: ort.InferenceSession, feed: dict, seconds: float) -> tuple[float, float, float]:
    for _ in range(3):
        sess.run(None, feed)
    lat = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(lat) < 5:
        t0 = time.perf_counter()
        sess.run(None, feed)
        lat.append(time.perf_counter() - t0)
    lat_arr = np.array(lat)
    b = next(iter(feed.values())).shape[0]
    return b * len(lat_arr) / lat_arr.sum(), float(np.percentile(lat_arr, 50) * 1e3), \
        float(np.percentile(lat_arr, 99) * 1e3)


def measure(path: Path, providers: list[str], seconds: float, threads: int | None) -> dict:
    art = load_artifact(path)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sessions = {
        "user_tower": ort.InferenceSession(str(path / "user_tower.onnx"), opts, providers=providers),
        "item_tower": ort.InferenceSession(str(path / "item_tower.onnx"), opts, providers=providers)}
    rng = np.random.default_rng(0)
    out: dict = {"user_tower": {}, "item_tower": {}, "latency_ms": {"user_tower": {}, "item_tower": {}},
                 "providers": sessions["user_tower"].get_providers()}
    for b in BATCHES:
        x = rng.normal(size=(b, art.max_len, art.dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=-1, keepdims=True)
        feed = {"item_vectors": x, "mask": np.ones((b, art.max_len), bool)}
        eps, p50, p99 = _time(sessions["user_tower"], feed, seconds)
        out["user_tower"][str(b)] = round(eps, 1)
        out["latency_ms"]["user_tower"][str(b)] = {"p50": round(p50, 3), "p99": round(p99, 3)}
        ids, mask = encode(art.tokenizer, [TEXTS[i % len(TEXTS)] for i in range(b)])
        eps, p50, p99 = _time(sessions["item_tower"], {"token_ids": ids, "token_mask": mask}, seconds)
        out["item_tower"][str(b)] = round(eps, 1)
        out["latency_ms"]["item_tower"][str(b)] = {"p50": round(p50, 3), "p99": round(p99, 3)}
        log.info("%s batch %d: user %.0f/s, item %.0f/s", providers[0], b,
                 out["user_tower"][str(b)], out["item_tower"][str(b)])
    texts = [TEXTS[i % len(TEXTS)] for i in range(4096)]
    t0 = time.perf_counter()
    encode(art.tokenizer, texts)
    out["tokenizer_texts_per_s"] = round(len(texts) / (time.perf_counter() - t0), 1)
    return out


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for dev in ("cpu", "gpu", "tensorrt"):
        if not res.get(dev):
            continue
        for tower, style in (("user_tower", "-o"), ("item_tower", "--s")):
            xs = [int(b) for b in res[dev][tower]]
            ax.plot(xs, list(res[dev][tower].values()), style, label=f"{tower} ({dev})")
    ax.axhline(10_000, color="grey", lw=0.8, ls=":", label="10k/s goal (user, batch 256)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("embeddings / s")
    ax.set_title("ONNX Runtime throughput per tower")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def doc_section(res: dict) -> str:
    """Markdown for docs/model.md (between the towers markers)."""
    lines = ["| tower | " + " | ".join(f"batch {b}" for b in BATCHES) + " |",
             "|---|" + "---|" * len(BATCHES)]
    for dev in ("cpu", "gpu"):
        if not res.get(dev):
            continue
        for tower in ("user_tower", "item_tower"):
            cells = [f"{res[dev][tower][str(b)]:,.0f}/s ({res[dev]['latency_ms'][tower][str(b)]['p50']:.2f} ms)"
                     for b in BATCHES]
            lines.append(f"| {tower} ({dev}) | " + " | ".join(cells) + " |")
    m = res["model"]
    gpu = "no GPU on this machine" if not res.get("gpu") else "GPU rows from the CUDA provider"
    return (f"ONNX Runtime {res['machine']['onnxruntime']}, {res['machine']['cpus']} CPU cores, "
            f"{gpu}; model {m['model_version']} ({m['weights']}), d = {m['dim']}, "
            f"N = {m['max_len']}, T = {m['max_tokens']} tokens. Embeddings per second "
            f"(p50 latency per batch), from `bench/towers.py` -> `bench/results/towers.json`:\n\n"
            + "\n".join(lines) + "\n")


def update_doc(res: dict, doc: Path) -> None:
    start, end = "<!-- towers -->", "<!-- /towers -->"
    if not doc.is_file() or start not in doc.read_text():
        return
    text = doc.read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(head + start + "\n" + doc_section(res) + end + tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", type=Path, default=None)
    ap.add_argument("--seconds", type=float, default=2.0, help="timed run per point")
    ap.add_argument("--threads", type=int, default=None,
                    help="ONNX Runtime intra-op threads (default: ORT's choice = all cores)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "towers.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path, which = _artifact_path(args.artifact)
    meta = json.loads((path / "metadata.json").read_text())
    res: dict = {"model": {"model_version": meta["model_version"], "weights": which,
                           "dim": meta["dim"], "max_len": meta["max_len"],
                           "max_tokens": meta["max_tokens"], "user_encoder": meta["user_encoder"]},
                 "machine": {"cpus": len(os.sched_getaffinity(0)), "onnxruntime": ort.__version__,
                             "available_providers": ort.get_available_providers()},
                 "cpu": measure(path, ["CPUExecutionProvider"], args.seconds, args.threads),
                 "gpu": None}
    avail = ort.get_available_providers()
    if "CUDAExecutionProvider" in avail:
        res["gpu"] = measure(path, ["CUDAExecutionProvider", "CPUExecutionProvider"], args.seconds,
                             args.threads)
    if "TensorrtExecutionProvider" in avail:
        try:
            res["tensorrt"] = measure(path, ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                             "CPUExecutionProvider"], args.seconds, args.threads)
        except Exception as e:  # TensorRT is optional: record why it did not run
            res["tensorrt"] = {"error": f"{type(e).__name__}: {e}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    plot(res, args.out.with_suffix(".png"))
    update_doc(res, ROOT / "docs" / "model.md")
    print(json.dumps({d: res[d] and {t: res[d][t] for t in ("user_tower", "item_tower")}
                      for d in ("cpu", "gpu")}, indent=2))


if __name__ == "__main__":
    main()
