"""The serving side of `make demo`: the index service and the HTTP backend as the real commands.

    with serving(settings, items) as url:         # recs index serve --no-feed  +  recs serve
        answer = get_recommendations(url, "u42", k=10)

``serving`` starts ``recs index serve --no-feed --no-restore`` (the index is fed here, not from the
item_embeddings topic: the batch stand-in for the item_index job, like the KV item:{id} records of
recs/local/item_vectors.py), upserts every item vector through the gRPC client, starts ``recs serve``
and waits for its /healthz. Both are child processes with the demo's settings (``RECS_*``), logs and
pid files in ``<run_dir>/demo/``; leaving the block stops them (SIGTERM, then SIGKILL), so nothing is
left behind for `make down` to find. A port already taken is a clear error naming the setting.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from conf.settings import Settings, override, to_env
from recs.local.item_vectors import ItemVectors
from recs.local.processes import StackError, alive, ensure_free, spawn, terminate, wait_healthy

log = logging.getLogger(__name__)

UPSERT_CHUNK = 512          # items an Upsert request: under index.max_batch (1,024)
UPSERT_DEADLINE_MS = 10_000  # a bulk upsert of 512 HNSW inserts takes far longer than a search's 50 ms
START_TIMEOUT_S = 60.0       # each server: imports (FAISS, torch-free) and bind take a few seconds


@contextmanager
def child(settings: Settings, name: str, args: list[str], healthy: Callable[[], bool]) -> Iterator[None]:
    """``python -m recs.cli ARGS`` with the settings in its environment, healthy on exit of the
    ``with`` line, stopped when the block ends."""
    run_dir = settings.stack.run_dir / "demo"
    run_dir.mkdir(parents=True, exist_ok=True)
    log_file, pid_file = run_dir / f"{name}.log", run_dir / f"{name}.pid"
    env = dict(os.environ, **to_env(settings))
    proc = spawn([sys.executable, "-m", "recs.cli", *args], log_file, pid_file, env=env)
    try:
        wait_healthy(name, healthy, START_TIMEOUT_S, alive(proc.pid), log_file)
        log.info("    %s running (pid %d, log %s)", name, proc.pid, log_file)
        yield
    finally:
        terminate([proc.pid])
        pid_file.unlink(missing_ok=True)
        log.info("    %s stopped", name)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.HTTPError):
        return False


def get_recommendations(base_url: str, user_id: str, k: int, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET /recommendations/{user_id}?k=K -> the JSON answer (recs/serving/app.py)."""
    with urllib.request.urlopen(f"{base_url}/recommendations/{user_id}?k={k}", timeout=timeout_s) as r:
        return dict(json.loads(r.read()))


@contextmanager
def serving(settings: Settings, items: ItemVectors) -> Iterator[str]:
    """The index service holding ``items`` and the backend on top of it -> the backend's base URL."""
    from index.client import GrpcIndexClient

    ix, sv = settings.index, settings.serve
    ensure_free(ix.host, ix.port, "RECS_INDEX__PORT")
    if ix.metrics_port:
        ensure_free(ix.host, ix.metrics_port, "RECS_INDEX__METRICS_PORT")
    ensure_free(sv.host, sv.port, "RECS_SERVE__PORT")
    if ix.shards != [[f"{ix.host}:{ix.port}"]]:
        raise StackError(f"the demo serves one local index at {ix.host}:{ix.port}, but index.shards is "
                         f"{ix.shards}: leave RECS_INDEX__SHARDS unset for the demo")
    client = GrpcIndexClient(override(ix, {"client_deadline_ms": UPSERT_DEADLINE_MS}))
    try:
        with child(settings, "index", ["index", "serve", "--no-feed", "--no-restore"], client.healthy):
            ids = [x.item_id for x in items.listings]
            cats = [x.category for x in items.listings]
            applied = 0
            for lo in range(0, len(ids), UPSERT_CHUNK):
                hi = lo + UPSERT_CHUNK
                applied += client.upsert(ids[lo:hi], items.vectors[lo:hi], cats[lo:hi],
                                         model_version=items.model_version)
            log.info("    index: %d item vectors upserted (model %s, kind %s)", applied,
                     items.model_version, ix.kind)
            url = f"http://{sv.host}:{sv.port}"
            with child(settings, "backend", ["serve"], lambda: _http_ok(f"{url}/healthz")):
                yield url
    finally:
        client.close()
