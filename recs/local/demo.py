"""`make demo`: recommendations that follow a user's clicks, end to end on the embedded stack.

    stack up ─► recs data synth ─► model artifact (cached if trained on this data, else a few epochs on it)
             ─► item tower ─► KV item:{id}  +  recs index serve (vectors upserted)  +  recs serve (phase 3)
             ─► Flink job user-embeddings ◄─ recs produce clicks (+ a few malformed events)
             ─► KV user:{id} ─► GET /recommendations/{user}
    then one user: their recommendations; a burst of clicks on a category they never clicked;
    the time until the answer's as_of_event_ts is the last of those clicks; the new recommendations.

The demo starts from a clean broker (memory storage) and clears its own Redis keys, so its checks
are exact: the answer reflects the burst's last click, and every malformed event (and nothing else)
is in the dead-letter topic with its reason. The stack is left running (`make down` stops it); the
index service, the backend and the Flink job the demo started are stopped when it ends.

    .venv/bin/python -m recs.local.demo            # what `make demo` runs
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from conf import load_settings
from conf.settings import Settings, override, with_overrides
from recs.contracts import Click
from recs.local import flink_jobs as flink
from recs.local.broker import Broker, read_topic
from recs.local.data.schema import CLICKS_FILE, LISTINGS_FILE
from recs.local.demo_serving import get_recommendations, serving
from recs.local.item_vectors import ItemVectors, embed_listings, put_item_vectors
from recs.local.produce import produce
from recs.local.stack import Stack
from recs.stores import open_store
from recs.stores.base import KIND_ITEM, KIND_RECS, KIND_USER, TRENDING
from recs.stores.redis_store import redis_client

log = logging.getLogger("recs.local.demo")

MALFORMED = [
    b"this is not json",
    b'{"user_id": 42, "item_id": "i1", "ts": 1790812800000, "event": "click"}',
    b'{"user_id": "u1", "item_id": "i1", "ts": -1, "event": "click"}',
    b'{"user_id": "u1", "item_id": "i1", "ts": 1790812800000, "event": "purchase"}',
    b'{"item_id": "i1", "ts": 1790812800000, "event": "click"}',
]
EVENTS = 50_000        # synthetic clicks: ~1,100 users and 1,250 items, the job takes them in well under a minute
EPOCHS = 6             # a demo model, not a benchmark: 3 epochs of 50k clicks took 20 s here (val recall@10
                       # 0.05 -> 0.099, flattening); 6 leave room under the 5-minute budget on 2 busy cores
SHOW = 10              # recommendations printed
MIN_CLICKS = 20        # the demo user has a history worth showing
BURST = 10             # clicks of the "new interest"
POLL_S = 0.02          # /recommendations polling while waiting for the burst (an upper bound within this)
CATCH_UP_S = 300.0     # the job's backlog (the synthetic clicks) must be processed within this
ANSWER_TIMEOUT_S = 60.0
DLQ_TIMEOUT_S = 30.0   # the job's Kafka sink is at-least-once: it flushes on each checkpoint (10 s)


def ts_text(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


# -- 1. the stack, clean --------------------------------------------------------------------------

def fresh_stack(settings: Settings) -> None:
    """Stack up; no job of an earlier run; empty topics; none of the demo's KV records."""
    if settings.kv.backend != "redis":
        raise SystemExit(f"the demo runs on the embedded stack (kv.backend = redis), not {settings.kv.backend}")
    Stack(settings).up()
    for job in flink.list_jobs(settings):  # their topics are about to be emptied: nothing to keep
        if job["state"] in ("RUNNING", "RESTARTING", "CREATED", "INITIALIZING"):
            log.info("    cancelling job %s (%s) of an earlier run", job["jid"], job["name"])
            flink.cancel(settings, job["jid"])
    broker = Broker(settings)  # fresh topics: memory storage is emptied by a restart
    broker.stop()
    broker.start()
    r = redis_client(settings.redis)
    prefix = settings.kv.key_prefix
    for pattern in (f"{prefix}{KIND_USER}:*", f"{prefix}{KIND_ITEM}:*", f"{prefix}{KIND_RECS}:*",
                    f"{prefix}{TRENDING}", f"{prefix}clicks:*"):
        for key in list(r.scan_iter(match=pattern, count=1000)):
            r.delete(key)
    r.close()


