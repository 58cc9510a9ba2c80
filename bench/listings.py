"""Listings benchmark: the item-index job into the live index service while it serves searches (issue 11).

    .venv/bin/python bench/listings.py                     # rates 50,200,500,1000,3000 -> bench/results/stream.json
    .venv/bin/python bench/listings.py --rates 100 --seconds 5 --out /tmp/listings.json   # smoke run

Per rate, on a temporary stack (broker, Redis, Flink on free loopback ports; bench/stream.py
``bench_stack``): fresh ``listings`` and ``item_embeddings`` topics, jobs/item_index.py submitted on
them (the model artifact in settings), and in this process the index service as `recs index serve`
runs it (``IndexServer`` + its feeder thread on the topic, index kind from settings). Then, at the
same time for ``--seconds``:
- a paced producer (absolute schedule, batching ``kafka.producer_linger_ms``): new listings with ts =
  send time, keyed by item_id, titles from the catalogue's own titles (``--data``); every
  ``--remove-every``-th listing is removed again ``--remove-after-s`` later (a removal event with its
  own send time);
- a watcher asks the service over gRPC (``lookup``, 2 s deadline) every ``--poll-ms`` for every pending id:
  *visible* = the first answer True for a new listing, *gone* = the first answer False after its
  removal, for a listing seen visible before (one never seen cannot be timed: ``removed_untimed``);
  latency = that wall time minus the event's ts (= its send time);
- an answer watcher, in a process of its own as the backend is, asks the read path (``ReadPath``,
  what `GET /recommendations` runs: KV user record -> gRPC index search -> filters) for probe users,
  one per sampled removed listing (``--answer-probes``, titles of their own), whose user record is
  that listing's item-tower vector (written before the step): *gone from answers* = the first
  answer served from the index ("nrt") without the listing after its removal, for a probe whose
  answers held it before (a fallback answer says nothing and is not counted);
- a searcher sends one k = 10 search at a time over gRPC, back to back, with the serving path's
  deadline (``index.client_deadline_ms``): the service's search p50/p99 while the stream is
  applied, and the searches past the deadline (``search_errors``).
After the step: every listing still pending counts as censored at the end of the drain (a lower
bound); a sample of visible listings is searched by its own vector (read from KV ``item:{id}``):
the top 10 must hold it, and no listing shown removed may be in any answer.

Keys written into ``--out`` (the rest of the file is kept): ``listing_visible_p99_ms``,
``listing_removed_p99_ms``, ``listing_removed_from_answers_p99_ms`` (at the highest rate whose visible p99
is under 2 s, else the lowest),
``item_index_max_rate_p99_under_2s``, and ``item_index`` (per rate: achieved events/s = listings and
removals shown by the service over the time from the first send to the last one shown, p50/p99/max
visible, gone and gone from answers, search p50/p99, censored counts; the settings used).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import queue
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stream import bench_stack, create_topic, delete_topic  # noqa: E402
from conf.settings import PROJECT_ROOT, Settings, load_settings, with_overrides  # noqa: E402

log = logging.getLogger("bench.listings")
RESULTS = PROJECT_ROOT / "bench" / "results"
DEFAULT_RATES = (50, 200, 500, 1000, 3000)


def _pct(xs: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 1) if xs else None


def titles(data_dir: Path, n: int, seed: int) -> list[tuple[str, str | None]]:
    """(title, category) of the catalogue's listings, drawn with replacement."""
    from recs.local.item_vectors import current_listings

    cat = [(x.title, x.category) for x in current_listings(load_settings(), data_dir)]
    rng = random.Random(seed)
    return [rng.choice(cat) for _ in range(n)]


def watch_answers(settings: dict[str, Any], address: list[list[str]], probes: dict[str, str], poll_s: float,
                  inbox: Any, outbox: Any) -> None:
    """The answer watcher (its own process): ``ReadPath.recommend`` for each probe user, from when its
    listing is sent (``("active", item)`` in ``inbox``) until an answer holds it, and from when its
    removal is sent (``("removed", item)``) until an answer served from the index lacks it; ``None``
    ends it. Puts (first wall ms held, first wall ms gone after removal, [requests, fallbacks])."""
    from index.client import GrpcIndexClient
    from recs.serving import ReadPath
    from recs.stores import open_store

    s = Settings.model_validate(settings)
    rp = ReadPath(open_store(s), GrpcIndexClient(s.index, address), s.serve)
    held: dict[str, int] = {}
    gone: dict[str, int] = {}
    listed: set[str] = set()
    removed: set[str] = set()
    counts = [0, 0]
    while True:
        with contextlib.suppress(queue.Empty):
            while True:
                msg = inbox.get(timeout=poll_s)
                if msg is None:
                    outbox.put((held, gone, counts))
                    return
                (listed if msg[0] == "active" else removed).add(msg[1])
        for item in [i for i in probes if (i in listed and i not in held) or (i in removed and i in held
                                                                                and i not in gone)]:
            ans = rp.recommend(probes[item], k=10)
            now = int(time.time() * 1000)
            counts[0] += 1
            if ans.source != "nrt":           # a fallback answer says nothing of the index
                counts[1] += 1
            elif item in ans.items:
                held.setdefault(item, now)
            elif item in held:
                gone[item] = now


