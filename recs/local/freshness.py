"""Click-to-answer freshness under a steady click load: what ``recs probe freshness`` runs.

    report = probe(settings, rate=1000, seconds=60, probes=60, serve_url="http://127.0.0.1:8000",
                   items=items_with_vectors(store, listing_ids))
    report.kv.p99_ms, report.serve.p99_ms, report.background.achieved_per_s

One process, four threads (the I/O releases the GIL):
- background (recs/local/pacing.py): clicks to ``kafka.topics.clicks`` at ``rate`` per second on an
  absolute schedule, batched by the producer for ``kafka.producer_linger_ms`` (the embedded broker costs
  CPU per batch), random users of a pool of ``pool``, random ``items``, ts = now;
- probes (main thread): ``probes`` fresh users, one click each, one every ``seconds / probes``,
  ts = now, sent by a producer of their own with no linger (not queued behind a background batch);
- KV poller: every ``poll_ms``, one ``get_users`` for every pending probe user:
  (a) = time until the user record has ``event_ts >= ts`` of the probe;
- serve poller (with ``serve_url``): GET {serve_url}/recommendations/{user}?k=1 for probes seen in KV
  (its ``as_of_event_ts`` is that record's event_ts, so it cannot come first):
  (b) = time until the answer has ``as_of_event_ts >= ts``.

Times run from the probe's produce call to the end of the poll that saw it: an upper bound, within
``poll_ms`` plus one KV or HTTP round trip. Percentiles are nearest-rank (with fewer than 100 probes
p99 is the max). A probe neither seen within ``timeout_s`` is counted as timed out; if the first
probes all time out in KV, the run stops with ``ProbeError`` (the job is not consuming).
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from conf.settings import Settings
from recs.contracts import Click, ContractError, parse_click
from recs.local.pacing import Background, BackgroundReport, Producer
from recs.stores.base import EmbeddingStore


class ProbeError(RuntimeError):
    """The stack or the job is not there: the message says what to start."""


def probe_offsets(seconds: float, probes: int) -> list[float]:
    """When each probe is sent, in seconds from the start: one every seconds / probes, mid-slot."""
    step = seconds / probes
    return [(i + 0.5) * step for i in range(probes)]


def nearest_rank(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank q-quantile (0 < q <= 1) of ascending values: an observed value, never interpolated."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


@dataclass(frozen=True, slots=True)
class Summary:
    seen: int
    timed_out: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


def summarize(latencies_s: Sequence[float], timed_out: int) -> Summary:
    ms = sorted(v * 1000 for v in latencies_s)
    if not ms:
        return Summary(0, timed_out, None, None, None)
    return Summary(len(ms), timed_out, round(nearest_rank(ms, 0.5), 2), round(nearest_rank(ms, 0.99), 2),
                   round(ms[-1], 2))


# -- probes and pollers -------------------------------------------------------------------------

@dataclass
class Probe:
    user_id: str
    ts: int                       # the click's event time (ms)
    sent: float                   # perf_counter at the produce call
    kv_s: float | None = None     # (a) seconds until the KV record reflected it
    serve_s: float | None = None  # (b) seconds until an answer reflected it
    kv_timed_out: bool = False
    serve_timed_out: bool = False
    failed: str | None = None     # the probe click was not delivered


@dataclass
class FreshnessReport:
    probes_sent: int
    probes_failed: int
    kv: Summary
    serve: Summary | None
    background: BackgroundReport | None
    settings: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)   # per probe: at_s (after the first), kv_ms, serve_ms

    def as_dict(self) -> dict[str, Any]:
        return {"probes_sent": self.probes_sent, "probes_failed": self.probes_failed, "kv": asdict(self.kv),
                "serve": asdict(self.serve) if self.serve else None,
                "background": self.background.as_dict() if self.background else None,
                "settings": self.settings, "problems": self.problems, "series": self.series}


class _Pollers:
    """The KV and serve pollers over the shared probe list (appended by the main thread only)."""

    def __init__(self, store: EmbeddingStore, serve_url: str | None, poll_s: float, timeout_s: float) -> None:
        self.store, self.serve_url, self.poll_s, self.timeout_s = store, serve_url, poll_s, timeout_s
        self.probes: list[Probe] = []
        self.kv_errors = self.serve_errors = 0
        self.last_kv_error = self.last_serve_error = ""
        self.last_answer: dict[str, Any] = {}
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        loops = [("kv", self._kv_loop)] + ([("serve", self._serve_loop)] if serve_url else [])
        self._threads = [threading.Thread(target=self._guard, args=(loop,), name=f"freshness-{name}", daemon=True)
                         for name, loop in loops]

    def start(self) -> _Pollers:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def done(self, p: Probe) -> bool:
        kv_done = p.failed is not None or p.kv_s is not None or p.kv_timed_out
        return kv_done and (not self.serve_url or p.failed is not None or p.kv_timed_out
                            or p.serve_s is not None or p.serve_timed_out)

    def _guard(self, loop: Any) -> None:
        try:
            loop()
        except BaseException as e:     # raised again by probe() after the run
            self.errors.append(e)

    def _kv_loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            pending = [p for p in list(self.probes) if p.failed is None and p.kv_s is None and not p.kv_timed_out]
            if not pending:
                continue
            try:
                records = self.store.get_users([p.user_id for p in pending])
            except Exception as e:     # counted, shown in the report; the probe times out if it lasts
                self.kv_errors += 1
                self.last_kv_error = f"{type(e).__name__}: {e}"
                records = [None] * len(pending)
            now = time.perf_counter()
            for p, rec in zip(pending, records, strict=True):
                if rec is not None and rec.event_ts >= p.ts:
                    p.kv_s = now - p.sent
                elif now - p.sent > self.timeout_s:
                    p.kv_timed_out = True

    def _serve_loop(self) -> None:
        assert self.serve_url
        conn = _connect(self.serve_url)
        base = urllib.parse.urlsplit(self.serve_url).path.rstrip("/")
        while not self._stop.wait(self.poll_s):
            for p in list(self.probes):
                p.serve_timed_out |= p.kv_timed_out     # never in KV: cannot be served either
                if p.kv_s is None or p.serve_s is not None or p.serve_timed_out:
                    continue
                try:
                    answer = _get_json(conn, f"{base}/recommendations/{urllib.parse.quote(p.user_id)}?k=1")
                except (OSError, http.client.HTTPException, ValueError) as e:
                    self.serve_errors += 1
                    self.last_serve_error = f"{type(e).__name__}: {e}"
                    conn.close()
                    conn = _connect(self.serve_url)
                    answer = {}
                now = time.perf_counter()
                if answer:
                    self.last_answer = answer
                as_of = answer.get("as_of_event_ts")
                if as_of is not None and as_of >= p.ts:
                    p.serve_s = now - p.sent
                elif now - p.sent > self.timeout_s:
                    p.serve_timed_out = True
        conn.close()


def _connect(url: str, timeout_s: float = 5.0) -> http.client.HTTPConnection:
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"serve URL must be http(s)://host[:port], got {url!r}")
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    return cls(u.hostname, u.port, timeout=timeout_s)


def _get_json(conn: http.client.HTTPConnection, path: str) -> dict[str, Any]:
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise ValueError(f"GET {path}: HTTP {resp.status}: {body[:200]!r}")
    out = json.loads(body)
    if not isinstance(out, dict):
        raise ValueError(f"GET {path}: expected a JSON object, got {body[:200]!r}")
    return out


# -- the run ------------------------------------------------------------------------------------

def check_stack(settings: Settings, store: EmbeddingStore, serve_url: str | None) -> None:
    """ProbeError unless the broker (with the clicks topic), the KV store and the backend answer."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    k = settings.kafka
    try:
        topics = AdminClient(k.client_config()).list_topics(timeout=k.client_timeout_s).topics
    except KafkaException as e:
        raise ProbeError(f"Kafka at {k.bootstrap_servers} does not answer ({e}): is the stack up? "
                         "(`recs stack up`)") from None
    if k.topics.clicks not in topics:
        raise ProbeError(f"topic {k.topics.clicks!r} does not exist on {k.bootstrap_servers} "
                         "(`recs stack up` creates it)")
    try:
        store.get_users(["__freshness_check__"])
    except Exception as e:     # any backend error: the message names it
        raise ProbeError(f"KV store ({settings.kv.backend}) does not answer: {type(e).__name__}: {e}: "
                         "is the stack up? (`recs stack up`)") from None
    if serve_url:
        conn = _connect(serve_url)
        path = urllib.parse.urlsplit(serve_url).path.rstrip("/") + "/recommendations/__freshness_check__?k=1"
        try:
            answer = _get_json(conn, path)
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise ProbeError(f"backend at {serve_url} does not answer ({type(e).__name__}: {e}): "
                             "is `recs serve` running?") from None
        finally:
            conn.close()
        if "as_of_event_ts" not in answer:
            raise ProbeError(f"backend at {serve_url} does not report as_of_event_ts (an older version): "
                             "restart `recs serve`")


