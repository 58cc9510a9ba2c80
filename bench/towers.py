"""ONNX Runtime throughput and latency of both towers at batch sizes 1, 8, 64, 256, 1024.

    flock /tmp/recstream-heavy.lock .venv/bin/python bench/towers.py          # make bench-model
    .venv/bin/python bench/towers.py --artifact artifacts/model --seconds 1
    bash bench/gpu_towers.sh prepare      # here; then on the GPU machine: bash bench/gpu_towers.sh run
    .venv/bin/python bench/towers.py --merge-gpu bench/results/towers_gpu.json

Writes bench/results/towers.json ({"cpu": {"user_tower": {"256": embeddings_per_s, ...},
"item_tower": {...}, "latency_ms": {...}}, "gpu": {...} or null}) and bench/results/towers.png.
"gpu" holds the CUDA provider's figures; they come from this machine when its onnxruntime offers
CUDA, else from a GPU machine: `bench/gpu_towers.sh run` writes towers_gpu.json there (CPU and CUDA
provider of that machine, "cuda_provider": {"available", "why"}, and with --torch-cuda a PyTorch
reference of the user tower, "torch_cuda", which is not ONNX Runtime) and --merge-gpu copies its
"gpu", "gpu_machine", "cuda_provider", "torch_cuda", "tensorrt" and "stream_run" into towers.json
(the CPU rows stay this machine's).

Runs the artifact in [model] artifact_dir (what `bench/model_quality.py` or `recs export` wrote); if
there is none, it exports an untrained model of the configured shape (speed does not depend on the
weights) and says so in the JSON. Inputs: user tower (B, N, d) unit vectors with every column
valid (the worst case, N = max_len); item tower real-looking listing texts, tokenized outside the
timed region (the tokenizer's cost is reported separately). Each point: warm-up, then repeated
runs for at least --seconds; embeddings/s = B x runs / time; latency p50/p99 per batch.
"user_tower_clicks": the user tower at batch 512 on one thread, on windows of 1, 4, 10, 25 and 50
clicks, run on that many columns (the dynamic clicks axis) against padded to N: us a row
(``--clicks-only`` measures just this into an existing towers.json).
CUDA (and TensorRT, if it loads) are measured when onnxruntime offers them; otherwise "gpu": null.
A provider that fails to load makes ONNX Runtime fall back to the CPU silently: every session is
checked with get_providers() and such a run is recorded as an error, never as GPU figures. Inputs
are numpy arrays, outputs come back as numpy: GPU figures include the host<->device copies.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
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
DEFAULT_OUT = ROOT / "bench" / "results" / "towers.json"
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
    lat: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(lat) < 5:
        t0 = time.perf_counter()
        sess.run(None, feed)
        lat.append(time.perf_counter() - t0)
    lat_arr = np.array(lat)
    b = next(iter(feed.values())).shape[0]
    return b * len(lat_arr) / lat_arr.sum(), float(np.percentile(lat_arr, 50) * 1e3), \
        float(np.percentile(lat_arr, 99) * 1e3)


def _user_input(rng: np.random.Generator, b: int, n: int, d: int) -> dict[str, np.ndarray]:
    x = rng.normal(size=(b, n, d)).astype(np.float32)                        # (B, N, d)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return {"item_vectors": x, "mask": np.ones((b, n), bool)}                # every column valid


def sessions_for(path: Path, providers: list[str], threads: int | None) -> dict[str, ort.InferenceSession]:
    """Both towers on `providers`; raises if the first one did not load (ORT would run on CPU)."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    out = {t: ort.InferenceSession(str(path / f"{t}.onnx"), opts, providers=providers)
           for t in ("user_tower", "item_tower")}
    for tower, sess in out.items():
        if providers[0] not in sess.get_providers():
            raise RuntimeError(f"{providers[0]} requested but the {tower} session runs on "
                               f"{sess.get_providers()} (the provider failed to load; see the log)")
    return out


