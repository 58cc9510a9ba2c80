"""The embedded local stack: a Kafka-protocol broker (Tansu), Redis and a Flink standalone cluster.

    make up      ==  recs stack up       start what is not running, wait until healthy, create topics
    make down    ==  recs stack down     stop everything, leave no process behind
                     recs stack status   one line per service; exit 1 if any is unhealthy

Each service listens where the clients in settings point (``kafka.bootstrap_servers``,
``redis.host/port``, ``flink.jobmanager_host/rest_port``), on loopback only: an address that is not
loopback means an external service, which the stack reports but never starts. Logs and pid files
live under ``stack.run_dir`` (one folder per service). Starting twice is harmless; a port held by
some other process is a clear error naming the port.

Binaries come from ``make setup`` (``stack.stack_dir``): ``bin/tansu``, ``bin/redis-server``; Flink
is the apache-flink package's own distribution (``pyflink/bin``), configured per run folder.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil

from conf.settings import RedisSettings, Settings

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------------------------- utils
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for tests that run a second stack)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _who_listens(port: int) -> str:
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                with contextlib.suppress(psutil.Error):
                    return f" (pid {conn.pid}: {psutil.Process(conn.pid).name()})"
    return ""


def _ensure_free(host: str, port: int, setting: str) -> None:
    if port_open(host, port):
        raise StackError(f"port {port} on {host} is already in use by another process{_who_listens(port)}; "
                         f"stop it or choose another port with {setting}")


def _wait(what: str, check: Callable[[], bool], timeout: float, proc_alive: Callable[[], bool],
          log_file: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not proc_alive():
            raise StackError(f"{what} exited during start-up; last log lines:\n{_tail(log_file)}")
        time.sleep(0.25)
    raise StackError(f"{what} not healthy after {timeout:.0f} s; last log lines:\n{_tail(log_file)}")


def _tail(path: Path, lines: int = 15) -> str:
    if path.is_dir():  # a folder of logs (Flink): the most recently written one
        logs = sorted(path.glob("*.log"), key=lambda f: f.stat().st_mtime)
        if not logs:
            return f"(no log in {path})"
        path = logs[-1]
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if psutil.pid_exists(pid) else None


def _terminate(pids: list[int], timeout: float = 10.0) -> None:
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


def _spawn(cmd: list[str], log_file: Path, pid_file: Path,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    pid_file.write_text(f"{proc.pid}\n")
    return proc


def _alive(pid: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
    return check


class _OneProcess:
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
        return _read_pid(self.pid_file)

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            _terminate([pid])
        self.pid_file.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- broker
class Broker(_OneProcess):
    """Tansu, a Kafka-protocol broker with memory storage: topics vanish when it stops."""

    name = "broker"
    managed: bool

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        servers = settings.kafka.bootstrap_servers.split(",")
        self.host, self.port = split_hostport(servers[0])
        self.managed = len(servers) == 1 and is_loopback(self.host)
        self.dir = settings.stack.run_dir / "broker"
        self.binary = settings.stack.stack_dir / "bin" / "tansu"

    @property
    def address(self) -> str:
        return self.s.kafka.bootstrap_servers

    def healthy(self) -> bool:
        if not port_open(self.host, self.port):
            return False
        try:
            from confluent_kafka.admin import AdminClient

            admin = AdminClient({**self.s.kafka.client_config(), "socket.timeout.ms": 1000})
            admin.list_topics(timeout=2)
            return True
        except Exception:  # noqa: BLE001 - any failure here simply means "not healthy yet"
            return False

    def start(self) -> None:
        if not self.binary.exists():
            raise StackError(f"{self.binary} is missing: run `make setup` first")
        _ensure_free(self.host, self.port, "RECS_KAFKA__BOOTSTRAP_SERVERS")
        url = f"tcp://{self.host}:{self.port}"
        proc = _spawn([str(self.binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                       "--storage-engine", "memory://tansu/"], self.log_file, self.pid_file)
        _wait("broker (tansu)", self.healthy, self.s.stack.ready_timeout_s, _alive(proc.pid), self.log_file)
        create_topics(self.s)

    def detail(self) -> str:
        try:
            from confluent_kafka.admin import AdminClient

            topics = AdminClient(self.s.kafka.client_config()).list_topics(timeout=2).topics
            return f"{len(topics)} topics"
        except Exception as e:  # noqa: BLE001 - status must report, not crash
            return f"error: {e}"


def create_topics(settings: Settings, names: list[str] | None = None) -> list[str]:
    """Create the topics in settings (with their partition counts); existing ones are left alone."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    topics = settings.kafka.topics
    admin = AdminClient(settings.kafka.client_config())
    names = names or topics.all_names()
    futures = admin.create_topics([NewTopic(n, num_partitions=topics.partitions_of(n),
                                            replication_factor=topics.replication_factor) for n in names])
    created = []
    for name, fut in futures.items():
        try:
            fut.result(timeout=settings.kafka.client_timeout_s)
            created.append(name)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise StackError(f"could not create topic {name}: {e}") from e
    return created


