"""HTTP hardening (issue 8): /openapi.json only with docs on; a request head must arrive within
``serve.header_timeout_s`` (slowloris), on a real uvicorn server over a real socket."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from fastapi.testclient import TestClient

from recs.local.processes import free_port
from recs.serving.app import create_app, header_timeout_protocol
from recs.serving.read_path import ReadPath

TIMEOUT_S = 0.5


@pytest.mark.parametrize("docs", [False, True])
def test_openapi_and_docs_only_when_enabled(store, index_client, serve_settings, docs):
    app = TestClient(create_app(ReadPath(store, index_client, serve_settings.model_copy(
        update={"docs": docs}))))
    assert app.get("/openapi.json").status_code == (200 if docs else 404)
    assert app.get("/docs").status_code == (200 if docs else 404)
    assert app.get("/healthz").status_code == 200


@pytest.fixture
def http_server(store, index_client, serve_settings):
    """A real uvicorn server in a thread, with the head timeout at TIMEOUT_S -> its port."""
    port = free_port()
    config = uvicorn.Config(create_app(ReadPath(store, index_client, serve_settings)), host="127.0.0.1",
                            port=port, log_level="warning", access_log=False,
                            http=header_timeout_protocol(TIMEOUT_S), timeout_keep_alive=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(10)


def closed_after(sock: socket.socket, limit_s: float) -> float | None:
    """Seconds until the server closed ``sock`` (recv gives b""), None if still open at ``limit_s``."""
    t0 = time.monotonic()
    sock.settimeout(limit_s)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    return time.monotonic() - t0


def test_partial_request_head_is_closed_within_the_timeout(http_server):
    """Slowloris: a request line and one header, then a byte every 0.2 s; closed at TIMEOUT_S."""
    with socket.create_connection(("127.0.0.1", http_server)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        for _ in range(3):                       # trickling bytes does not extend the deadline
            time.sleep(0.1)
            try:
                s.sendall(b"X")
            except OSError:
                break
        waited = closed_after(s, 5.0)
        assert waited is not None, "a half-sent request head held the connection for 5 s"
        assert time.monotonic() - t0 < TIMEOUT_S + 1.0


def test_silent_connection_is_closed_and_full_requests_still_work(http_server):
    with socket.create_connection(("127.0.0.1", http_server)) as s:   # connects, never sends
        assert closed_after(s, 5.0) is not None
    with socket.create_connection(("127.0.0.1", http_server)) as s:   # keep-alive: two requests,
        for _ in range(2):                                            # a pause longer than the
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")    # head timeout between them
            s.settimeout(5)
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            time.sleep(TIMEOUT_S * 2)
