"""Read-path benchmark: HTTP -> Redis -> index, over loopback, at increasing concurrency.

    .venv/bin/python bench/serve.py                          # 100 k and 1 M items (bench/results/serve.json)
    .venv/bin/python bench/serve.py --sizes 20000 --concurrency 1,4 --duration 2 --out /tmp/serve.json

For each catalogue size, two backends serve the same users and queries with the same code
(``recs.serving``: FastAPI + uvicorn, one worker, Redis user records):
- ``ours``: the index is ``recs index serve`` in its own process (HNSW, settings defaults), called
  over gRPC by ``recs serve``;
- ``milvus_lite``: the same read path, the index is milvus-lite (embedded Milvus, HNSW with the same
  M / efConstruction / ef), opened inside the backend process (milvus-lite allows one process).
Every process runs on this machine, the load generator too (asyncio, keep-alive connections, closed
loop): p50/p99 latency and throughput per concurrency level, and ``max_rps_p99_under_10ms``.
Also, per backend: recall@10 of the index as the read path calls it (against exact search), and
how long an upsert and a delete take to become visible to a search (``visibility_ms``).

The 1 M HNSW index is restored from the snapshot bench/ann.py saved (same vectors, same ids);
without it, it is built here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ann import clustered, ground_truth  # noqa: E402  (bench/ann.py: the same data generator)

from conf import load_settings  # noqa: E402
from conf.settings import Settings, to_env, with_overrides  # noqa: E402
from index.errors import ModelVersionMismatch  # noqa: E402

log = logging.getLogger("bench.serve")
ROOT = Path(__file__).resolve().parent.parent
D = 128
MODEL = "bench"
K = 20


# --------------------------------------------------------------------------- milvus-lite peer
class MilvusIndexClient:
    """The IndexClient protocol over milvus-lite (bench only): HNSW, IP, an ``active`` field."""

    def __init__(self, uri: str, ef: int, m: int, ef_construction: int, model_version: str) -> None:
        from pymilvus import MilvusClient

        self.c = MilvusClient(uri)
        self.name = "items"
        self.ef, self.m, self.efc = ef, m, ef_construction
        self.model_version = model_version

    def create(self) -> None:
        from pymilvus import DataType

        if self.c.has_collection(self.name):
            self.c.drop_collection(self.name)
        schema = self.c.create_schema(auto_id=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("emb", DataType.FLOAT_VECTOR, dim=D)
        schema.add_field("active", DataType.BOOL)
        ip = self.c.prepare_index_params()
        ip.add_index(field_name="emb", index_type="HNSW", metric_type="IP",
                     params={"M": self.m, "efConstruction": self.efc})
        self.c.create_collection(self.name, schema=schema, index_params=ip)

    def load(self, ids: list[str], x: np.ndarray) -> None:
        for a in range(0, len(ids), 5000):
            self.c.insert(self.name, [{"id": ids[i], "emb": x[i].tolist(), "active": True}
                                      for i in range(a, min(a + 5000, len(ids)))])
        self.c.flush(self.name)
        deadline = time.monotonic() + 1800       # measure the HNSW, not a brute-force growing segment
        while time.monotonic() < deadline:
            info = self.c.describe_index(self.name, "emb")
            if info.get("pending_index_rows", 0) == 0 and info.get("indexed_rows", 0) >= len(ids):
                break
            time.sleep(2)
        else:
            log.warning("milvus-lite index still pending: %s", info)
        self.c.load_collection(self.name)

    def search(self, vectors: Any, k: int, filters: Any = None, model_version: str | None = None,
               timeout: float | None = None) -> list[tuple[list[str], list[float]]]:
        if model_version and model_version != self.model_version:
            raise ModelVersionMismatch(self.model_version, model_version)
        x = np.asarray(vectors, np.float32).reshape(-1, D)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        res = self.c.search(self.name, x.tolist(), limit=k, filter="active == true",
                            output_fields=["id"], search_params={"params": {"ef": max(self.ef, k)}})
        return [([h["id"] for h in r], [h["distance"] for h in r]) for r in res]

    def lookup(self, ids: list[str]) -> list[bool]:
        rows = self.c.query(self.name, filter=f"id in {json.dumps(list(ids))} and active == true",
                            output_fields=["id"])
        live = {r["id"] for r in rows}
        return [i in live for i in ids]

    def upsert(self, ids: list[str], vectors: Any, *_: Any, **__: Any) -> int:
        x = np.asarray(vectors, np.float32).reshape(-1, D)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        self.c.upsert(self.name, [{"id": i, "emb": v.tolist(), "active": True} for i, v in zip(ids, x,
                                                                                              strict=True)])
        return len(ids)

    def delete(self, ids: list[str]) -> int:
        self.c.delete(self.name, ids=list(ids))
        return len(ids)

    def close(self) -> None:
        self.c.close()


# ------------------------------------------------------------------------------ measurements
def index_figures(client: Any, q: np.ndarray, gt: np.ndarray, trials: int) -> dict[str, Any]:
    """recall@10 as the read path calls the index, and upsert/delete visibility in ms."""
    found = [client.search(v, 10)[0][0] for v in q]
    ids = [[f"item-{j}" for j in row] for row in gt]
    recall = float(np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found, ids, strict=True)]))
    rng = np.random.default_rng(5)
    vis: dict[str, list[float]] = {"upsert": [], "delete": []}
    for t in range(trials):
        v = rng.standard_normal(D).astype(np.float32)
        item = f"vis-{t}"
        t0 = time.perf_counter()
        client.upsert([item], v[None, :], model_version=MODEL)
        while client.search(v, 1)[0][0][:1] != [item]:
            if time.perf_counter() - t0 > 30:
                break
        vis["upsert"].append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        client.delete([item])
        while client.search(v, 1)[0][0][:1] == [item]:
            if time.perf_counter() - t0 > 30:
                break
        vis["delete"].append((time.perf_counter() - t0) * 1e3)
    pct = lambda v, p: round(float(np.percentile(v, p)), 3)  # noqa: E731
    return {"recall@10": round(recall, 4),
            "visibility_ms": {op: {"p50": pct(v, 50), "p99": pct(v, 99), "max": round(max(v), 3)}
                              for op, v in vis.items()}}


async def _one_conn(port: int, users: list[str], stop_at: float, lat: list[float], errors: list[int],
                    seed: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rng = np.random.default_rng(seed)
    try:
        while time.perf_counter() < stop_at:
            uid = users[int(rng.integers(len(users)))]
            t0 = time.perf_counter()
            writer.write(f"GET /recommendations/{uid}?k={K} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            lat.append((time.perf_counter() - t0) * 1e3)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(1)
    finally:
        writer.close()


def http_load(port: int, users: list[str], concurrency: int, duration: float) -> dict[str, Any]:
    lat: list[float] = []
    errors: list[int] = []

    async def main() -> float:
        await asyncio.gather(*[_one_conn(port, users, time.perf_counter() + 0.5, [], [], i)
                               for i in range(concurrency)])                     # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*[_one_conn(port, users, t0 + duration, lat, errors, 100 + i)
                               for i in range(concurrency)])
        return time.perf_counter() - t0

    wall = asyncio.run(main())
    return {"concurrency": concurrency, "requests": len(lat), "errors": len(errors),
            "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3), "rps": round(len(lat) / wall, 1)}


def max_rps_under(levels: list[dict[str, Any]], p99_ms: float = 10.0) -> float:
    ok = [lv["rps"] for lv in levels if lv["p99_ms"] < p99_ms and not lv["errors"]]
    return max(ok) if ok else 0.0


# ----------------------------------------------------------------------------------- processes
def wait_http(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"backend exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"backend on {port} not healthy after {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def milvus_backend(args: argparse.Namespace) -> None:
    """Child process: milvus-lite + the read path over HTTP (milvus-lite allows one process)."""
    import uvicorn

    from recs.serving.app import create_app
    from recs.serving.read_path import ReadPath
    from recs.stores import open_store

    settings = load_settings()
    work = Path(args.work)
    cfg = settings.index
    client = MilvusIndexClient(str(work / "milvus.db"), cfg.ef_search, cfg.hnsw_m, cfg.ef_construction,
                               MODEL)
    client.create()
    x = np.load(work / "items.npy")
    t0 = time.perf_counter()
    client.load([f"item-{i}" for i in range(len(x))], x)
    build_s = time.perf_counter() - t0
    figures = index_figures(client, np.load(work / "queries.npy"), np.load(work / "gt.npy"), args.trials)
    figures["load_and_index_s"] = round(build_s, 1)
    (work / "milvus.json").write_text(json.dumps(figures))
    app = create_app(ReadPath(open_store(settings), client, settings.serve))
    uvicorn.run(app, host="127.0.0.1", port=settings.serve.port, log_level="warning", access_log=False)


def run_size(n: int, args: argparse.Namespace, base: Settings, redis_port: int) -> dict[str, Any]:
    from index.client import GrpcIndexClient
    from recs.local.processes import free_port
    from recs.stores.redis_store import RedisStore

    work = Path(tempfile.mkdtemp(prefix=f"recs-serve-{n}-", dir=ROOT / "data" / "bench"))
    centres = np.random.default_rng(1).standard_normal((4096, D)).astype(np.float32)
    x = clustered(n, D, 2, centres)                         # the same items as bench/ann.py
    q = clustered(args.queries, D, 3, centres)
    gt = ground_truth(x, q, 10)
    np.save(work / "items.npy", x)
    np.save(work / "queries.npy", q)
    np.save(work / "gt.npy", gt)

    # users: embeddings near the catalogue, 20 recent clicks each, the model version of the index
    index_port = free_port()
    s = with_overrides(base, redis={"port": redis_port}, kv={"key_prefix": f"bench{n}:"},
                       serve={"port": free_port(), "phase": 3},
                       index={"port": index_port, "shards": [[f"127.0.0.1:{index_port}"]],
                              "metrics_port": 0, "snapshot_dir": work, "replica_id": "ours",
                              "model_version": "", "client_deadline_ms": 1000})
    store = RedisStore(s.redis, s.kv)
    from recs.stores.base import RecsList, UserRecord

    ue = clustered(args.users, D, 4, centres)
    rng = np.random.default_rng(6)
    users = [f"user-{u}" for u in range(args.users)]
    for a in range(0, args.users, 1000):
        store.put_users([UserRecord(users[u], ue[u], MODEL, 1, tuple(f"item-{j}" for j in
                                                                   rng.integers(0, n, 20)))
                         for u in range(a, min(a + 1000, args.users))])
    store.put_trending(RecsList("", tuple(f"item-{j}" for j in range(200)), MODEL, 1))
    store.close()

    # ours: the HNSW snapshot bench/ann.py caches for these vectors (built and cached here if absent)
    from ann import build_ours, ours_cache

    ann_snap = ours_cache(n, base.index)
    t0 = time.perf_counter()
    idx, build_s, cached = build_ours("HNSW", base.index, [f"item-{i}" for i in range(n)], x,
                                      argparse.Namespace(build_threads=2), ann_snap)
    del idx
    (work / "ours").symlink_to(ann_snap.resolve(), target_is_directory=True)
    how = f"{'restored from' if cached else 'built into'} {ann_snap.relative_to(ROOT)} " \
          f"(build {build_s:.0f} s)"
    log.info("n=%d: ours index %s, ready in %.1f s", n, how, time.perf_counter() - t0)
    env = {**os.environ, **to_env(s)}
    index_proc = subprocess.Popen([sys.executable, "-m", "recs.cli", "index", "serve", "--no-feed"],
                                  env=env, cwd=ROOT)
    client = GrpcIndexClient(s.index)
    deadline = time.monotonic() + 600
    while not client.healthy(timeout=1):
        if index_proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("index server did not come up")
        time.sleep(0.5)
    result: dict[str, Any] = {"n": n, "ours": {"index": how}, "milvus_lite": {}}
    result["ours"].update(index_figures(client, q, gt, args.trials))
    client.close()
    backend = subprocess.Popen([sys.executable, "-m", "recs.cli", "serve"], env=env, cwd=ROOT)
    try:
        wait_http(s.serve.port, backend, 120)
        levels = [http_load(s.serve.port, users, c, args.duration) for c in args.concurrency]
    finally:
        stop(backend)
        stop(index_proc)
    for lv in levels:
        log.info("n=%d ours c=%d: %s", n, lv["concurrency"], lv)
    result["ours"]["levels"] = levels
    result["ours"]["max_rps_p99_under_10ms"] = max_rps_under(levels)

    if "milvus_lite" in args.peers:
        t0 = time.perf_counter()
        peer = subprocess.Popen([sys.executable, __file__, "--backend", "milvus", "--work", str(work),
                                 "--trials", str(args.trials)], env=env, cwd=ROOT)
        try:
            wait_http(s.serve.port, peer, args.peer_timeout_s)
            log.info("n=%d: milvus-lite ready in %.1f s", n, time.perf_counter() - t0)
            levels = [http_load(s.serve.port, users, c, args.duration) for c in args.concurrency]
        except (TimeoutError, RuntimeError) as e:
            log.error("n=%d: milvus-lite not measured: %s", n, e)
            result["milvus_lite"] = {"error": f"not measured: {e}"}
            levels = []
        finally:
            stop(peer)
        for lv in levels:
            log.info("n=%d milvus_lite c=%d: %s", n, lv["concurrency"], lv)
        if levels:
            result["milvus_lite"] = json.loads((work / "milvus.json").read_text())
            result["milvus_lite"]["levels"] = levels
            result["milvus_lite"]["max_rps_p99_under_10ms"] = max_rps_under(levels)
        # a partial result survives a later failure or a stopped run
        (ROOT / f"data/bench/serve-{n}.partial.json").write_text(json.dumps(result, indent=1))
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = result["sizes"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.2), squeeze=False)
    for ax, r in zip(axes[0], sizes, strict=True):
        for name in ("ours", "milvus_lite"):
            lv = r.get(name, {}).get("levels")
            if lv:
                ax.plot([v["rps"] for v in lv], [v["p99_ms"] for v in lv], marker="o", label=f"{name} p99")
                ax.plot([v["rps"] for v in lv], [v["p50_ms"] for v in lv], ls="--", label=f"{name} p50")
        ax.axhline(10, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("requests/s (HTTP -> Redis -> index, loopback)")
        ax.set_ylabel("latency ms")
        ax.set_title(f"{r['n']:,} items")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--concurrency", default="1,2,4,8,16,32")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per concurrency level")
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--trials", type=int, default=30, help="visibility trials")
    ap.add_argument("--peers", default="milvus_lite")
    ap.add_argument("--peer-timeout-s", type=float, default=1800, help="max wait for the peer's load")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/serve.json")
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.backend == "milvus":
        milvus_backend(args)
        return
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    (ROOT / "data" / "bench").mkdir(parents=True, exist_ok=True)
    from recs.local.redis_server import temporary_redis

    base = load_settings()
    sizes = []
    with temporary_redis(base) as redis_settings:
        for n in (int(v) for v in args.sizes.split(",")):
            sizes.append(run_size(n, args, base, redis_settings.port))
    big = max(sizes, key=lambda r: r["n"])
    result = {
        "machine": {"cpus": os.cpu_count(), "note": "load generator, HTTP backend, Redis and the "
                    "index all on this machine"},
        "k": K, "overfetch": base.serve.overfetch, "extra_fetch": base.serve.extra_fetch,
        "index": {"kind": base.index.kind, "M": base.index.hnsw_m, "ef_construction":
                  base.index.ef_construction, "ef_search": base.index.ef_search},
        "sizes": sizes,
        "max_rps_p99_under_10ms": {"ours": big["ours"]["max_rps_p99_under_10ms"],
                                   "milvus_lite": big.get("milvus_lite", {}).get("max_rps_p99_under_10ms")},
        "visibility_ms": {"ours": big["ours"]["visibility_ms"],
                          "milvus_lite": big.get("milvus_lite", {}).get("visibility_ms")},
        "at_n": big["n"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(result, args.out.with_suffix(".png"))
    log.info("max rps with p99 < 10 ms at %d items: %s", big["n"], result["max_rps_p99_under_10ms"])


if __name__ == "__main__":
    main()
