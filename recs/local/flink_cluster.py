"""The Flink standalone cluster of the local stack (one JobManager, one TaskManager), configured
per run folder from the apache-flink package's own distribution.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from conf.settings import Settings
from recs.local.processes import StackError, ensure_free, is_loopback, terminate, wait_healthy


def flink_home() -> Path:
    import pyflink

    return Path(pyflink.__file__).resolve().parent


class Flink:
    """A standalone cluster (one JobManager, one TaskManager) from the apache-flink package's scripts."""

    name = "flink"
    managed: bool

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.f = settings.flink
        self.host = self.f.jobmanager_host
        self.managed = is_loopback(self.host)
        self.dir = settings.stack.run_dir / "flink"

    @property
    def address(self) -> str:
        return self.f.rest_url

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(FLINK_HOME=str(flink_home()), FLINK_CONF_DIR=str(self.dir / "conf"),
                   FLINK_LOG_DIR=str(self.dir / "log"), FLINK_PID_DIR=str(self.dir))
        # The Python workers must run the project's interpreter (DEPENDENCIES.md).
        env["PYFLINK_PYTHON"] = sys.executable
        return env

    def write_config(self) -> Path:
        import yaml

        conf_dir = self.dir / "conf"
        conf_dir.mkdir(parents=True, exist_ok=True)
        src = flink_home() / "conf"
        for path in src.iterdir():
            if path.name != "config.yaml":
                shutil.copy(path, conf_dir / path.name)
        cfg = yaml.safe_load((src / "config.yaml").read_text())
        f = self.f
        overlay = {
            "jobmanager": {"bind-host": self.host, "rpc": {"address": self.host, "port": f.rpc_port},
                           "memory": {"process": {"size": f.jobmanager_memory}}},
            "taskmanager": {"bind-host": self.host, "host": self.host,
                            "numberOfTaskSlots": f.taskmanager_slots,
                            "memory": {"process": {"size": f.taskmanager_memory},
                                       "managed": {"fraction": f.managed_memory_fraction}}},
            "rest": {"address": self.host, "bind-address": self.host, "port": f.rest_port},
            "parallelism": {"default": f.parallelism},
            "python": {"executable": sys.executable, "client": {"executable": sys.executable}},
            "blob": {"server": {"port": "0"}},
        }
        deep_update(cfg, overlay)
        (conf_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        (conf_dir / "masters").write_text(f"{self.host}:{f.rest_port}\n")
        (conf_dir / "workers").write_text(f"{self.host}\n")
        return conf_dir

    def overview(self) -> dict[str, Any] | None:
        import json
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.f.rest_url}/overview", timeout=1.0) as r:
                return json.loads(r.read())
        except Exception:  # noqa: BLE001 - "not up yet"
            return None

    def healthy(self) -> bool:
        o = self.overview()
        return bool(o and o.get("taskmanagers", 0) >= 1 and o.get("slots-total", 0) >= 1)

    def _script(self, script: str, *args: str) -> None:
        cmd = [str(flink_home() / "bin" / script), *args]
        res = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise StackError(f"{script} {' '.join(args)} failed ({res.returncode}): {res.stderr or res.stdout}")

    def start(self) -> None:
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise StackError("Flink needs Java 17: install it (apt-get install openjdk-17-jre-headless) "
                             "or set JAVA_HOME")
        ensure_free(self.host, self.f.rest_port, "RECS_FLINK__REST_PORT")
        ensure_free(self.host, self.f.rpc_port, "RECS_FLINK__RPC_PORT")
        self.write_config()
        (self.dir / "log").mkdir(parents=True, exist_ok=True)  # flink-daemon.sh does not create it
        for pid_file in self.dir.glob("*.pid"):  # stale entries make the scripts count old instances
            pid_file.unlink()
        self._script("jobmanager.sh", "start")
        self._script("taskmanager.sh", "start")
        wait_healthy("flink cluster", self.healthy, self.f.startup_timeout_s, lambda: bool(self.pids()),
              self.dir / "log")

    def pids(self, pattern: str = "*.pid") -> list[int]:
        """PIDs of this cluster's live processes whose pid file matches ``pattern``."""
        pids = []
        for pid_file in self.dir.glob(pattern):
            with contextlib.suppress(OSError, ValueError):
                pids += [int(x) for x in pid_file.read_text().split() if psutil.pid_exists(int(x))]
        return pids

    def pid(self) -> int | None:
        pids = self.pids()
        return pids[0] if pids else None

    def taskmanager_pids(self) -> list[int]:
        """PIDs of this cluster's TaskManagers (pid file ``flink-<user>-taskexecutor.pid``)."""
        return self.pids("*taskexecutor*.pid")

    def kill_taskmanager(self) -> list[int]:
        """SIGKILL every TaskManager and its Python workers (a machine lost: no shutdown hook runs, and
        no worker outlives it); returns the TaskManagers' PIDs."""
        pids = self.taskmanager_pids()
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                tm = psutil.Process(pid)
                for proc in [tm, *tm.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        proc.kill()
        for pid_file in self.dir.glob("*taskexecutor*.pid"):
            pid_file.unlink(missing_ok=True)
        return pids

    def start_taskmanager(self) -> None:
        self._script("taskmanager.sh", "start")
        wait_healthy("flink taskmanager", self.healthy, self.f.startup_timeout_s, lambda: bool(self.pids()),
                     self.dir / "log")

    def stop(self) -> None:
        if self.pids():
            with contextlib.suppress(StackError, subprocess.TimeoutExpired):
                self._script("taskmanager.sh", "stop-all")
            with contextlib.suppress(StackError, subprocess.TimeoutExpired):
                self._script("jobmanager.sh", "stop-all")
        terminate(self.pids())
        for pid_file in self.dir.glob("*.pid"):
            pid_file.unlink(missing_ok=True)

    def detail(self) -> str:
        o = self.overview()
        if not o:
            return "REST not answering"
        return (f"{o.get('taskmanagers')} taskmanager(s), {o.get('slots-available')}/{o.get('slots-total')} "
                f"slots free, {o.get('jobs-running')} job(s) running, flink {o.get('flink-version')}")


def deep_update(base: dict[str, Any], overlay: dict[str, Any]) -> None:
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
