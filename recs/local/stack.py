"""The embedded local stack: a Kafka-protocol broker (Tansu), Redis and a Flink standalone cluster.

    make up      ==  recs stack up       start what is not running, wait until healthy, create topics
    make down    ==  recs stack down     stop everything, leave no process behind
                     recs stack status   one line per service; exit 1 if any is unhealthy

Each service listens where the clients in settings point (``kafka.bootstrap_servers``,
``redis.host/port``, ``flink.jobmanager_host/rest_port``), on loopback only: an address that is not
loopback means an external service, which the stack reports but never starts. Logs and pid files
live under ``stack.run_dir`` (one folder per service). Starting twice is harmless; a port held by
some other process is a clear error naming the port.

The parts: ``processes`` (ports, spawn, wait, stop), ``broker``, ``redis_server``,
``flink_cluster``; this module starts, stops and reports them in order.

Binaries come from ``make setup`` (``stack.stack_dir``): ``bin/tansu``, ``bin/redis-server``; Flink
is the apache-flink package's own distribution (``pyflink/bin``), configured per run folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

import psutil

from conf.settings import Settings
from recs.local.broker import Broker, create_topics
from recs.local.flink_cluster import Flink
from recs.local.processes import Service, ServiceStatus, StackError, terminate
from recs.local.redis_server import Redis

log = logging.getLogger(__name__)


class Stack:
    def __init__(self, settings: Settings, services: tuple[str, ...] = ("broker", "redis", "flink")) -> None:
        self.settings = settings
        known: dict[str, type[Broker] | type[Redis] | type[Flink]] = {"broker": Broker, "redis": Redis,
                                                                      "flink": Flink}
        unknown = set(services) - set(known)
        if unknown:
            raise StackError(f"unknown services {sorted(unknown)}; known: {sorted(known)}")
        self.services: list[Service] = [known[name](settings) for name in services]

    def up(self) -> list[ServiceStatus]:
        for svc in self.services:
            if not svc.managed:
                log.info("%s at %s is external: not started here", svc.name, svc.address)
                continue
            if svc.pid() and svc.healthy():
                log.info("%s already running at %s", svc.name, svc.address)
                if isinstance(svc, Broker):
                    create_topics(self.settings)
                continue
            if svc.pid():  # our process exists but is not healthy: restart it cleanly
                svc.stop()
            log.info("starting %s at %s", svc.name, svc.address)
            svc.start()
        return self.status()

    def down(self) -> list[int]:
        """Stop every service; return the pids of anything left behind (should be empty)."""
        for svc in reversed(self.services):
            if svc.managed:
                svc.stop()
        return self.leftovers()

    def leftovers(self) -> list[int]:
        """Processes of this run folder still alive: pid files, their children (e.g. the Python
        workers of the TaskManager), and anything whose command line mentions the run folder."""
        run_dir = self.settings.stack.run_dir
        me = os.getpid()
        roots: set[int] = set()
        for pid_file in run_dir.glob("*/*.pid"):
            with contextlib.suppress(OSError, ValueError):
                roots.update(int(x) for x in pid_file.read_text().split())
        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if p.info["pid"] != me and any(str(run_dir) in part for part in (p.info["cmdline"] or [])):
                    roots.add(p.info["pid"])
        found: set[int] = set()
        for pid in roots:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.add(pid)
                    found.update(c.pid for c in proc.children(recursive=True))
        return sorted(found)

    def kill_leftovers(self) -> None:
        for pid in self.leftovers():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        terminate(self.leftovers(), timeout=2)

    def status(self) -> list[ServiceStatus]:
        out = []
        for svc in self.services:
            if not svc.managed:
                out.append(ServiceStatus(svc.name, svc.address, "external"))
                continue
            pid = svc.pid()
            healthy = svc.healthy()
            state = "healthy" if healthy else ("unhealthy" if pid else "down")
            out.append(ServiceStatus(svc.name, svc.address, state, pid, svc.detail() if healthy else ""))
        return out

