"""plain_consumer: the service a Python team would write instead of the Flink job; bench/stream.py's peer.

    .venv/bin/python bench/plain_consumer.py --group peer              # topic kafka.topics.clicks
    .venv/bin/python bench/plain_consumer.py --group g --topic t --stats /tmp/peer.json   # what the bench runs

Settings come from load_settings() (RECS_* variables), like every other process. One process, one
loop, the same model code and KV writes as the Flink job (udfs.user_tower.UserTowerWriter):

    clicks ─► consume(max_batch, poll_ms) ─► parse_or_error ──(bad)──────────────────► clicks.dlq
                                                  │ Click(user_id, item_id, ts)
                                                  ▼
              Redis last-N list per user: RPUSH + LTRIM + EXPIRE + LRANGE of every user in the batch
              (one pipelined round trip)
                                                  │ UserWindow(user_id, items, tss)
                                                  ▼
              UserTowerWriter.process: item vectors, ONNX user tower on the batch, put_users ─(bad)─► clicks.dlq
                                                  │
                                                  ▼
              commit the consumed offsets (after the write: at-least-once)

State: ``{kv.key_prefix}lastn:{user_id}``, a Redis list of ``[ts, item_id]`` JSON entries in arrival
order, the newest ``model.max_len + user_embeddings.reorder_slack`` kept (the Flink job's window
length), expiring ``user_embeddings.state_ttl_s`` after the user's last click (0 = never).

At-least-once: offsets are committed only after the batch's KV writes returned. A crash in between
replays the batch: its entries are pushed again, and ``window`` drops exact duplicates (same ts and
item), so the replayed record is the one first written (an equal event_ts replaces it: idempotent).

Errors: a record that breaks its contract, and a row the writer rejects, go to ``clicks.dlq`` (the
Flink job's dead letters, same JSON); a null value is counted and dropped (as the job does). Redis
unreachable: retried with the job's sink policy (``flink.sink_retries``, udfs/sinks.py), then the
exception ends the process without committing, so a restart replays the batch (what a supervisor
such as systemd or Kubernetes does with this service).

Stats (``--stats FILE``, rewritten every ``--stats-every-s`` and at exit, JSON): consumed, valid,
null_values, dead_letters, polls, the writer's BatchStats summed as ``writer_<name>``, and as the
Flink job names them ``batches`` (writer calls: one ONNX run each) and ``batch_rows`` (windows), whose
ratio is the mean batch. SIGTERM/SIGINT end the loop after the batch in hand (commit, leave the group).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conf.settings import Settings, load_settings
from recs.contracts import Click, ContractError, parse_or_error
from recs.dead_letters import dead_letter

if TYPE_CHECKING:
    from udfs.user_tower import BatchOutcome

log = logging.getLogger("bench.plain_consumer")


# ------------------------------------------------------------------------------ pure parts
def encode_entry(click: Click) -> str:
    """One last-N list entry: ``[ts, item_id]`` as JSON (ids may hold any printable character)."""
    return json.dumps([click.ts, click.item_id], ensure_ascii=False)


def window(entries: Iterable[bytes | str]) -> tuple[list[str], list[int]]:
    """LRANGE entries -> (items, tss) in list order, exact duplicates (a replayed batch) dropped."""
    seen: set[tuple[int, str]] = set()
    items: list[str] = []
    tss: list[int] = []
    for raw in entries:
        ts, item = json.loads(raw)
        if (ts, item) in seen:
            continue
        seen.add((ts, item))
        items.append(item)
        tss.append(int(ts))
    return items, tss


def by_user(clicks: Iterable[Click]) -> dict[str, list[Click]]:
    """Clicks grouped per user, users in first-seen order, each user's clicks in arrival order."""
    out: dict[str, list[Click]] = {}
    for c in clicks:
        out.setdefault(c.user_id, []).append(c)
    return out


@dataclass
class Parsed:
    clicks: list[Click] = field(default_factory=list)
    dead_letters: list[str] = field(default_factory=list)
    null_values: int = 0


def parse_batch(values: Sequence[bytes | None], settings: Settings, source_topic: str) -> Parsed:
    """Kafka values -> clicks, dead letters (JSON of recs.dead_letters) and the count of null values."""
    out = Parsed()
    for value in values:
        if value is None:
            out.null_values += 1
            continue
        record = parse_or_error("click", value, settings.contracts)
        if isinstance(record, ContractError):
            out.dead_letters.append(dead_letter(value, record, source_topic))
        elif isinstance(record, Click):
            out.clicks.append(record)
    return out


# ------------------------------------------------------------------------------ the service
class RedisLastN:
    """Per-user last-N lists in Redis; ``push`` costs one round trip for a whole batch."""

    def __init__(self, client: Any, prefix: str, keep: int, ttl_s: int) -> None:
        self.client, self.prefix, self.keep, self.ttl_s = client, prefix, keep, ttl_s

    def key(self, user_id: str) -> str:
        return f"{self.prefix}lastn:{user_id}"

    def push(self, clicks: Sequence[Click]) -> dict[str, tuple[list[str], list[int]]]:
        """Append the batch's clicks; return each user's window (items, tss) after the append."""
        users = by_user(clicks)
        pipe = self.client.pipeline(transaction=False)
        for uid, cs in users.items():
            k = self.key(uid)
            pipe.rpush(k, *(encode_entry(c) for c in cs))
            pipe.ltrim(k, -self.keep, -1)
            if self.ttl_s > 0:
                pipe.expire(k, self.ttl_s)
            pipe.lrange(k, 0, -1)
        replies = pipe.execute()
        step = 4 if self.ttl_s > 0 else 3
        return {uid: window(replies[i * step + step - 1]) for i, uid in enumerate(users)}


