"""The HTTP backend (``recs serve``): FastAPI over the read path.

    GET /recommendations/{user_id}?k=20  -> {"user_id", "source": "nrt"|"offline"|"trending",
                                             "model_version", "items": [{"item_id", "score"}],
                                             "fallbacks", "as_of_event_ts": ms | null}
    GET /healthz                         -> 200 when the KV store and the index answer
    GET /metrics                         -> Prometheus text (read path + index client metrics)
    GET /docs, /openapi.json             -> only when serve.docs is true (404 otherwise)

Errors: k out of range -> 422 (the caller's mistake). Anything that goes wrong on our side (the KV
store or the index down or slow, a malformed stored record, an index INVALID_ARGUMENT for a stored
embedding) is a counted fallback in the read path: 200 with ``fallbacks`` saying why, never a 4xx
that blames the caller. /healthz is the place that answers 503. The endpoint is a plain ``def``:
the read path is blocking I/O (Redis, gRPC), which Starlette runs in its thread pool.

``run(app, settings.serve)`` serves it with uvicorn and a request-head timeout: uvicorn has none
(its keep-alive timer stops at the first byte, so a client that sends half a header holds the
connection forever); ``HeaderTimeoutProtocol`` closes a connection whose request line and headers
are not complete ``serve.header_timeout_s`` after it opened or after its previous response.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from conf.settings import ServeSettings
from recs.serving.read_path import ReadPath

log = logging.getLogger(__name__)

HEADER_TIMEOUTS = Counter("recs_http_header_timeouts_total",
                          "Connections closed because the request head did not arrive in time")


def create_app(read_path: ReadPath) -> FastAPI:
    docs = read_path.settings.docs
    app = FastAPI(title="recstream", version="1", docs_url="/docs" if docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None)
    max_k = read_path.settings.max_k

    @app.get("/recommendations/{user_id}")
    def recommendations(user_id: str, k: int = Query(read_path.settings.default_k, ge=1, le=max_k)):
        # serialised here: FastAPI's generic encoder costs more than the whole index search
        return Response(json.dumps(read_path.recommend(user_id, k).as_dict()),
                        media_type="application/json")

    @app.get("/healthz")
    def healthz():
        try:
            read_path.store.get_users(["__healthz__"])
        except Exception as e:
            raise HTTPException(503, f"KV store: {e}") from None
        healthy = getattr(read_path.index, "healthy", None)
        if healthy is not None and not healthy():
            raise HTTPException(503, "index: no SERVING replica for some shard")
        return {"ok": True, "phase": read_path.settings.phase}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics():
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on the request head (slowloris guard).

    Armed when the connection opens and when the first byte of a request arrives (if not armed
    already, so trickling bytes never extends it); disarmed when the headers are complete. The
    idle time between requests stays uvicorn's ``timeout_keep_alive``.
    """

    header_timeout_s = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            HEADER_TIMEOUTS.inc()
            log.info("closing %s: no complete request head within %.1f s", self.client,
                     self.header_timeout_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        self._arm()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutProtocol]:
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": seconds})


def run(app: FastAPI, settings: ServeSettings, host: str | None = None, port: int | None = None) -> None:
    """Serve ``app`` (blocking) on serve.host:serve.port with the request-head timeout."""
    import uvicorn

    uvicorn.run(app, host=host or settings.host, port=port or settings.port, log_level="warning",
                access_log=False, http=header_timeout_protocol(settings.header_timeout_s))