def measure(path: Path, providers: list[str], seconds: float, threads: int | None) -> dict:
    art = load_artifact(path)
    sessions = sessions_for(path, providers, threads)
    rng = np.random.default_rng(0)
    out: dict = {"user_tower": {}, "item_tower": {}, "latency_ms": {"user_tower": {}, "item_tower": {}},
                 "providers": {t: s.get_providers() for t, s in sessions.items()}}
    for b in BATCHES:
        feed = _user_input(rng, b, art.max_len, art.dim)
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


def max_abs_diff(path: Path, providers: list[str], batch: int = 64) -> dict[str, float]:
    """Largest |embedding(providers) - embedding(CPU)| per tower on one batch: the GPU run is the
    same model, not just a fast one."""
    art = load_artifact(path)
    ref, dev = sessions_for(path, ["CPUExecutionProvider"], None), sessions_for(path, providers, None)
    ids, mask = encode(art.tokenizer, [TEXTS[i % len(TEXTS)] for i in range(batch)])
    feeds = {"user_tower": _user_input(np.random.default_rng(1), batch, art.max_len, art.dim),
             "item_tower": {"token_ids": ids, "token_mask": mask}}
    return {t: float(np.abs(dev[t].run(None, f)[0] - ref[t].run(None, f)[0]).max())
            for t, f in feeds.items()}


def gpu_machine() -> dict | None:
    """Name, driver and memory of the first NVIDIA GPU (nvidia-smi), or None without one."""
    try:
        row = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30,
                             check=True).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
    name, driver, mem = (c.strip() for c in row.split(","))
    return {"name": name, "driver": driver, "memory": mem}


def measure_torch_cuda(path: Path, checkpoint: str, seconds: float) -> dict:
    """Reference only, not ONNX Runtime: the user tower (models/towers.py) in PyTorch eager fp32 on
    CUDA, numpy in and out like the ONNX runs. `checkpoint`: a training checkpoint (its "user."
    weights are used) or "untrained" (the configured shape, seed 0)."""
    import torch

    from models.towers import UserTower

    art = load_artifact(path)
    if checkpoint == "untrained":
        cfg = load_settings().model
        torch.manual_seed(0)
        user = UserTower(cfg.dim, cfg.hidden, cfg.user_encoder, cfg.heads, cfg.layers, cfg.max_len)
        weights = "untrained (configured shape, seed 0)"
    else:
        ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
        c = ck["model_config"]
        user = UserTower(c["dim"], c["hidden"], c["encoder"], c["heads"], c["layers"], c["max_len"])
        user.load_state_dict({k.removeprefix("user."): v for k, v in ck["state_dict"].items()
                              if k.startswith("user.")})
        weights = f"trained checkpoint {Path(checkpoint).name}"
    user = user.eval().cuda()

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(feed["item_vectors"]).cuda()               # (B, N, d)
            m = torch.from_numpy(feed["mask"]).cuda()                        # (B, N)
            return user(x, m).cpu().numpy()                                  # (B, d), synchronizes

    rng = np.random.default_rng(0)
    out: dict = {"what": "PyTorch eager fp32 on CUDA, models/towers.py UserTower; a reference, "
                         "not ONNX Runtime; host<->device copies included",
                 "torch": torch.__version__, "device": torch.cuda.get_device_name(0), "weights": weights,
                 "user_tower": {}, "latency_ms": {"user_tower": {}}}
    for b in BATCHES:
        feed = _user_input(rng, b, art.max_len, art.dim)
        for _ in range(3):
            run(feed)
        lat: list[float] = []
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(lat) < 5:
            t0 = time.perf_counter()
            run(feed)
            lat.append(time.perf_counter() - t0)
        arr = np.array(lat)
        out["user_tower"][str(b)] = round(b * len(arr) / arr.sum(), 1)
        out["latency_ms"]["user_tower"][str(b)] = {"p50": round(float(np.percentile(arr, 50)) * 1e3, 3),
                                                   "p99": round(float(np.percentile(arr, 99)) * 1e3, 3)}
        log.info("torch cuda batch %d: user %.0f/s", b, out["user_tower"][str(b)])
    feed = _user_input(np.random.default_rng(1), 64, art.max_len, art.dim)
    ref = sessions_for(path, ["CPUExecutionProvider"], None)["user_tower"].run(None, feed)[0]
    out["max_abs_diff_vs_onnx_cpu"] = float(np.abs(run(feed) - ref).max())
    return out


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for dev in ("cpu", "gpu", "tensorrt"):
        if not res.get(dev) or "error" in res[dev]:
            continue
        for tower, style in (("user_tower", "-o"), ("item_tower", "--s")):
            xs = [int(b) for b in res[dev][tower]]
            ax.plot(xs, list(res[dev][tower].values()), style, label=f"{tower} ({dev})")
    if "user_tower" in (res.get("torch_cuda") or {}):
        xs = [int(b) for b in res["torch_cuda"]["user_tower"]]
        ax.plot(xs, list(res["torch_cuda"]["user_tower"].values()), ":^",
                label="user_tower (PyTorch CUDA, reference)")
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
    gm = res.get("gpu_machine") or {}
    other = (f", model {gm['model_version']} of the same shapes"
             if gm.get("model_version", m["model_version"]) != m["model_version"] else "")
    gpu = ("no GPU on this machine" if not res.get("gpu") else
           f"GPU rows from the CUDA provider on {gm['gpu']['name']} (onnxruntime-gpu "
           f"{gm['onnxruntime']}{other}, `bench/gpu_towers.sh`)" if gm.get("gpu") else
           "GPU rows from the CUDA provider")
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


