"""The HTTP backend (``recs serve``): FastAPI over the read path.

    GET /recommendations/{user_id}?k=20  -> {"user_id", "source": "nrt"|"offline"|"trending",
                                             "model_version", "items": [{"item_id", "score"}], ...}
    GET /healthz                         -> 200 when the KV store and the index answer
    GET /metrics                         -> Prometheus text (read path + index client metrics)

Errors: k out of range -> 422; the KV store or (in phases 2, 3) the index unreachable -> 503 with
the reason. The endpoint is a plain ``def``: the read path is blocking I/O (Redis, gRPC), which
Starlette runs in its thread pool.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from index.ann import InvalidRequest
from index.client import IndexUnavailable
from recs.serving.read_path import ReadPath

log = logging.getLogger(__name__)


def create_app(read_path: ReadPath) -> FastAPI:
    app = FastAPI(title="recstream", version="1", docs_url=None, redoc_url=None)
    max_k = read_path.settings.max_k

    @app.get("/recommendations/{user_id}")
    def recommendations(user_id: str, k: int = Query(read_path.settings.default_k, ge=1, le=max_k)):
        try:
            # serialised here: FastAPI's generic encoder costs more than the whole index search
            return Response(json.dumps(read_path.recommend(user_id, k).as_dict()),
                            media_type="application/json")
        except InvalidRequest as e:
            raise HTTPException(422, str(e)) from None
        except IndexUnavailable as e:
            raise HTTPException(503, f"index unavailable: {e}") from None
        except Exception as e:
            import redis

            if isinstance(e, redis.RedisError):
                raise HTTPException(503, f"KV store unavailable: {e}") from None
            raise

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
