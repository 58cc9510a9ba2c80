"""Submit, list and cancel Flink jobs on the cluster named in settings.

Submission is ``flink run --python`` from the apache-flink package (the same command targets the
local standalone cluster, a remote session cluster — set ``RECS_FLINK__JOBMANAGER_HOST`` — or a
session cluster run by the Kubernetes operator, through its REST service). The job script reads
its settings from ``RECS_*`` variables that ``submit`` sets from the caller's settings object.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conf.settings import PROJECT_ROOT, Settings, to_env, with_overrides
from recs.local.flink_cluster import flink_home

JOBS = {
    "click-counts": PROJECT_ROOT / "jobs" / "click_counts.py",
    "user-embeddings": PROJECT_ROOT / "jobs" / "user_embeddings.py",
    "item-index": PROJECT_ROOT / "jobs" / "item_index.py",
}


class FlinkError(RuntimeError):
    pass


def submit(settings: Settings, job: str, *, parallelism: int | None = None,
           from_savepoint: str | None = None, detached: bool = True, timeout_s: float = 300,
           script: Path | None = None) -> str:
    """Run ``flink run`` for a job of JOBS (or, for benchmarks, any job ``script``); returns the JobID."""
    if script is None and job not in JOBS:
        raise FlinkError(f"unknown job {job!r}; known: {sorted(JOBS)}")
    if settings.model.version:
        _check_lane_artifact(settings)
    if parallelism:     # the job script sets its parallelism from the settings it rebuilds (jobs/flink_env.py)
        settings = with_overrides(settings, flink={"parallelism": parallelism})
    f = settings.flink
    cmd = [str(flink_home() / "bin" / "flink"), "run", "-m", f"{f.jobmanager_host}:{f.rest_port}",
           "-pyexec", sys.executable, "-pyclientexec", sys.executable, "-py", str(script or JOBS[job])]
    if detached:
        cmd.insert(2, "-d")
    cmd[2:2] = ["-p", str(f.parallelism)]
    if from_savepoint:
        cmd[2:2] = ["-s", from_savepoint]
    # The job rebuilds exactly these settings from RECS_* variables (conf.settings.to_env).
    env = dict(os.environ, **to_env(settings), FLINK_HOME=str(flink_home()))
    local_conf = settings.stack.run_dir / "flink" / "conf"
    if local_conf.exists():
        env["FLINK_CONF_DIR"] = str(local_conf)
        env["FLINK_LOG_DIR"] = str(settings.stack.run_dir / "flink" / "log")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    out = res.stdout + res.stderr
    m = re.search(r"JobID ([0-9a-f]{32})", out)
    if res.returncode != 0 or not m:
        raise FlinkError(f"flink run failed ({res.returncode}):\n{out[-4000:]}")
    return m.group(1)


def _check_lane_artifact(settings: Settings) -> None:
    """In a version lane (conf/versions.py) the artifact must be that version: say so before submitting,
    rather than let the job fail in open() and restart."""
    meta = settings.model.artifact_dir / "metadata.json"
    try:
        found = json.loads(meta.read_text()).get("model_version")
    except (OSError, ValueError) as e:
        raise FlinkError(f"model version {settings.model.version}: cannot read {meta}: {e}") from None
    if found != settings.model.version:
        raise FlinkError(f"model version {settings.model.version}: {settings.model.artifact_dir} holds "
                         f"{found!r}; export the new model there (recs export --out) or fix [versions]")


def _rest(settings: Settings, path: str, method: str = "GET", body: dict | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{settings.flink.rest_url}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            payload = r.read()
    except OSError as e:
        raise FlinkError(f"Flink REST {settings.flink.rest_url}{path}: {e}") from e
    return json.loads(payload) if payload else None


def list_jobs(settings: Settings) -> list[dict[str, Any]]:
    return list(_rest(settings, "/jobs/overview")["jobs"])


@dataclass(frozen=True, slots=True)
class JobHealth:
    """What `recs jobs list` shows: a job that restarts is never silent."""

    job_id: str
    name: str
    state: str
    restarts: int
    last_exception: str | None  # first line of the most recent failure, None if it never failed
    last_exception_at: int | None  # epoch ms


def _cause(stacktrace: str) -> str | None:
    """The most telling line of a failure: the Python exception a worker raised (its traceback is
    inside the Java one), else the first line."""
    lines = [line.strip() for line in stacktrace.splitlines() if line.strip()]
    python = [line for line in lines if re.match(r"^[\w.]*(Error|Exception): ", line)
              and not line.startswith(("java.", "org.", "javax.", "Caused by"))]
    return (python[-1] if python else lines[0] if lines else None)


def job_health(settings: Settings, job_id: str) -> JobHealth:
    """State, restart count and last exception (``/exceptions``).

    The restart count is the larger of the job metric ``numRestarts`` and the highest execution
    attempt of any subtask. The metric alone is not enough: the REST metric store is refreshed every
    few seconds and forgets a job once it ends, so a job that restarts and fails between two
    refreshes would show 0. Attempt numbers live in the archived execution graph and survive."""
    job = _rest(settings, f"/jobs/{job_id}")
    restarts = 0
    for m in _rest(settings, f"/jobs/{job_id}/metrics?get=numRestarts") or []:
        restarts = int(float(m["value"]))
    for v in job.get("vertices") or []:
        detail = _rest(settings, f"/jobs/{job_id}/vertices/{v['id']}") or {}
        for sub in detail.get("subtasks") or []:
            restarts = max(restarts, int(sub.get("attempt", 0)))
    history = (_rest(settings, f"/jobs/{job_id}/exceptions") or {}).get("exceptionHistory") or {}
    entries = history.get("entries") or []
    last, at = None, None
    if entries:
        newest = max(entries, key=lambda e: e.get("timestamp", 0))
        last = _cause(newest.get("stacktrace") or "") or newest.get("exceptionName")
        at = newest.get("timestamp")
    return JobHealth(job_id, str(job["name"]), str(job["state"]), restarts, last, at)


@dataclass(frozen=True, slots=True)
class JobActivity:
    """The rest of what `recs jobs list` shows: is the job making progress, and is it checkpointing?"""

    uptime_s: float
    checkpoints: int                      # completed
    failed_checkpoints: int
    last_checkpoint_age_s: float | None   # None: none completed yet
    last_checkpoint_bytes: int | None
    records_in: int                       # every record the parser saw: valid, null, dead-lettered
    written: int                          # records the job wrote to KV (recs.*_written)
    dead_letters: int                     # parse and sink dead letters


def job_activity(settings: Settings, job_id: str) -> JobActivity:
    """Uptime and checkpoints (``/jobs/<id>``, ``/jobs/<id>/checkpoints``) and the job's own counters
    (group ``recs``, summed over subtasks). Counters read 0 once a job has ended: the metric store
    forgets it."""
    job = _rest(settings, f"/jobs/{job_id}")
    cp = _rest(settings, f"/jobs/{job_id}/checkpoints") or {}
    counts = cp.get("counts") or {}
    last = (cp.get("latest") or {}).get("completed") or None
    now_ms = time.time() * 1000
    m = metrics(settings, job_id) if job.get("state") == "RUNNING" else {}

    def total(pred: Any) -> int:
        return int(sum(v for k, v in m.items() if pred(k.split(".recs.", 1)[-1].removeprefix("recs."))))

    dead = total(lambda n: (n.startswith("dead_letters.") and n != "dead_letters.unexpected")
                 or n == "sink_dead_letters")
    return JobActivity(
        uptime_s=float(job.get("duration", 0)) / 1000,
        checkpoints=int(counts.get("completed", 0)), failed_checkpoints=int(counts.get("failed", 0)),
        last_checkpoint_age_s=(now_ms - float(last["latest_ack_timestamp"])) / 1000 if last else None,
        last_checkpoint_bytes=int(last.get("checkpointed_size", last.get("state_size", 0))) if last else None,
        records_in=total(lambda n: n in ("valid_records", "null_values") or
                         (n.startswith("dead_letters.") and n != "dead_letters.unexpected")),
        written=total(lambda n: n.endswith("_written")),
        dead_letters=dead)


def job_status(settings: Settings, job_id: str) -> str:
    return str(_rest(settings, f"/jobs/{job_id}")["state"])


def cancel(settings: Settings, job_id: str, wait_s: float = 0) -> str:
    """Cancel a job; with ``wait_s``, wait that long for it to end (its slots are free then).
    Returns the last state seen."""
    _rest(settings, f"/jobs/{job_id}?mode=cancel", method="PATCH")
    deadline = time.monotonic() + wait_s
    state = job_status(settings, job_id)
    while state not in ("CANCELED", "FAILED", "FINISHED") and time.monotonic() < deadline:
        time.sleep(0.2)
        state = job_status(settings, job_id)
    return state


def savepoint(settings: Settings, job_id: str, target_dir: Path, cancel_job: bool = False) -> str:
    """Trigger a savepoint; returns the trigger id (``wait_savepoint`` gives its location)."""
    res = _rest(settings, f"/jobs/{job_id}/savepoints", method="POST",
                body={"target-directory": target_dir.resolve().as_uri(), "cancel-job": cancel_job})
    return str(res["request-id"])


def wait_savepoint(settings: Settings, job_id: str, trigger: str, timeout_s: float = 120) -> str:
    """Wait for a triggered savepoint; returns its location (what ``submit(from_savepoint=)`` takes).
    Raises FlinkError with Flink's reason when it failed, or when it is not done within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        res = _rest(settings, f"/jobs/{job_id}/savepoints/{trigger}")
        if res["status"]["id"] == "COMPLETED":
            op = res.get("operation") or {}
            if "location" in op:
                return str(op["location"])
            raise FlinkError(f"savepoint of {job_id} failed: {_cause(str(op.get('failure-cause', op)))}")
        if time.monotonic() > deadline:
            raise FlinkError(f"savepoint of {job_id} not done after {timeout_s:.0f} s")
        time.sleep(0.5)


def metrics(settings: Settings, job_id: str, vertex_filter: str = "") -> dict[str, float]:
    """Aggregated user metrics (recs.*) of every vertex of a job whose name contains vertex_filter."""
    out: dict[str, float] = {}
    for v in _rest(settings, f"/jobs/{job_id}")["vertices"]:
        if vertex_filter not in v["name"]:
            continue
        names = [m["id"] for m in _rest(settings, f"/jobs/{job_id}/vertices/{v['id']}/subtasks/metrics")
                 if ".recs." in m["id"] or m["id"].startswith("recs.")]
        if not names:
            continue
        query = urllib.parse.quote(",".join(names), safe=",")
        values = _rest(settings, f"/jobs/{job_id}/vertices/{v['id']}/subtasks/metrics?get={query}")
        for m in values:
            out[m["id"]] = out.get(m["id"], 0.0) + float(m.get("sum", 0))
    return out