CLICKS = (1, 4, 10, 25, 50)


def measure_clicks(path: Path, seconds: float, batch: int = 512) -> dict:
    """The user tower on windows of n clicks, one thread (a Flink worker's setting): run on n
    columns (the dynamic clicks axis, what ``Artifact.embed_users`` does) against padded to N
    (what a fixed-N graph needs). Microseconds a row, best of the timed runs' mean."""
    from models.artifact import load_artifact

    art = load_artifact(path)
    if not art.clicks_axis:
        return {"error": f"{path}: the user tower has N fixed; `recs export --upgrade {path}` first"}
    sess = sessions_for(path, ["CPUExecutionProvider"], 1)["user_tower"]
    rng = np.random.default_rng(0)
    out: dict = {"batch": batch, "threads": 1, "us_per_row": {}}
    for n in CLICKS:
        if n > art.max_len:
            continue
        x = _user_input(rng, batch, n, art.dim)
        padded = {"item_vectors": np.zeros((batch, art.max_len, art.dim), np.float32),
                  "mask": np.zeros((batch, art.max_len), bool)}
        padded["item_vectors"][:, -n:], padded["mask"][:, -n:] = x["item_vectors"], True
        row = {name: round(1e6 / _time(sess, feed, seconds)[0], 1)
               for name, feed in (("clicks_axis", x), ("padded_to_N", padded))}
        out["us_per_row"][str(n)] = row
        log.info("user tower, %d clicks: %.1f us/row (padded to N: %.1f)", n, row["clicks_axis"],
                 row["padded_to_N"])
    return out