class PlainConsumer:
    def __init__(self, settings: Settings, group: str, topic: str | None = None, *,
                 max_batch: int = 500, poll_s: float = 0.05, fetch_wait_ms: int = 500) -> None:
        from confluent_kafka import Consumer, Producer

        from models.artifact import load_artifact
        from recs.stores import open_store
        from recs.stores.redis_store import redis_client
        from udfs.sinks import call_with_retry
        from udfs.user_tower import UserTowerWriter, UserWindow

        self.settings = settings
        self.topic = topic or settings.kafka.topics.clicks
        self.max_batch, self.poll_s = max_batch, poll_s
        kafka = settings.kafka.client_config()
        self.consumer = Consumer({**kafka, "group.id": group, "enable.auto.commit": False,
                                  "auto.offset.reset": "earliest", "fetch.wait.max.ms": fetch_wait_ms})
        self.dlq = Producer({**kafka, "linger.ms": 20})
        self.redis = redis_client(settings.redis)
        ue = settings.user_embeddings
        self.state = RedisLastN(self.redis, settings.kv.key_prefix, settings.model.max_len + ue.reorder_slack,
                                ue.state_ttl_s)
        self.store = open_store(settings)
        artifact = load_artifact(settings.model.artifact_dir, expect_dim=settings.model.dim,
                                 threads=settings.threads.flink_worker)
        self.writer = UserTowerWriter(settings, self.store, artifact)
        self._window, self._retry = UserWindow, call_with_retry   # imported here: the pure parts need no pyflink
        self.stats: dict[str, float] = {"consumed": 0, "valid": 0, "null_values": 0, "dead_letters": 0,
                                        "batches": 0, "polls": 0}
        self.consumer.subscribe([self.topic])

    def step(self) -> int:
        """One poll -> parse -> state -> model -> KV -> commit; returns the messages consumed."""
        msgs = self.consumer.consume(num_messages=self.max_batch, timeout=self.poll_s)
        self.stats["polls"] += 1
        values = []
        for m in msgs:
            if m.error():
                log.warning("consumer error: %s", m.error())
                continue
            values.append(m.value())
        if not values:
            return 0
        parsed = parse_batch(values, self.settings, self.topic)
        # Click(user_id, item_id, ts) x n, dead letters, nulls
        dead = list(parsed.dead_letters)
        if parsed.clicks:
            windows = self._retry(lambda: self.state.push(parsed.clicks), self.writer.policy)
            # {user_id: (items, tss)} in arrival order
            out = self.writer.process([self._window(uid, items, tss) for uid, (items, tss) in windows.items()])
            # BatchOutcome(dead_letters: one per window, stats: BatchStats)
            dead += [d for d in out.dead_letters if d is not None]
            self._add_writer_stats(out)
        for d in dead:
            self.dlq.produce(self.settings.kafka.topics.clicks_dlq, value=d.encode())
        self.dlq.poll(0)
        self.consumer.commit(asynchronous=True)     # after the write: at-least-once
        s = self.stats
        s["consumed"] += len(values)
        s["valid"] += len(parsed.clicks)
        s["null_values"] += parsed.null_values
        s["dead_letters"] += len(dead)
        return len(values)

    def _add_writer_stats(self, out: BatchOutcome) -> None:
        st = out.stats
        s = self.stats
        s["batches"] += 1
        for name in ("size", "written", "stale", "no_known_items", "unknown_items", "dead_letters"):
            s[f"writer_{name}"] = s.get(f"writer_{name}", 0) + getattr(st, name)
        s["batch_rows"] = s.get("batch_rows", 0) + st.size     # the job's recs.batch_rows

    def close(self) -> None:
        try:
            self.consumer.commit(asynchronous=False)
        except Exception as e:  # noqa: BLE001 - nothing consumed since the last commit is also fine
            log.info("final commit: %s", e)
        self.consumer.close()
        self.dlq.flush(self.settings.kafka.client_timeout_s)
        self.store.close()
        self.redis.close()


def write_stats(path: Path, stats: dict[str, float]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({**stats, "written_at_ms": int(time.time() * 1000), "pid": os.getpid()}))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--group", required=True, help="consumer group id")
    ap.add_argument("--topic", default=None, help="clicks topic (default: kafka.topics.clicks)")
    ap.add_argument("--max-batch", type=int, default=500, help="messages a poll (consume num_messages)")
    ap.add_argument("--poll-ms", type=float, default=50.0, help="a poll waits at most this for a full batch")
    ap.add_argument("--fetch-wait-ms", type=int, default=500,
                    help="fetch.wait.max.ms: 500 is librdkafka's and the Java client's default (the Flink "
                         "source's); a broker that holds every fetch this long (Tansu does) adds it to latency")
    ap.add_argument("--stats", type=Path, default=None, help="write counters here (JSON)")
    ap.add_argument("--stats-every-s", type=float, default=0.5)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    stop = False

    def on_signal(_sig: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    peer = PlainConsumer(load_settings(), args.group, args.topic, max_batch=args.max_batch,
                         poll_s=args.poll_ms / 1000, fetch_wait_ms=args.fetch_wait_ms)
    log.info("consuming %s as group %s", peer.topic, args.group)
    next_stats = 0.0
    try:
        while not stop:
            peer.step()
            if args.stats and time.monotonic() >= next_stats:
                write_stats(args.stats, peer.stats)
                next_stats = time.monotonic() + args.stats_every_s
    finally:
        peer.close()
        if args.stats:
            write_stats(args.stats, peer.stats)
        log.info("stopped: %s", json.dumps(peer.stats))


if __name__ == "__main__":
    main()
