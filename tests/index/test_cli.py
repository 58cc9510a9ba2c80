"""`recs index serve` as a process: feeds the topic, serves gRPC, snapshots on SIGTERM, and a
restart restores the snapshot and replays only what came after (real broker, real server)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conf.settings import to_env, with_overrides
from index.client import GrpcIndexClient
from recs.contracts import ItemEmbedding

pytestmark = pytest.mark.integration


def start(settings) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, **to_env(settings)}
    proc = subprocess.Popen([sys.executable, "-m", "recs.cli", "index", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"index service on ([\d.]+:\d+) \(", line)
        if m and "index.server" not in line:
            return proc, m.group(1)
        assert time.monotonic() < deadline, "index serve did not report SERVING"
    raise AssertionError(f"index serve exited with {proc.wait()}")


def test_serve_feeds_snapshots_and_restores(test_settings, kafka_settings, kafka_topic, produce, tmp_path):
    topic = kafka_topic(2)
    kafka = kafka_settings.model_dump()
    kafka["topics"]["item_embeddings"] = topic
    s = with_overrides(test_settings, kafka=kafka,
                       index={"port": 0, "metrics_port": 0, "snapshot_dir": tmp_path, "dim": 8,
                              "kind": "HNSW", "model_version": ""})
    vec = np.random.default_rng(0).standard_normal((60, 8)).astype(np.float32)
    produce(topic, [(f"i{i}", ItemEmbedding(f"i{i}", vec[i], "v1", "active", 10 + i).encode())
                                    for i in range(50)])
    proc, addr = start(s)
    client = GrpcIndexClient(s.index, [[addr]])
    assert client.healthy()
    assert client.search(vec[3], 1)[0][0] == ["i3"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    snaps = list((tmp_path / s.index.replica_id).glob("snap-*"))
    assert len(snaps) == 1

    produce(topic, [("i3", None)] + [
        (f"i{i}", ItemEmbedding(f"i{i}", vec[i], "v1", "active", 100 + i).encode()) for i in range(50, 60)])
    proc, addr = start(s)
    client = GrpcIndexClient(s.index, [[addr]])
    stats = client.stats()[0]
    assert stats.live == 59 and stats.rows == 60           # 50 restored + 10 replayed, i3 removed
    assert "i3" not in client.search(vec[3], 5)[0][0]
    assert client.search(vec[55], 1)[0][0] == ["i55"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
