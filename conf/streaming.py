"""Settings of the streaming jobs (conf/defaults.toml [flink], [user_embeddings], [item_index]; kept beside
settings.py, which gathers them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from conf.section import Section


class FlinkSettings(Section):
    """Where jobs are submitted and how the embedded standalone cluster is sized."""

    jobmanager_host: str
    rest_port: int = Field(gt=0, lt=65536)
    rpc_port: int = Field(gt=0, lt=65536)
    taskmanager_slots: int = Field(ge=1)
    taskmanager_memory: str
    # Share of the TaskManager's Flink memory that is managed (off-heap): RocksDB's cache and write
    # buffers; the heap keeps the rest. Python workers draw none (user_embeddings.worker_per_operator).
    managed_memory_fraction: float = Field(ge=0, lt=1)
    jobmanager_memory: str
    parallelism: int = Field(ge=1)
    python_execution_mode: Literal["process", "thread"]
    bundle_time_ms: int = Field(ge=1)
    bundle_size: int = Field(ge=1)
    checkpoint_interval_ms: int = Field(ge=0)
    # Where keyed state lives: "rocksdb" (serialized, off-heap, incremental checkpoints) or "hashmap"
    # (Java objects on the heap, whole state written at every checkpoint).
    state_backend: Literal["rocksdb", "hashmap"]
    checkpoint_dir: str  # a path (relative: to the project root) or a URI every TaskManager reaches
    source_start_ms: int = Field(ge=0)  # 0: the job's committed offsets; > 0: records from this time on
    # A bounded run over a range of the topic (`recs replay`): "partition:0,offset:42;partition:1,offset:7"
    # to start at and to stop before; empty = the stream as above. A bounded run commits no offsets.
    source_offsets: str = ""
    source_stop_offsets: str = ""
    startup_timeout_s: float = Field(gt=0)
    # Restart strategy every job is submitted with (jobs/flink_env.py): exponential delay, bounded.
    restart_attempts: int = Field(ge=0)
    restart_initial_delay_ms: int = Field(gt=0)
    restart_max_delay_ms: int = Field(gt=0)
    # Sinks (udfs/sinks.py): transient errors are retried with doubling backoff, bounded.
    sink_retries: int = Field(ge=0)
    sink_backoff_ms: int = Field(ge=0)
    sink_max_backoff_ms: int = Field(ge=0)

    @property
    def rest_url(self) -> str:
        return f"http://{self.jobmanager_host}:{self.rest_port}"


class UserEmbeddingSettings(Section):
    """The streaming user-embedding job (jobs/user_embeddings.py, docs/streaming.md)."""

    udf: Literal["vectorized", "async"]
    tower_task: bool   # the user tower in its own task (jobs/user_embeddings.py build)
    last_n_state: Literal["keyed", "over"]   # where each user's recent clicks live (jobs/user_embeddings.py build)
    reorder_slack: int = Field(ge=0)
    state_ttl_s: int = Field(ge=0)
    arrow_batch_size: int = Field(ge=1)
    worker_per_operator: bool
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
