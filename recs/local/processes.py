"""Process utilities of the local stack: addresses, ports, spawning a service, waiting until it is
healthy, stopping it (and whatever it left behind). ``Service`` is what the stack needs of each one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil


class StackError(RuntimeError):
    """A service could not be started or is misconfigured; the message says what to do."""


class Service(Protocol):
    """What the stack needs of each service (Broker, Redis, Flink below)."""

    name: str
    managed: bool  # False: an external address, reported but never started

    @property
    def address(self) -> str: ...
    def healthy(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def pid(self) -> int | None: ...
    def detail(self) -> str: ...


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    state: str  # healthy | down | unhealthy | external
    pid: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state in ("healthy", "external")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for tests that run a second stack)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def who_listens(port: int) -> str:
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                with contextlib.suppress(psutil.Error):
                    return f" (pid {conn.pid}: {psutil.Process(conn.pid).name()})"
    return ""


def ensure_free(host: str, port: int, setting: str) -> None:
    if port_open(host, port):
        raise StackError(f"port {port} on {host} is already in use by another process{who_listens(port)}; "
                         f"stop it or choose another port with {setting}")


def wait_healthy(what: str, check: Callable[[], bool], timeout: float, procalive: Callable[[], bool],
          log_file: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not procalive():
            raise StackError(f"{what} exited during start-up; last log lines:\n{tail(log_file)}")
        time.sleep(0.25)
    raise StackError(f"{what} not healthy after {timeout:.0f} s; last log lines:\n{tail(log_file)}")


def tail(path: Path, lines: int = 15) -> str:
    if path.is_dir():  # a folder of logs (Flink): the most recently written one
        logs = sorted(path.glob("*.log"), key=lambda f: f.stat().st_mtime)
        if not logs:
            return f"(no log in {path})"
        path = logs[-1]
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if psutil.pid_exists(pid) else None


def terminate(pids: list[int], timeout: float = 10.0) -> None:
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            p.terminate()
            procs.append(p)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def spawn(cmd: list[str], log_file: Path, pid_file: Path,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    pid_file.write_text(f"{proc.pid}\n")
    return proc


def alive(pid: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
    return check


class OneProcess:
    """A service that is one process of ours, tracked by ``<dir>/<name>.pid``."""

    name: str
    dir: Path

    @property
    def pid_file(self) -> Path:
        return self.dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            terminate([pid])
        self.pid_file.unlink(missing_ok=True)