def run_step(s: Settings, rate: int, args: argparse.Namespace) -> dict[str, Any]:
    from confluent_kafka import Producer

    from index.ann import ItemIndex
    from index.client import GrpcIndexClient
    from index.errors import IndexUnavailable
    from index.feeder import Feeder
    from index.server import IndexServer
    from models.artifact import load_artifact
    from recs.contracts import Listing
    from recs.local import flink_jobs
    from recs.stores import open_store
    from recs.stores.base import UserRecord

    tag = f"ls{rate}-{int(time.time())}"
    topics = s.kafka.topics.model_dump()
    parts = topics["partitions"]
    topics.update(listings=f"{tag}.listings", listings_dlq=f"{tag}.dlq", item_embeddings=f"{tag}.emb",
                  partitions={**parts, f"{tag}.listings": parts["listings"], f"{tag}.dlq": 1,
                              f"{tag}.emb": parts["item_embeddings"]})
    art = load_artifact(s.model.artifact_dir)
    s = with_overrides(s, kafka={"topics": topics}, kv={"key_prefix": f"{tag}:"},
                       index={"dim": art.dim, "model_version": art.model_version, "port": 0, "metrics_port": 0})
    for name, n in ((topics["listings"], parts["listings"]), (topics["listings_dlq"], 1),
                    (topics["item_embeddings"], parts["item_embeddings"])):
        create_topic(s, name, n)
    index = ItemIndex(s.index)
    feeder = Feeder(index, s.kafka, s.index)
    server = IndexServer(s.index, index).start()
    stop = threading.Event()
    feed = threading.Thread(target=feeder.run, args=(stop,), name="feeder", daemon=True)
    feed.start()
    address = [[f"127.0.0.1:{server.port}"]]
    client = GrpcIndexClient(s.index, address)          # the serving path's deadline (index.client_deadline_ms)
    watcher = GrpcIndexClient(with_overrides(s, index={"client_deadline_ms": 2000}).index, address)
    job = flink_jobs.submit(s, "item-index")
    store = open_store(s)
    producer = Producer({**s.kafka.client_config(), "linger.ms": s.kafka.producer_linger_ms})
    answerer: Any = None
    try:
        # primer: the job and the service are up (start-up is never measured)
        primer = Listing(f"{tag}-primer", "primer", "active", int(time.time() * 1000))
        producer.produce(topics["listings"], primer.to_json().encode(), key=primer.item_id.encode())
        producer.flush(10)
        deadline = time.monotonic() + args.ready_timeout_s
        while not client.lookup([primer.item_id])[0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the primer listing never became searchable: {flink_jobs.job_health(s, job)}")
            time.sleep(0.1)

        n = int(rate * args.seconds)
        names = titles(args.data, n, args.seed + rate)
        events: list[tuple[float, str, str, str | None]] = []       # (offset s, item id, status, title)
        for i in range(n):
            events.append((i / rate, f"{tag}-{i}", "active", names[i][0]))
            if args.remove_every and i % args.remove_every == args.remove_every - 1:
                events.append((i / rate + args.remove_after_s, f"{tag}-{i}", "removed", names[i][0]))
        events.sort(key=lambda e: e[0])
        # probe users for the answer watcher: each one's record is a removed listing's own vector
        title_of = {e[1]: e[3] for e in events}
        repeats = {t for t, c in Counter(title_of.values()).items() if c > 1}
        removable = sorted({e[1] for e in events if e[2] == "removed" and title_of[e[1]] not in repeats})
        probe_items = random.Random(args.seed).sample(removable, min(args.answer_probes, len(removable)))
        probes = {item: f"{tag}-probe-{item}" for item in probe_items}
        if probes:
            probe_vecs = art.embed_items([Listing(i, title_of[i] or "", "active", 0, category="bench").text()
                                          for i in probes])
            now_ms = int(time.time() * 1000)
            store.put_users([UserRecord(u, v, art.model_version, now_ms)
                             for u, v in zip(probes.values(), probe_vecs, strict=True)])
        # the backend's read path in a process of its own, as in production (not this one's GIL)
        ctx = mp.get_context("spawn")
        inbox, outbox = ctx.Queue(), ctx.Queue()
        answerer = ctx.Process(target=watch_answers, daemon=True, args=(
            s.model_dump(mode="json"), address, probes, args.poll_ms / 1000, inbox, outbox))
        answerer.start()
        sent: dict[tuple[str, str], int] = {}             # (id, status) -> event ts (ms)
        seen: dict[tuple[str, str], int] = {}             # -> wall ms when the service showed it
        lock = threading.Lock()
        searches: list[float] = []
        done = threading.Event()

        errors = {"lookup": 0, "search": 0}
        chunk = s.index.max_batch * 16                    # the service's limit on ids in one lookup

        def watch() -> None:
            while not done.is_set():
                with lock:
                    # a removal is watched once its listing was seen visible: absent before that
                    # says nothing about the removal (the listing may not have arrived yet)
                    pending = [k for k in sent if k not in seen and (k[1] == "active" or (k[0], "active") in seen)]
                for lo in range(0, len(pending), chunk):
                    part = pending[lo:lo + chunk]
                    try:
                        found = watcher.lookup([i for i, _ in part])
                    except IndexUnavailable:
                        errors["lookup"] += 1             # asked again at the next poll
                        continue
                    now = int(time.time() * 1000)
                    with lock:
                        for (item, status), ok in zip(part, found, strict=True):
                            if ok == (status == "active"):
                                seen[(item, status)] = now
                time.sleep(args.poll_ms / 1000)

        def search() -> None:
            rng = np.random.default_rng(args.seed)
            while not done.is_set():
                q = rng.standard_normal((1, art.dim)).astype(np.float32)
                t = time.perf_counter()
                try:
                    client.search(q, 10)
                except IndexUnavailable:
                    errors["search"] += 1                 # past the serving deadline: counted, not timed
                    continue
                searches.append((time.perf_counter() - t) * 1000)

        threads = [threading.Thread(target=f, daemon=True) for f in (watch, search)]
        for t in threads:
            t.start()
        t0 = time.time()
        for offset, item, status, title in events:
            wait = t0 + offset - time.time()
            if wait > 0:
                time.sleep(wait)
            ts = int(time.time() * 1000)
            body = Listing(item, title or "", status, ts, category="bench").to_json().encode()
            producer.produce(topics["listings"], body, key=item.encode())
            producer.poll(0)
            with lock:
                sent[(item, status)] = ts
            if item in probes:
                inbox.put((status, item))
        producer.flush(30)
        sent_s = time.time() - t0
        end = time.monotonic() + args.drain_s
        while time.monotonic() < end:
            with lock:
                if len(seen) == len(sent):
                    break
            time.sleep(0.1)
        done.set()
        for t in threads:
            t.join(5)
        time.sleep(args.poll_ms * 5 / 1000)               # the read path's last polls after the index's
        inbox.put(None)
        in_answers, gone_answers, answer_polls = outbox.get(timeout=60)
        answerer.join(10)
        scan = int(time.time() * 1000)
        visible = [seen.get(k, scan) - ts for k, ts in sent.items() if k[1] == "active"]
        # a removal whose listing was never seen visible cannot be timed: left out, and counted
        gone = [seen.get(k, scan) - ts for k, ts in sent.items() if k[1] == "removed" and (k[0], "active") in seen]
        censored = {"active": sum(1 for k in sent if k[1] == "active" and k not in seen),
                    "removed": sum(1 for k in sent if k[1] == "removed" and (k[0], "active") in seen and k not in seen),
                    "removed_untimed": sum(1 for k in sent if k[1] == "removed" and (k[0], "active") not in seen)}
        # gone from answers: only probes whose answers held the listing before its removal count
        gone_ans = [gone_answers.get(i, scan) - sent[(i, "removed")] for i in probes if i in in_answers]
        censored["answers"] = sum(1 for i in probes if i in in_answers and i not in gone_answers)
        censored["answers_untimed"] = sum(1 for i in probes if i not in in_answers)
        last_seen = max(seen.values(), default=scan)
        first_sent = min(sent.values())

        # searchable, not only present: a sample searched by its own vector; removed ones in no answer
        removed = {i for i, st in sent if st == "removed" and (i, st) in seen}    # shown gone by the service
        # titles repeat when the step lists more than the catalogue holds: equal vectors tie, so only
        # listings with a title of their own are expected in their own top 10
        live = [i for i, st in sent if st == "active" and i not in removed and (i, st) in seen
                and title_of[i] not in repeats]
        sample = random.Random(args.seed).sample(live, min(50, len(live)))
        vecs = [v.embedding for v in store.get_items(sample) if v is not None and v.embedding is not None]
        found_self = leaked = 0
        if vecs:
            answers = watcher.search(np.stack(vecs), 10)
            found_self = sum(i in ids for i, (ids, _) in zip(sample, answers, strict=False))
            leaked = sum(len(removed & set(ids)) for ids, _ in answers)
        health = flink_jobs.job_health(s, job)
        return {
            "offered_per_s": rate, "listings": sum(1 for k in sent if k[1] == "active"), "removals": len(gone),
            "achieved_per_s": round(len(seen) / max((last_seen - first_sent) / 1000, 1e-3), 1),
            "sent_s": round(sent_s, 2),
            "visible_p50_ms": _pct(visible, 50), "visible_p99_ms": _pct(visible, 99),
            "visible_max_ms": _pct(visible, 100),
            "removed_p50_ms": _pct(gone, 50), "removed_p99_ms": _pct(gone, 99), "removed_max_ms": _pct(gone, 100),
            "removed_from_answers_p50_ms": _pct(gone_ans, 50), "removed_from_answers_p99_ms": _pct(gone_ans, 99),
            "removed_from_answers_max_ms": _pct(gone_ans, 100), "answer_probes": len(gone_ans),
            "answer_requests": answer_polls[0], "answer_fallbacks": answer_polls[1],
            "censored": censored,
            "search_p50_ms": _pct(searches, 50), "search_p99_ms": _pct(searches, 99), "searches": len(searches),
            "search_errors": errors["search"], "lookup_errors": errors["lookup"],
            "sample_found_by_own_vector": f"{found_self}/{len(vecs)}", "removed_in_answers": leaked,
            "job": {"state": health.state, "restarts": health.restarts},
        }
    finally:
        with contextlib.suppress(Exception):
            flink_jobs.cancel(s, job, wait_s=60)
        stop.set()
        feed.join(10)
        feeder.close()
        client.close()
        watcher.close()
        with contextlib.suppress(Exception):
            if answerer is not None and answerer.is_alive():
                answerer.kill()
        server.stop(0)
        store.close()
        for name in (topics["listings"], topics["listings_dlq"], topics["item_embeddings"]):
            with contextlib.suppress(Exception):
                delete_topic(s, name)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", type=lambda v: [int(x) for x in v.split(",")], default=list(DEFAULT_RATES))
    ap.add_argument("--seconds", type=float, default=20.0, help="paced listings a step")
    ap.add_argument("--drain-s", type=float, default=20.0, help="wait at most this for the last ones to show")
    ap.add_argument("--remove-every", type=int, default=4, help="remove every n-th listing again (0 = none)")
    ap.add_argument("--remove-after-s", type=float, default=1.0)
    ap.add_argument("--poll-ms", type=float, default=20.0, help="the watchers' pause between sweeps")
    ap.add_argument("--answer-probes", type=int, default=40, help="removed listings also timed in answers")
    ap.add_argument("--data", type=Path, default=PROJECT_ROOT / "data" / "movielens", help="titles to list")
    ap.add_argument("--ready-timeout-s", type=float, default=180.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--external", action="store_true", help="use the stack the settings name (make up)")
    ap.add_argument("--out", type=Path, default=RESULTS / "stream.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.time()
    base = load_settings()
    steps = []
    with bench_stack(base, ["flink"], args.external, base.flink.parallelism) as s:
        for rate in args.rates:
            log.info("rate %d listings/s", rate)
            steps.append(run_step(s, rate, args))
            log.info("%s", json.dumps(steps[-1]))
    under = [x for x in steps if x["visible_p99_ms"] is not None and x["visible_p99_ms"] < 2000
             and not x["censored"]["active"]]
    head = max(under, key=lambda x: x["offered_per_s"]) if under else min(steps, key=lambda x: x["offered_per_s"])
    previous: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        previous = json.loads(args.out.read_text())
    kept = {k: v for k, v in (previous.get("item_index") or {}).items() if k == "other_data"}  # a --data run's
    previous.update({
        "listing_visible_p99_ms": head["visible_p99_ms"], "listing_removed_p99_ms": head["removed_p99_ms"],
        "listing_removed_from_answers_p99_ms": head["removed_from_answers_p99_ms"],
        "item_index_max_rate_p99_under_2s": head["offered_per_s"] if under else None,
        "item_index": {
            "by_rate": steps,
            "headline_rate": head["offered_per_s"],
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
            "settings": {"index_kind": base.index.kind, "arrow_batch_size": base.item_index.arrow_batch_size,
                         "bundle_time_ms": base.flink.bundle_time_ms, "parallelism": base.flink.parallelism},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
            "wall_s": round(time.time() - started, 1),
            **kept,
        },
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(previous, indent=2) + "\n")
    print(json.dumps({k: previous[k] for k in ("listing_visible_p99_ms", "listing_removed_p99_ms",
                                               "listing_removed_from_answers_p99_ms",
                                               "item_index_max_rate_p99_under_2s")}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