# -- 2. the model ---------------------------------------------------------------------------------

def _fits(path: Path, fingerprint: str, dim: int) -> bool:
    """An artifact folder trained on exactly the demo's data, of the configured dimension."""
    try:
        meta = json.loads((path / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(meta.get("data", {}).get("fingerprint") == fingerprint and meta.get("dim") == dim)


def ensure_artifact(settings: Settings, data_dir: Path) -> tuple[Settings, dict[str, Any]]:
    """The settings whose model.artifact_dir holds a model of the demo's data, and what it is.

    The cached artifact (model.artifact_dir, or ``<artifact_dir>-demo`` from an earlier run) is
    reused when its metadata.json says it was trained on exactly this data (fingerprint) with
    d = model.dim. Otherwise a small model is trained here (EPOCHS, every other hyperparameter from
    [model]) and exported to artifact_dir, or to ``<artifact_dir>-demo`` when artifact_dir holds a
    model of other data (a MovieLens model from `make bench-model`: never overwritten, and of no
    use here, its tokenizer and item tower never saw this catalogue)."""
    from models.artifact import load_artifact
    from models.data import load_dataset

    cfg = settings.model
    ds = load_dataset(data_dir, name="demo-synth")
    fp = str(ds.summary()["fingerprint"])
    own = cfg.artifact_dir.with_name(f"{cfg.artifact_dir.name}-demo")
    path = next((p for p in (cfg.artifact_dir, own) if _fits(p, fp, cfg.dim)), None)
    if path is not None:
        log.info("    reusing the artifact in %s (trained on this data)", path)
    else:
        from models.data import leave_last_out
        from models.export import export
        from models.train import train

        path = own if (cfg.artifact_dir / "metadata.json").exists() else cfg.artifact_dir
        if path == own:
            log.info("    %s holds a model of other data: kept; the demo trains its own", cfg.artifact_dir)
        log.info("    training %d epochs on the demo's clicks -> %s", EPOCHS, path)
        t = train(ds, leave_last_out(ds), override(cfg, {"max_epochs": EPOCHS}), progress=False,
                  checkpoint=cfg.checkpoint_dir / "demo.pt")
        export(t, path, {"validation_recall@10": t.best_val,
                         "note": f"make demo: {len(t.history)} epochs on its synthetic clicks"})
        log.info("    trained in %.0f s (validation recall@10 %.3f)", t.seconds, t.best_val)
    art = load_artifact(path, expect_dim=cfg.dim)    # checks the files; fails fast
    return (with_overrides(settings, model={"artifact_dir": path}),
            {"model_version": art.model_version, "dim": art.dim, "path": str(path)})


# -- 3. the job's backlog -------------------------------------------------------------------------

def _metric(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k.endswith(f"recs.{name}"))


def job_summary(metrics: dict[str, float]) -> dict[str, float]:
    """The job's recs.* counters by name, summed over the vertices that report one. Its click_to_kv
    gauges are left out: the synthetic clicks are weeks old by design, so they measure the data's age."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = key.split("recs.", 1)[-1]
        if not name.startswith("click_to_kv"):
            out[name] = out.get(name, 0.0) + value
    return dict(sorted(out.items()))


def wait_caught_up(settings: Settings, job_id: str, valid: int) -> dict[str, float]:
    """Until the job has parsed every valid click and run the user tower on each one's window
    (REST metrics, refreshed every few seconds)."""
    deadline = time.monotonic() + CATCH_UP_S
    t0, last_log = time.monotonic(), 0.0
    while True:
        m = flink.metrics(settings, job_id)
        parsed, embedded = _metric(m, "valid_records"), _metric(m, "batch_rows")
        if parsed >= valid and embedded >= valid:
            log.info("    caught up in %.0f s: %d clicks parsed, %d windows embedded", time.monotonic() - t0,
                     parsed, embedded)
            return m
        if time.monotonic() > deadline:
            health = flink.job_health(settings, job_id)
            raise SystemExit(f"the user-embeddings job processed {embedded:.0f} of {valid} clicks in "
                             f"{CATCH_UP_S:.0f} s (state {health.state}, last error {health.last_exception})")
        if time.monotonic() - last_log > 10:
            log.info("    ... %d / %d clicks through the user tower", embedded, valid)
            last_log = time.monotonic()
        time.sleep(1)


# -- 4. one user, before and after a new interest -------------------------------------------------

def pick_user(data_dir: Path, store: Any, categories: dict[str, str | None]) -> tuple[str, Counter[str]]:
    """A user with a KV record and at least MIN_CLICKS clicks whose history is the most focused (fewest
    categories; then most clicks; then id): the clearest "before" picture."""
    clicks = pq.read_table(data_dir / CLICKS_FILE, columns=["user_id", "item_id"]).to_pylist()
    per_user: dict[str, Counter[str]] = {}
    for c in clicks:
        per_user.setdefault(c["user_id"], Counter())[categories.get(c["item_id"]) or "?"] += 1
    ranked = sorted((u for u, cats in per_user.items() if sum(cats.values()) >= MIN_CLICKS),
                    key=lambda u: (len(per_user[u]), -sum(per_user[u].values()), u))
    for lo in range(0, len(ranked), 100):
        part = ranked[lo:lo + 100]
        for uid, rec in zip(part, store.get_users(part), strict=True):
            if rec is not None:
                return uid, per_user[uid]
    raise SystemExit(f"no user with >= {MIN_CLICKS} clicks has a KV record: did the job write any?")


def pick_burst(items: ItemVectors, data_dir: Path, clicked: Counter[str]) -> tuple[str, list[str]]:
    """The never-clicked category with the most active items, and its BURST most clicked ones."""
    by_cat: dict[str, list[str]] = {}
    for x in items.listings:
        if x.category and x.category not in clicked:
            by_cat.setdefault(x.category, []).append(x.item_id)
    if not by_cat:
        raise SystemExit("the demo user has clicked every category: no new interest to show")
    category = max(sorted(by_cat), key=lambda c: len(by_cat[c]))
    popularity = Counter(pq.read_table(data_dir / CLICKS_FILE, columns=["item_id"]).column(0).to_pylist())
    return category, sorted(by_cat[category], key=lambda i: (-popularity[i], i))[:BURST]


def show(title: str, answer: dict[str, Any], listings: dict[str, tuple[str, str | None]]) -> list[str | None]:
    """Print an answer with titles and categories; return the categories, best first."""
    fallbacks = f", fallbacks {answer['fallbacks']}" if answer["fallbacks"] else ""
    print(f"\n{title}\n  source {answer['source']}, model {answer['model_version']}, reflects the click at "
          f"{ts_text(answer['as_of_event_ts'])}{fallbacks}")
    cats = []
    for rank, it in enumerate(answer["items"], 1):
        name, cat = listings.get(it["item_id"], ("(unknown listing)", None))
        cats.append(cat)
        score = "" if it["score"] is None else f"{it['score']:.3f}"
        print(f"  {rank:2d}. {name:<48.48} {cat or '-':<12} {score}")
    return cats


def click_burst(settings: Settings, url: str, user: str, burst: list[str]) -> tuple[float, dict[str, Any]]:
    """Produce the burst (ts = now, strictly increasing), then poll the backend until its answer's
    as_of_event_ts is the last burst click's ts: seconds from that click's produce call, and the answer."""
    from confluent_kafka import Producer

    p = Producer({**settings.kafka.client_config(), "linger.ms": 0})
    ts = int(time.time() * 1000)
    for item in burst:
        ts = max(ts + 1, int(time.time() * 1000))
        sent = time.perf_counter()
        p.produce(settings.kafka.topics.clicks, Click(user, item, ts).to_json().encode(), key=user.encode())
    if p.flush(10):
        raise SystemExit("the burst clicks were not delivered to Kafka within 10 s")
    while True:
        answer = get_recommendations(url, user, SHOW)
        elapsed = time.perf_counter() - sent
        if (answer["as_of_event_ts"] or 0) >= ts:
            return elapsed, answer
        if elapsed > ANSWER_TIMEOUT_S:
            raise SystemExit(f"after {ANSWER_TIMEOUT_S:.0f} s the answer for {user} still reflects the click at "
                             f"{ts_text(answer['as_of_event_ts'])}, not the burst's last at {ts_text(ts)}")
        time.sleep(POLL_S)


def dead_letters(settings: Settings) -> list[dict[str, Any]]:
    """The dead-letter topic: wait for the malformed events' letters, then briefly for any other."""
    topic, n = settings.kafka.topics.clicks_dlq, len(MALFORMED)
    t0 = time.monotonic()
    got = read_topic(settings.kafka, topic, n, timeout_s=DLQ_TIMEOUT_S, group="recs-demo-reader")
    log.info("    %d dead letters after %.1f s", len(got), time.monotonic() - t0)
    if len(got) == n:
        got = read_topic(settings.kafka, topic, n + 1, timeout_s=3, group="recs-demo-reader")
    return [json.loads(m.value()) for m in got]


# -- the run --------------------------------------------------------------------------------------

def main(events: int = EVENTS) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t_start = time.monotonic()
    settings = with_overrides(load_settings(), serve={"phase": 3})
    data_dir = settings.data.data_dir / "demo"

    log.info("1/8 local stack (fresh topics, demo keys cleared)")
    fresh_stack(settings)

    log.info("2/8 synthetic data: %d clicks", events)
    from recs.local.data.synth import generate

    log.info("    %s", generate(data_dir, events=events, seed=settings.data.seed, progress=False))

    log.info("3/8 model artifact")
    settings, model = ensure_artifact(settings, data_dir)

    log.info("4/8 item vectors -> KV item:{id}")
    items = embed_listings(settings, data_dir)
    put_item_vectors(settings, items)
    listings = {x.item_id: (x.title, x.category) for x in items.listings}
    categories = {r["item_id"]: r["category"] for r in
                  pq.read_table(data_dir / LISTINGS_FILE, columns=["item_id", "category"]).to_pylist()}

    log.info("5/8 index service + backend (phase 3)")
    with serving(settings, items) as url:
        log.info("6/8 Flink job user-embeddings; clicks to Kafka, plus %d malformed events", len(MALFORMED))
        job_id = flink.submit(settings, "user-embeddings")
        try:
            log.info("    JobID %s", job_id)
            report = produce(settings, "click", data_dir, progress=False)
            log.info("    %s", json.dumps(report.as_dict()))
            from confluent_kafka import Producer

            p = Producer(settings.kafka.client_config())
            for raw in MALFORMED:
                p.produce(settings.kafka.topics.clicks, raw, key=b"demo-bad")
            p.flush(10)
            job_metrics = wait_caught_up(settings, job_id, report.delivered)

            log.info("7/8 one user, then a new interest")
            store = open_store(settings)
            try:
                user, clicked = pick_user(data_dir, store, categories)
            finally:
                store.close()
            category, burst = pick_burst(items, data_dir, clicked)
            history = ", ".join(f"{c} {n}" for c, n in clicked.most_common())
            before = show(f"{user} clicked {sum(clicked.values())} times ({history}); recommendations:",
                          get_recommendations(url, user, SHOW), listings)
            print(f"\n{user} now clicks {len(burst)} {category} items, a category they never clicked:")
            for item in burst:
                print(f"      {listings[item][0]}")
            seconds, answer = click_burst(settings, url, user, burst)
            after = show(f"{user}'s recommendations {seconds * 1000:.0f} ms after the last click:", answer, listings)

            log.info("8/8 checks")
            dlq = dead_letters(settings)   # while the job runs: its sink flushes on checkpoints
        finally:
            flink.cancel(settings, job_id)

    ok = len(dlq) == len(MALFORMED) and answer["source"] == "nrt"
    share = {"before": round(before.count(category) / max(len(before), 1), 2),
             "after": round(after.count(category) / max(len(after), 1), 2)}
    if share["after"] <= share["before"]:
        log.warning("the new category did not gain ground in the recommendations (%s): a weak model?", share)
    print(json.dumps({
        "model": model, "clicks_produced": report.delivered, "user": user, "new_interest": category,
        "new_interest_share_of_top": share, "click_to_answer_ms": round(seconds * 1000, 1),
        "dead_letters": [{"field": d["field"], "reason": d["reason"]} for d in dlq],
        "job_metrics": job_summary(job_metrics),
        "wall_seconds": round(time.monotonic() - t_start, 1), "ok": ok,
    }, indent=2))
    if not ok:
        raise SystemExit("demo check failed: the dead letters are not exactly the malformed events, "
                         "or the last answer did not come from the user's embedding")
    print("demo ok. The stack is still running (`recs stack status`, `make down` to stop it); "
          "the index service, the backend and the job were stopped.")


if __name__ == "__main__":
    main()
