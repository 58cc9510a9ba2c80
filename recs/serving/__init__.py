"""The backend read path: ``ReadPath`` (library), ``create_app`` (FastAPI), ``open_read_path``.

    rp = open_read_path(settings)        # the store and index client in settings
    rp.recommend("u1", k=20)
"""

from __future__ import annotations

from conf.settings import Settings
from recs.serving.read_path import ReadPath, Recommendation

__all__ = ["ReadPath", "Recommendation", "open_read_path"]


def open_read_path(settings: Settings) -> ReadPath:
    from index.client import GrpcIndexClient
    from recs.stores import open_store

    index = GrpcIndexClient(settings.index) if settings.serve.phase >= 2 else None
    return ReadPath(open_store(settings), index, settings.serve)