def merge_gpu(gpu_file: Path, out: Path) -> dict:
    """Copy a GPU machine's results (towers_gpu.json) into `out` (towers.json), CPU rows kept."""
    g, res = json.loads(gpu_file.read_text()), json.loads(out.read_text())
    if g["model"]["model_version"] != res["model"]["model_version"]:
        log.warning("GPU run used model %s, %s has %s", g["model"]["model_version"], out.name,
                    res["model"]["model_version"])
    res["gpu"] = g.get("gpu")
    res["gpu_machine"] = {**{k: v for k, v in g["machine"].items() if k != "env"},
                          "model_version": g["model"]["model_version"], "source": gpu_file.name}
    for key in ("cuda_provider", "torch_cuda", "tensorrt", "stream_run"):
        if key in g:
            res[key] = g[key]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", type=Path, default=None)
    ap.add_argument("--seconds", type=float, default=2.0, help="timed run per point")
    ap.add_argument("--threads", type=int, default=None,
                    help="ONNX Runtime intra-op threads (default: ORT's choice = all cores)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--torch-cuda", metavar="CHECKPOINT", default=None,
                    help='also time the user tower in PyTorch on CUDA (a reference, not ONNX Runtime): '
                         'a training checkpoint, or "untrained"')
    ap.add_argument("--merge-gpu", type=Path, metavar="TOWERS_GPU_JSON", default=None,
                    help="measure nothing: copy a GPU machine's results into --out")
    ap.add_argument("--clicks-only", action="store_true",
                    help="measure only user_tower_clicks (windows of 1..N clicks) into --out, keep the rest")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.merge_gpu:
        write(merge_gpu(args.merge_gpu, args.out), args.out)
        return
    path, which = _artifact_path(args.artifact)
    if args.clicks_only:
        res = json.loads(args.out.read_text())
        res["user_tower_clicks"] = measure_clicks(path, args.seconds)
        write(res, args.out)
        return
    meta = json.loads((path / "metadata.json").read_text())
    res: dict = {"model": {"model_version": meta["model_version"], "weights": which,
                           "dim": meta["dim"], "max_len": meta["max_len"],
                           "max_tokens": meta["max_tokens"], "user_encoder": meta["user_encoder"]},
                 "machine": {"cpus": len(os.sched_getaffinity(0)), "onnxruntime": ort.__version__,
                             "available_providers": ort.get_available_providers(),
                             "gpu": gpu_machine()},
                 "cpu": measure(path, ["CPUExecutionProvider"], args.seconds, args.threads),
                 "gpu": None}
    avail = ort.get_available_providers()
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in avail:
        res["cuda_provider"] = {"available": False, "why": f"onnxruntime {ort.__version__} offers "
                                f"{avail}, no CUDAExecutionProvider"}
    else:
        try:
            res["gpu"] = measure(path, cuda, args.seconds, args.threads)
            res["gpu"]["max_abs_diff_vs_cpu"] = max_abs_diff(path, cuda)
            res["cuda_provider"] = {"available": True, "why": None}
        except Exception as e:  # a provider that does not load: record why, keep the CPU figures
            log.exception("CUDA provider failed")
            res["cuda_provider"] = {"available": False, "why": f"{type(e).__name__}: {e}"}
    if args.torch_cuda:
        try:
            res["torch_cuda"] = measure_torch_cuda(path, args.torch_cuda, args.seconds)
        except Exception as e:  # the reference is optional: record why it did not run
            log.exception("PyTorch CUDA reference failed")
            res["torch_cuda"] = {"error": f"{type(e).__name__}: {e}"}
    if "TensorrtExecutionProvider" in avail:
        try:
            res["tensorrt"] = measure(path, ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                             "CPUExecutionProvider"], args.seconds, args.threads)
        except Exception as e:  # TensorRT is optional: record why it did not run
            res["tensorrt"] = {"error": f"{type(e).__name__}: {e}"}
    res["user_tower_clicks"] = measure_clicks(path, args.seconds)
    write(res, args.out)


def write(res: dict, out: Path) -> None:
    """JSON, plot beside it, and (for the default towers.json only) the table in docs/model.md."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    plot(res, out.with_suffix(".png"))
    if out.resolve() == DEFAULT_OUT.resolve():
        update_doc(res, ROOT / "docs" / "model.md")
    print(json.dumps({d: res[d] and {t: res[d][t] for t in ("user_tower", "item_tower")}
                      for d in ("cpu", "gpu") if res.get(d) is None or "user_tower" in res[d]},
                     indent=2))


if __name__ == "__main__":
    main()
