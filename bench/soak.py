"""Soak: a steady mixed load against the real services, minute by minute (issue 8 acceptance).

    .venv/bin/python bench/soak.py                   # 20 minutes -> bench/results/soak.json
    .venv/bin/python bench/soak.py --minutes 2       # the short proof run
    # server logs (every read-path fallback is logged): the folder in the JSON's "logs"
    make bench-soak

Services, each its own process, all on loopback: a redis-server (recs.local.redis_server.temporary_redis),
the index server (`recs index serve --no-feed --no-restore`, the settings' index kind), and the
HTTP backend (`recs serve`, uvicorn, phase 3). This process only drives load and checks answers.

Load (open loop: each kind has a fixed schedule, ``--<kind>-rate`` per second, served by a few
threads so a slow answer does not stop the clock):
- ``http``    GET /recommendations/{user}?k=20: 70 % users with an embedding (index search), 20 %
              with only an offline list, 10 % unknown (trending); lists hold deletable items, so
              the read path's liveness check (invariant 6) is exercised all the time.
- ``search``  gRPC Search of a user embedding, k = 20; one in five with a category filter.
- ``update``  gRPC Upsert of 8 items of the "updatable" half of the catalogue (new vectors).
- ``insert``  gRPC Upsert of 1 new item; ``delete`` gRPC Delete of 1 item of the "deletable" half.
              Inserts and deletes run at the same rate, so the live catalogue stays the same size
              and memory has no reason to grow.
Deleted items are never written again, so the check is exact: an answer is wrong when it holds an
item whose Delete had returned before the request was sent (HTTP and search answers both).

Every minute: requests by kind and outcome (HTTP status, "ok" or the error), p50/p99 latency per
kind, the HTTP answers' sources and fallback reasons, RSS of each server process (psutil, sampled
every ``--sample-s``), wrong answers. Totals at the end, with the RSS trend of each process from
the second minute on (the first holds the start-up and the first compactions).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from conf import load_settings
from conf.settings import Settings, override, to_env, with_overrides

log = logging.getLogger("bench.soak")
ROOT = Path(__file__).resolve().parent.parent
MODEL = "soak"
K = 20
CATEGORIES = [f"c{i}" for i in range(8)]


# ------------------------------------------------------------------------------------ bookkeeping
class Ledger:
    """Outcomes and latencies per (minute, kind), deletions in the order their Delete returned."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.lock = threading.Lock()
        self.outcomes: dict[int, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
        self.latency: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.sources: dict[int, Counter[str]] = defaultdict(Counter)
        self.fallbacks: dict[int, Counter[str]] = defaultdict(Counter)
        self.wrong: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self.deleted_at: dict[str, int] = {}      # item id -> its position in the deletion order
        self.deletions = 0

    def minute(self, t: float) -> int:
        return int((t - self.t0) // 60)

    def record(self, kind: str, sent: float, outcome: str, seconds: float) -> None:
        m = self.minute(sent)
        with self.lock:
            self.outcomes[m][kind][outcome] += 1
            self.latency[m][kind].append(seconds)

    def deletions_so_far(self) -> int:
        with self.lock:
            return self.deletions

    def deleted(self, ids: list[str]) -> None:
        with self.lock:
            for i in ids:
                self.deleted_at[i] = self.deletions
                self.deletions += 1

    def check(self, kind: str, sent: float, before: int, items: list[str], who: str) -> None:
        """Wrong: an item whose Delete returned before the request was sent (position < before)."""
        with self.lock:
            bad = [i for i in items if self.deleted_at.get(i, before) < before]
            if bad:
                self.wrong[self.minute(sent)].append({"kind": kind, "who": who, "items": bad})


class Pacer:
    """A fixed schedule shared by a kind's threads: slot n is at t0 + n / rate."""

    def __init__(self, rate: float, t0: float, stop_at: float) -> None:
        self.rate, self.t0, self.stop_at = rate, t0, stop_at
        self.n = 0
        self.lock = threading.Lock()

    def next(self) -> float | None:
        with self.lock:
            t = self.t0 + self.n / self.rate
            self.n += 1
        if t >= self.stop_at:
            return None
        delay = t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return t


# ------------------------------------------------------------------------------------ processes
def spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A server process; its output goes to ``log_path`` (the read path logs every fallback)."""
    with log_path.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "recs.cli", *args], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)


def start_index(env: dict[str, str], settings: Settings, timeout_s: float,
                log_path: Path) -> subprocess.Popen[bytes]:
    from index.client import GrpcIndexClient

    proc = spawn(["index", "serve", "--no-feed", "--no-restore"], env, log_path)
    client = GrpcIndexClient(settings.index)
    deadline = time.monotonic() + timeout_s
    try:
        while not client.healthy(timeout=1):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"index server did not come up (exit code {proc.poll()})")
            time.sleep(0.3)
    finally:
        client.close()
    return proc


def start_backend(env: dict[str, str], port: int, timeout_s: float,
                  log_path: Path) -> subprocess.Popen[bytes]:
    proc = spawn(["serve"], env, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"backend exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return proc
            conn.close()
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"backend on {port} not healthy after {timeout_s} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def redis_pid(port: int) -> int:
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return int(conn.pid)
    raise RuntimeError(f"no process listens on {port}")


# ------------------------------------------------------------------------------------ the data
class World:
    """Catalogue, users and lists, all from one seed."""

    def __init__(self, args: argparse.Namespace, dim: int) -> None:
        rng = np.random.default_rng(args.seed)
        n, half = args.items, args.items // 2
        centres = rng.standard_normal((64, dim)).astype(np.float32)
        self.dim = dim
        self.centres = centres
        self.x = self.near(rng, centres[rng.integers(0, 64, n)])
        self.ids = [f"item-{i}" for i in range(n)]
        self.categories = [CATEGORIES[i % len(CATEGORIES)] for i in range(n)]
        self.deletable = self.ids[:half]            # each deleted at most once, never written again
        self.updatable = self.ids[half:]            # re-embedded all the time, never deleted
        self.users = [f"user-{u}" for u in range(args.users)]
        self.user_x = self.near(rng, centres[rng.integers(0, 64, args.users)])
        self.offline_users = [f"offline-{u}" for u in range(args.users // 4)]
        # lists: deletable items only, so every delete can hit a list
        self.lists = {u: tuple(self.deletable[j] for j in rng.choice(half, 40, replace=False))
                      for u in self.users[: len(self.users) // 2] + self.offline_users}
        self.trending = tuple(self.deletable[:200])
        self.last_n = {u: tuple(self.ids[j] for j in rng.integers(0, n, 20)) for u in self.users}

    @staticmethod
    def near(rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
        x = centres + 0.5 * rng.standard_normal(centres.shape).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def load(self, settings: Settings, index: Any, batch: int) -> None:
        from recs.stores.base import RecsList, UserRecord
        from recs.stores.redis_store import RedisStore

        for a in range(0, len(self.ids), batch):
            index.upsert(self.ids[a:a + batch], self.x[a:a + batch], self.categories[a:a + batch],
                         model_version=MODEL)
        store = RedisStore(settings.redis, settings.kv)
        try:
            for a in range(0, len(self.users), 1000):
                store.put_users([UserRecord(u, self.user_x[i], MODEL, 1, self.last_n[u])
                                 for i, u in enumerate(self.users[a:a + 1000], start=a)])
            store.put_recs([RecsList(u, items, MODEL, 1) for u, items in self.lists.items()])
            store.put_trending(RecsList("", self.trending, MODEL, 1))
        finally:
            store.close()


# ------------------------------------------------------------------------------------ load kinds
class Load:
    def __init__(self, world: World, ledger: Ledger, settings: Settings, args: argparse.Namespace) -> None:
        from index.client import GrpcIndexClient

        self.world, self.ledger, self.args = world, ledger, args
        self.index = GrpcIndexClient(settings.index)   # thread-safe: one for every load thread
        self.port = settings.serve.port
        self.delete_lock = threading.Lock()
        self.delete_order = list(np.random.default_rng(args.seed + 1).permutation(len(world.deletable)))
        self.inserted = 0
        self.insert_lock = threading.Lock()

    def timed(self, kind: str, sent: float, call: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        try:
            result = call()
            outcome = "ok"
        except Exception as e:  # a soak counts every failure, whatever it is
            result, outcome = None, f"{type(e).__name__}: {str(e)[:80]}"
        self.ledger.record(kind, sent, outcome, time.perf_counter() - t)
        return result

    def http(self, rng: np.random.Generator, conn: list[http.client.HTTPConnection | None],
             sent: float) -> None:
        w = self.world
        r = rng.random()
        user = (w.users[rng.integers(len(w.users))] if r < 0.7 else
                w.offline_users[rng.integers(len(w.offline_users))] if r < 0.9 else
                f"unknown-{rng.integers(1_000_000)}")
        before = self.ledger.deletions_so_far()
        t = time.perf_counter()
        c = conn[0] or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn[0] = c
        try:
            c.request("GET", f"/recommendations/{urllib.parse.quote(user)}?k={K}")
            resp = c.getresponse()
            body = resp.read()
            outcome = str(resp.status)
        except (OSError, http.client.HTTPException) as e:
            c.close()
            conn[0], body, outcome = None, b"", f"{type(e).__name__}: {str(e)[:80]}"
        self.ledger.record("http", sent, outcome, time.perf_counter() - t)
        if outcome == "200":
            answer = json.loads(body)
            m = self.ledger.minute(sent)
            with self.ledger.lock:
                self.ledger.sources[m][answer["source"]] += 1
                self.ledger.fallbacks[m].update(answer["fallbacks"])
            self.ledger.check("http", sent, before, [i["item_id"] for i in answer["items"]], user)

    def search(self, rng: np.random.Generator, sent: float) -> None:
        w = self.world
        u = int(rng.integers(len(w.users)))
        filters = {"category": [CATEGORIES[rng.integers(len(CATEGORIES))]]} if rng.random() < 0.2 else None
        before = self.ledger.deletions_so_far()
        answer = self.timed("search", sent, lambda: self.index.search(
            w.user_x[u], K, filters=filters, model_version=MODEL))
        if answer is not None:
            self.ledger.check("search", sent, before, answer[0][0], w.users[u])

    def update(self, rng: np.random.Generator, sent: float) -> None:
        w = self.world
        pick = rng.choice(len(w.updatable), 8, replace=False)
        ids = [w.updatable[j] for j in pick]
        x = w.near(rng, w.centres[rng.integers(0, len(w.centres), 8)])
        cats = [w.categories[len(w.deletable) + j] for j in pick]
        self.timed("update", sent, lambda: self.index.upsert(ids, x, cats, model_version=MODEL))

    def insert(self, rng: np.random.Generator, sent: float) -> None:
        w = self.world
        with self.insert_lock:
            n = self.inserted
            self.inserted += 1
        x = w.near(rng, w.centres[rng.integers(0, len(w.centres), 1)])
        self.timed("insert", sent, lambda: self.index.upsert(
            [f"new-{n}"], x, [CATEGORIES[n % len(CATEGORIES)]], model_version=MODEL))

    def delete(self, rng: np.random.Generator, sent: float) -> None:
        with self.delete_lock:
            if not self.delete_order:
                return
            item = self.world.deletable[self.delete_order.pop()]
        if self.timed("delete", sent, lambda: self.index.delete([item])) is not None:
            self.ledger.deleted([item])

    def run(self, kind: str, rate: float, threads: int, t0: float, stop_at: float) -> list[threading.Thread]:
        pacer = Pacer(rate, t0, stop_at)

        def loop(worker: int) -> None:
            rng = np.random.default_rng([self.args.seed, len(kind), worker, ord(kind[0])])
            conn: list[http.client.HTTPConnection | None] = [None]
            while (sent := pacer.next()) is not None:
                if kind == "http":
                    self.http(rng, conn, sent)
                else:
                    getattr(self, kind)(rng, sent)
            if conn[0] is not None:
                conn[0].close()

        out = [threading.Thread(target=loop, args=(w,), name=f"{kind}-{w}", daemon=True)
               for w in range(threads)]
        for t in out:
            t.start()
        return out


# ------------------------------------------------------------------------------------ figures
def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else None


def trend(series: list[float]) -> dict[str, float | None]:
    """RSS trend from the second minute on: least-squares slope (MiB/min) and last - first."""
    tail = series[1:] if len(series) > 2 else series
    if len(tail) < 2:
        return {"slope_mib_per_min": None, "growth_mib": None}
    slope = float(np.polyfit(np.arange(len(tail)), tail, 1)[0])
    return {"slope_mib_per_min": round(slope, 3), "growth_mib": round(tail[-1] - tail[0], 1)}


def summarise(ledger: Ledger, rss: dict[int, dict[str, list[float]]], minutes: int,
              kinds: list[str]) -> dict[str, Any]:
    per_minute = []
    all_lat: dict[str, list[float]] = defaultdict(list)
    totals: dict[str, Counter[str]] = defaultdict(Counter)
    for m in range(minutes):
        row: dict[str, Any] = {"minute": m + 1, "requests": {}, "latency_ms": {}}
        for kind in kinds:
            row["requests"][kind] = dict(ledger.outcomes[m][kind])
            lat = ledger.latency[m][kind]
            row["latency_ms"][kind] = {"p50": pct(lat, 50), "p99": pct(lat, 99)}
            all_lat[kind] += lat
            totals[kind].update(ledger.outcomes[m][kind])
        row["http_sources"] = dict(ledger.sources[m])
        row["http_fallbacks"] = dict(ledger.fallbacks[m])
        row["wrong_results"] = len(ledger.wrong[m])
        row["wrong_examples"] = ledger.wrong[m][:5]
        row["rss_mib"] = {p: round(max(v), 1) if v else None for p, v in rss[m].items()}
        per_minute.append(row)
    rss_series = {p: [r["rss_mib"][p] for r in per_minute if r["rss_mib"].get(p) is not None]
                  for p in per_minute[0]["rss_mib"]} if per_minute else {}
    http_5xx = sum(n for code, n in totals["http"].items() if code.startswith("5"))
    failed = {k: sum(n for o, n in totals[k].items() if o not in ("ok", "200")) for k in kinds}
    return {
        "per_minute": per_minute,
        "totals": {
            "requests": {k: dict(totals[k]) for k in kinds},
            "latency_ms": {k: {"p50": pct(all_lat[k], 50), "p99": pct(all_lat[k], 99)} for k in kinds},
            "http_5xx": http_5xx,
            "failed_requests": failed,
            "wrong_results": sum(len(v) for v in ledger.wrong.values()),
            "deletes_applied": ledger.deletions,
            "rss_mib_first_last": {p: [s[0], s[-1]] for p, s in rss_series.items() if s},
            "rss_trend_from_minute_2": {p: trend(s) for p, s in rss_series.items()},
        },
    }


# ------------------------------------------------------------------------------------ main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=int, default=20, help="Duration of the load (default 20).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--items", type=int, default=20_000,
                   help="Catalogue size: half deletable, half re-embedded (HNSW build ~20 s at 20 k).")
    p.add_argument("--users", type=int, default=4_000, help="Users with an embedding (and 1/4 as many "
                   "with only an offline list).")
    # Rates per second: modest, for 2 shared cores (driver and three servers on the same machine).
    p.add_argument("--http-rate", type=float, default=20.0)
    p.add_argument("--search-rate", type=float, default=20.0)
    p.add_argument("--update-rate", type=float, default=4.0, help="Upserts of 8 existing items.")
    p.add_argument("--insert-rate", type=float, default=2.0, help="Upserts of 1 new item (= delete rate).")
    p.add_argument("--delete-rate", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=2, help="Threads per load kind.")
    p.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period.")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.insert_rate != args.delete_rate:
        log.warning("insert rate != delete rate: the catalogue (and memory) will drift")

    from index.client import GrpcIndexClient
    from recs.local.processes import free_port
    from recs.local.redis_server import temporary_redis

    base = load_settings()
    work = Path(tempfile.mkdtemp(prefix="recs-soak-"))
    with temporary_redis(base) as redis_settings:
        index_port = free_port()
        s = with_overrides(base, redis=redis_settings.model_dump(), kv={"key_prefix": "soak:"},
                           serve={"phase": 3},
                           index={"port": index_port, "shards": [[f"127.0.0.1:{index_port}"]],
                                  "metrics_port": 0, "snapshot_dir": str(work), "replica_id": "soak",
                                  "model_version": "", "snapshot_interval_s": 0})
        env = {**os.environ, **to_env(s)}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            procs["index"] = start_index(env, s, 120, work / "index.log")
            world = World(args, s.index.dim)
            loader = GrpcIndexClient(override(s.index, {"client_deadline_ms": 60_000}))
            t = time.perf_counter()
            world.load(s, loader, min(512, s.index.max_batch))
            loader.close()
            log.info("loaded %d items and %d users in %.1f s", args.items, args.users, time.perf_counter() - t)
            s = with_overrides(s, serve={"port": free_port()})   # picked now: the index port is bound
            env = {**os.environ, **to_env(s)}
            procs["backend"] = start_backend(env, s.serve.port, 120, work / "backend.log")
            pids = {"index": procs["index"].pid, "backend": procs["backend"].pid,
                    "redis": redis_pid(redis_settings.port)}
            result = soak(args, s, world, pids)
        finally:
            for proc in procs.values():
                stop(proc)
    result["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result["config"].update(index_kind=s.index.kind, dim=s.index.dim, phase=s.serve.phase, k=K)
    result["logs"] = str(work)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "platform": platform.platform()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    tot = result["totals"]
    log.info("wrote %s: http 5xx %d, wrong results %d, failed %s, rss trend %s", args.out,
             tot["http_5xx"], tot["wrong_results"], tot["failed_requests"], tot["rss_trend_from_minute_2"])


def soak(args: argparse.Namespace, s: Settings, world: World, pids: dict[str, int]) -> dict[str, Any]:
    t0 = time.monotonic()
    stop_at = t0 + args.minutes * 60
    ledger = Ledger(t0)
    load = Load(world, ledger, s, args)
    rates = {"http": args.http_rate, "search": args.search_rate, "update": args.update_rate,
             "insert": args.insert_rate, "delete": args.delete_rate}
    kinds = [k for k, r in rates.items() if r > 0]
    threads = [t for k in kinds for t in load.run(k, rates[k], args.threads, t0, stop_at)]
    procs = {name: psutil.Process(pid) for name, pid in pids.items()}
    rss: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    while (now := time.monotonic()) < stop_at:
        m = ledger.minute(now)
        for name, proc in procs.items():
            rss[m][name].append(proc.memory_info().rss / 2**20)
        time.sleep(min(args.sample_s, max(0.0, stop_at - time.monotonic())))
        if ledger.minute(time.monotonic()) != m:
            done = ledger.outcomes[m]
            log.info("minute %d: %s; wrong %d", m + 1,
                     {k: dict(done[k]) for k in kinds}, len(ledger.wrong[m]))
    for t in threads:
        t.join(60)
    load.index.close()
    return summarise(ledger, rss, args.minutes, kinds)


if __name__ == "__main__":
    main()