def items_with_vectors(store: EmbeddingStore, item_ids: Sequence[str], limit: int,
                       model_version: str | None = None, batch: int = 1000) -> list[str]:
    """The first ``limit`` of ``item_ids`` whose KV ``item:{id}`` holds a vector (of ``model_version``
    when given): the user-embedding job skips clicks on any other item."""
    out: list[str] = []
    for lo in range(0, len(item_ids), batch):
        chunk = list(item_ids[lo:lo + batch])
        out += [i for i, v in zip(chunk, store.get_items(chunk), strict=True)
                if v is not None and v.embedding is not None
                and (model_version is None or v.model_version == model_version)]
        if len(out) >= limit:
            break
    return out[:limit]


def probe(settings: Settings, rate: float, seconds: float, probes: int, serve_url: str | None,
          items: Sequence[str], *, timeout_s: float = 30.0, warmup_s: float = 0.0, pool: int = 100_000,
          poll_ms: float = 5.0, seed: int = 0, store: EmbeddingStore | None = None) -> FreshnessReport:
    """``rate`` background clicks/s for ``warmup_s``, then with ``probes`` probes for ``seconds``, then
    until every probe is seen or timed out (module docstring). ValueError: bad arguments; ProbeError:
    the stack, the backend or the job is not there."""
    if rate < 0 or seconds <= 0 or probes < 1 or timeout_s <= 0 or poll_ms <= 0 or warmup_s < 0 or pool < 1:
        raise ValueError(f"need rate >= 0, seconds > 0, probes >= 1, timeout_s, poll_ms > 0, warmup_s >= 0, pool >= 1; "
                         f"got {rate=}, {seconds=}, {probes=}, {timeout_s=}, {poll_ms=}, {warmup_s=}, {pool=}")
    if not items:
        raise ValueError("no items to click: give item ids that have a vector in the KV store (item:{id})")
    own = None
    if store is None:
        from recs.stores import open_store

        store = own = open_store(settings)
    try:
        return _run(settings, store, rate, seconds, probes, serve_url, items, timeout_s, warmup_s, pool,
                    poll_ms, seed)
    finally:
        if own is not None:
            own.close()