# --------------------------------------------------------------------------------------------- redis
class Redis(_OneProcess):
    name = "redis"
    managed: bool

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.host, self.port = settings.redis.host, settings.redis.port
        self.managed = is_loopback(self.host)
        self.dir = settings.stack.run_dir / "redis"
        self.binary = settings.stack.stack_dir / "bin" / "redis-server"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _client(self) -> Any:
        import redis

        pw = self.s.redis.password.get_secret_value() if self.s.redis.password else None
        return redis.Redis(host=self.host, port=self.port, password=pw, socket_timeout=1.0)

    def healthy(self) -> bool:
        try:
            return bool(self._client().ping())
        except Exception:  # noqa: BLE001 - "not healthy yet"
            return False

    def start(self) -> None:
        if not self.binary.exists():
            raise StackError(f"{self.binary} is missing: run `make setup` first")
        _ensure_free(self.host, self.port, "RECS_REDIS__PORT")
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [str(self.binary), "--bind", self.host, "--port", str(self.port), "--dir", str(self.dir),
               "--save", "", "--appendonly", "no", "--protected-mode", "yes"]
        if self.s.redis.password:
            cmd += ["--requirepass", self.s.redis.password.get_secret_value()]
        proc = _spawn(cmd, self.log_file, self.pid_file)
        _wait("redis", self.healthy, self.s.stack.ready_timeout_s, _alive(proc.pid), self.log_file)

    def detail(self) -> str:
        try:
            info = self._client().info("memory")
            return f"used_memory {info['used_memory_human']}"
        except Exception as e:  # noqa: BLE001
            return f"error: {e}"


# --------------------------------------------------------------------------------------------- flink
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
                            "memory": {"process": {"size": f.taskmanager_memory}}},
            "rest": {"address": self.host, "bind-address": self.host, "port": f.rest_port},
            "parallelism": {"default": f.parallelism},
            "python": {"executable": sys.executable, "client": {"executable": sys.executable}},
            "blob": {"server": {"port": "0"}},
        }
        _deep_update(cfg, overlay)
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
        _ensure_free(self.host, self.f.rest_port, "RECS_FLINK__REST_PORT")
        _ensure_free(self.host, self.f.rpc_port, "RECS_FLINK__RPC_PORT")
        self.write_config()
        (self.dir / "log").mkdir(parents=True, exist_ok=True)  # flink-daemon.sh does not create it
        for pid_file in self.dir.glob("*.pid"):  # stale entries make the scripts count old instances
            pid_file.unlink()
        self._script("jobmanager.sh", "start")
        self._script("taskmanager.sh", "start")
        _wait("flink cluster", self.healthy, self.f.startup_timeout_s, lambda: bool(self.pids()),
              self.dir / "log")

    def pids(self) -> list[int]:
        pids = []
        for pid_file in self.dir.glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids += [int(x) for x in pid_file.read_text().split() if psutil.pid_exists(int(x))]
        return pids

    def pid(self) -> int | None:
        pids = self.pids()
        return pids[0] if pids else None

    def stop(self) -> None:
        if self.pids():
            with contextlib.suppress(StackError, subprocess.TimeoutExpired):
                self._script("taskmanager.sh", "stop-all")
            with contextlib.suppress(StackError, subprocess.TimeoutExpired):
                self._script("jobmanager.sh", "stop-all")
        _terminate(self.pids())
        for pid_file in self.dir.glob("*.pid"):
            pid_file.unlink(missing_ok=True)

    def detail(self) -> str:
        o = self.overview()
        if not o:
            return "REST not answering"
        return (f"{o.get('taskmanagers')} taskmanager(s), {o.get('slots-available')}/{o.get('slots-total')} "
                f"slots free, {o.get('jobs-running')} job(s) running, flink {o.get('flink-version')}")


def _deep_update(base: dict[str, Any], overlay: dict[str, Any]) -> None:
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v


# --------------------------------------------------------------------------------------------- stack
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
        _terminate(self.leftovers(), timeout=2)

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


@contextlib.contextmanager
def temporary_redis(settings: Settings) -> Iterator[RedisSettings]:
    """A throwaway redis-server on a free loopback port in a temporary run folder, for benchmarks
    and tools (tests use the session fixtures in tests/conftest.py). Gone when the block ends."""
    import tempfile

    from conf.settings import with_overrides

    with tempfile.TemporaryDirectory(prefix="recs-redis-") as run_dir:
        s = with_overrides(settings, redis={"host": "127.0.0.1", "port": free_port()},
                           stack={"run_dir": run_dir})
        redis = Redis(s)
        redis.start()
        try:
            yield s.redis
        finally:
            redis.stop()
