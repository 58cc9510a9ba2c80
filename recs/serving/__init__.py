"""The backend read path: ``ReadPath`` (library), ``create_app`` (FastAPI), ``open_read_path``.

    rp = open_read_path(settings)        # the store and index client of settings (serve.model_version's lane)
    rp.recommend("u1", k=20)
"""

from __future__ import annotations

from conf.settings import Settings
from recs.serving.read_path import ReadPath, Recommendation

__all__ = ["ReadPath", "Recommendation", "open_read_path"]


def open_read_path(settings: Settings) -> ReadPath:
    """The read path of the version lane ``serve.model_version`` names ("" = the settings as they are):
    its KV records and its index. That one setting switches a rollout (conf/versions.py)."""
    from conf.settings import for_version
    from index.client import GrpcIndexClient
    from recs.stores import open_store

    settings = for_version(settings, settings.serve.model_version)
    index = GrpcIndexClient(settings.index) if settings.serve.phase >= 2 else None
    return ReadPath(open_store(settings), index, settings.serve)