def _run(settings: Settings, store: EmbeddingStore, rate: float, seconds: float, probes: int,
         serve_url: str | None, items: Sequence[str], timeout_s: float, warmup_s: float, pool: int,
         poll_ms: float, seed: int) -> FreshnessReport:
    from confluent_kafka import Producer

    check_stack(settings, store, serve_url)
    k = settings.kafka
    topic, key_field = k.topics.clicks, k.topics.click_key
    run_tag = f"{int(time.time() * 1000):x}"     # fresh probe users on every run
    try:   # the background's hand-written JSON must pass the contract the job applies
        parse_click(f'{{"user_id": "freshness-bg-0", "item_id": {json.dumps(items[0])}, '
                    f'"ts": {int(time.time() * 1000)}, "event": "click"}}', settings.contracts)
    except ContractError as e:
        raise ValueError(f"item id {items[0]!r} breaks the click contract: {e}") from None

    bg_errors: list[str] = []

    def on_bg_error(err: Any, _msg: Any) -> None:     # called for failed deliveries only
        bg_errors.append(str(err))

    bg_producer = Producer({**k.client_config(), "linger.ms": k.producer_linger_ms,
                            "queue.buffering.max.messages": 500_000, "enable.idempotence": False,
                            "delivery.report.only.error": True, "on_delivery": on_bg_error})
    probe_producer = Producer({**k.client_config(), "linger.ms": 0, "enable.idempotence": False})
    background = Background(bg_producer, topic, rate, items, pool=pool, user_prefix="freshness-bg-",
                            key_field=key_field, seed=seed) if rate > 0 else None
    pollers = _Pollers(store, serve_url, poll_ms / 1000, timeout_s)
    rng = np.random.default_rng(seed + 1)
    bg_report = None
    if background:
        background.start()
    pollers.start()
    try:
        start = time.perf_counter() + warmup_s
        for i, offset in enumerate(probe_offsets(seconds, probes)):
            _wait_until(start + offset, probe_producer, pollers, timeout_s)
            item = items[int(rng.integers(len(items)))]
            p = Probe(f"freshness-probe-{run_tag}-{i}", int(time.time() * 1000), time.perf_counter())
            click = Click(p.user_id, item, p.ts)
            key = {"user_id": p.user_id, "item_id": item}.get(key_field)
            probe_producer.produce(topic, click.to_json().encode(), key.encode() if key else None,
                                   on_delivery=_mark_failed(p))
            probe_producer.poll(0)
            pollers.probes.append(p)
        while time.perf_counter() < start + seconds or not all(pollers.done(p) for p in pollers.probes):
            _wait_until(time.perf_counter() + 0.05, probe_producer, pollers, timeout_s)
    finally:
        pollers.stop()
        if background:
            bg_report = background.stop()
            remaining = bg_producer.flush(k.client_timeout_s * 3)
            bg_report.delivery_errors = len(bg_errors) + remaining
            bg_report.delivered = bg_report.sent - bg_report.delivery_errors
        probe_producer.flush(k.client_timeout_s * 3)
    if pollers.errors:
        raise pollers.errors[0]
    return _report(pollers, bg_report, bg_errors[-1] if bg_errors else "", {
        "rate": rate, "seconds": seconds, "probes": probes, "timeout_s": timeout_s, "poll_ms": poll_ms,
        "warmup_s": warmup_s, "pool": pool, "items": len(items), "serve_url": serve_url, "topic": topic,
        "seed": seed})


