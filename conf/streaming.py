"""Settings of the streaming jobs (conf/defaults.toml [user_embeddings], [item_index]; kept beside settings.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from conf.section import Section


class UserEmbeddingSettings(Section):
    """The streaming user-embedding job (jobs/user_embeddings.py, docs/streaming.md)."""

    udf: Literal["vectorized", "async"]
    reorder_slack: int = Field(ge=0)
    state_ttl_s: int = Field(ge=0)
    arrow_batch_size: int = Field(ge=1)
    max_batch: int = Field(ge=1)
    max_wait_ms: int = Field(ge=0)
    async_concurrency: int = Field(ge=1)
    item_cache_size: int = Field(ge=0)
    item_cache_ttl_s: float = Field(ge=0)
    trending_window_s: int = Field(ge=1)
    trending_slide_s: int = Field(ge=1)
    trending_top_k: int = Field(ge=1)
    trending_max_delay_ms: int = Field(ge=0)


class ItemIndexSettings(Section):
    """The streaming item-index job (jobs/item_index.py, docs/streaming.md)."""

    arrow_batch_size: int = Field(ge=1)