def _mark_failed(p: Probe) -> Any:
    def on_delivery(err: Any, _msg: Any) -> None:
        p.failed = None if err is None else str(err)
    return on_delivery


def _wait_until(t: float, producer: Producer, pollers: _Pollers, timeout_s: float) -> None:
    """Serve the probe producer's callbacks until ``t``; stop the run if the job is clearly not there."""
    while True:
        if pollers.errors:
            raise pollers.errors[0]
        probes = list(pollers.probes)
        if any(p.kv_timed_out for p in probes) and not any(p.kv_s is not None for p in probes):
            last = f" (KV errors: {pollers.kv_errors}, last: {pollers.last_kv_error})" if pollers.kv_errors else ""
            raise ProbeError(f"no KV user record for probe user {probes[0].user_id} within {timeout_s:g} s of "
                             f"its click{last}: is the user-embeddings job running? "
                             "(`recs jobs submit user-embeddings`, `recs jobs list`)")
        left = t - time.perf_counter()
        if left <= 0:
            return
        producer.poll(min(left, 0.05))


def _report(pollers: _Pollers, bg: BackgroundReport | None, bg_last_error: str,
            settings: dict[str, Any]) -> FreshnessReport:
    ps = pollers.probes
    failed = [p for p in ps if p.failed is not None]
    kv = summarize([p.kv_s for p in ps if p.kv_s is not None], sum(p.kv_timed_out for p in ps))
    serve = summarize([p.serve_s for p in ps if p.serve_s is not None],
                      sum(p.serve_timed_out for p in ps)) if pollers.serve_url else None
    problems = []
    timeout = settings["timeout_s"]
    if failed:
        problems.append(f"{len(failed)} of {len(ps)} probe clicks were not delivered (last: {failed[-1].failed})")
    if kv.timed_out:
        problems.append(f"{kv.timed_out} of {len(ps)} probes not in the KV store within {timeout:g} s")
    if serve is not None and serve.seen == 0 and kv.seen:
        a = pollers.last_answer
        problems.append(f"the backend never answered with as_of_event_ts >= a probe's ts within {timeout:g} s "
                        f"(last answer: source {a.get('source')!r}, fallbacks {a.get('fallbacks')}): is it "
                        "serving phase 3 with an index of the job's model_version?")
    elif serve is not None and serve.timed_out:
        problems.append(f"{serve.timed_out} of {len(ps)} probes not reflected by the backend within {timeout:g} s")
    if pollers.kv_errors:
        problems.append(f"{pollers.kv_errors} KV polls failed (last: {pollers.last_kv_error})")
    if pollers.serve_errors:
        problems.append(f"{pollers.serve_errors} backend polls failed (last: {pollers.last_serve_error})")
    if bg is not None and bg.delivery_errors:
        problems.append(f"{bg.delivery_errors} background clicks not delivered (last: {bg_last_error})")
    ms = [None if v is None else round(v * 1000, 2) for p in ps for v in (p.kv_s, p.serve_s)]
    series = [{"at_s": round(p.sent - ps[0].sent, 3), "kv_ms": ms[2 * i], "serve_ms": ms[2 * i + 1]}
              for i, p in enumerate(ps)]
    return FreshnessReport(len(ps), len(failed), kv, serve, bg, settings, problems, series)
