"""Typed, frozen settings for every recstream process.

Precedence, highest first:
    1. keyword arguments to ``Settings(...)`` (tests, embedding code)
    2. environment variables ``RECS_<SECTION>__<FIELD>`` (e.g. ``RECS_KAFKA__BOOTSTRAP_SERVERS``)
    3. the TOML file named by ``RECS_CONFIG`` (per-environment or per-phase overrides)
    4. ``conf/defaults.toml`` (shipped defaults: the embedded local stack on 127.0.0.1)

The environment is read here and only here: every other module receives a ``Settings`` (or one of
its sections) as a constructor argument. Switching from the embedded stack to a Kafka cluster, an
Aerospike cluster or a remote Flink cluster is a settings change only, e.g.::

    RECS_KAFKA__BOOTSTRAP_SERVERS=kafka-1:9092,kafka-2:9092 \\
    RECS_KV__BACKEND=aerospike RECS_AEROSPIKE__HOSTS='["as-1:3000"]' \\
    RECS_FLINK__JOBMANAGER_HOST=flink-jm recs jobs submit user-embeddings
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from conf.section import Section
from conf.streaming import FlinkSettings, ItemIndexSettings, UserEmbeddingSettings
from conf.versions import VersionLane, lane_overrides

CONF_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = CONF_DIR.parent
DEFAULTS_FILE = CONF_DIR / "defaults.toml"


_Section = Section


_S = TypeVar("_S", bound=_Section)


class TopicSettings(_Section):
    """Topic names; partition counts are per topic (keys: user_id for clicks, item_id otherwise)."""

    clicks: str
    clicks_dlq: str
    listings: str
    listings_dlq: str
    item_embeddings: str
    partitions: dict[str, int]
    replication_factor: int = Field(ge=1)
    # Message keys (a contract field): decide partitioning, hence per-key ordering.
    click_key: Literal["user_id", "item_id", "session_id"]
    listing_key: Literal["item_id"]

    def all_names(self) -> list[str]:
        return [self.clicks, self.clicks_dlq, self.listings, self.listings_dlq, self.item_embeddings]

    def partitions_of(self, topic: str) -> int:
        return self.partitions.get(topic, 1)


class KafkaSettings(_Section):
    bootstrap_servers: str
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    client_timeout_s: float = Field(gt=0)
    fetch_max_wait_ms: int = Field(ge=0)
    producer_linger_ms: int = Field(ge=0)
    topics: TopicSettings

    def client_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka-style config (confluent-kafka); secrets revealed only here, at the edge."""
        cfg: dict[str, str | int | float | bool] = {"bootstrap.servers": self.bootstrap_servers,
                                                    "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            cfg["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            cfg["sasl.username"] = self.sasl_username
        if self.sasl_password:
            cfg["sasl.password"] = self.sasl_password.get_secret_value()
        return cfg

    def java_properties(self) -> dict[str, str]:
        """The same security settings as Java Kafka client properties (the Flink connector)."""
        props: dict[str, str] = {"security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            props["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username and self.sasl_password:
            props["sasl.jaas.config"] = (
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="{self.sasl_username}" password="{self.sasl_password.get_secret_value()}";')
        return props


class RedisSettings(_Section):
    host: str
    port: int = Field(gt=0, lt=65536)
    db: int = Field(ge=0)
    password: SecretStr | None = None
    socket_timeout_s: float = Field(gt=0)


class AerospikeSettings(_Section):
    hosts: list[str]
    namespace: str
    set_name: str
    user: str | None = None
    password: SecretStr | None = None
    timeout_ms: int = Field(gt=0)


class KVSettings(_Section):
    backend: Literal["redis", "aerospike"]
    key_prefix: str
    user_ttl_s: int = Field(ge=0)
    embedding_dtype: Literal["float32", "float16"]


class ContractSettings(_Section):
    """Limits the event parser enforces; see recs/contracts.py."""

    max_record_bytes: int = Field(gt=0)
    max_id_chars: int = Field(gt=0)
    max_text_chars: int = Field(gt=0)
    max_attributes: int = Field(ge=0)
    min_ts_ms: int = Field(ge=0)
    max_future_skew_ms: int = Field(ge=0)


class StackSettings(_Section):
    """Where `make setup` puts binaries/jars and where `make up` keeps logs and pid files."""

    stack_dir: Path
    run_dir: Path
    ready_timeout_s: float = Field(gt=0)


class DataSettings(_Section):
    data_dir: Path
    seed: int


class ModelSettings(_Section):
    """The two-tower model: architecture, training and where artifacts go (models/, docs/model.md).

    Every default is explained in conf/defaults.toml next to its value.
    """

    artifact_dir: Path
    checkpoint_dir: Path
    dim: int = Field(ge=8)
    max_len: int = Field(ge=1)
    user_encoder: Literal["mean", "attention"]
    vocab_size: int = Field(ge=100)
    max_tokens: int = Field(ge=4)
    hidden: int = Field(ge=8)
    heads: int = Field(ge=1)
    layers: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    temperature: float = Field(gt=0)
    logq_correction: bool
    batch_size: int = Field(ge=2)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    max_epochs: int = Field(ge=1)
    patience: int = Field(ge=1)
    max_train_minutes: float = Field(gt=0)
    seed: int
    threads: int = Field(ge=1)
    version: str = ""   # "" = whatever artifact_dir holds; set by a version lane (conf/versions.py): the artifact
                        # must be this version, and the jobs' consumer groups carry it


class IndexSettings(_Section):
    """The ANN index service (index/): FAISS kind and knobs, gRPC server limits, snapshots, feeder.

    Every default is explained in conf/defaults.toml next to its value.
    """

    kind: Literal["Flat", "HNSW", "IVFFlat", "IVFPQ"]
    dim: int = Field(ge=2)
    device: Literal["auto", "cpu", "gpu"]
    omp_threads: int = Field(ge=1)
    malloc_arenas: int = Field(ge=0)
    hnsw_m: int = Field(ge=4)
    hnsw_storage: Literal["flat", "fp16"]
    hnsw_reorder: bool
    ef_construction: int = Field(ge=8)
    ef_search: int = Field(ge=1)
    ivf_nlist: int = Field(ge=1)
    nprobe: int = Field(ge=1)
    pq_m: int = Field(ge=1)
    pq_nbits: int = Field(ge=4, le=16)
    train_min: int = Field(ge=1)
    write_chunk: int = Field(ge=1)
    compaction_dead_ratio: float = Field(gt=0, le=1)
    compaction_min_dead: int = Field(ge=1)
    model_version: str
    host: str
    port: int = Field(ge=0, lt=65536)
    server_threads: int = Field(ge=1)
    max_message_bytes: int = Field(gt=1024)
    max_k: int = Field(ge=1)
    max_batch: int = Field(ge=1)
    max_categories: int = Field(ge=1)
    max_ef_search: int = Field(ge=1)
    max_nprobe: int = Field(ge=1)
    max_search_work: int = Field(ge=1)
    lock_work: int = Field(ge=1)
    heavy_requests: int = Field(ge=1)
    filter_exact_rows: int = Field(ge=0)
    filter_boost: float = Field(ge=1)
    filter_seeds: int = Field(ge=0)
    filter_widen: float = Field(gt=0)
    max_id_chars: int | None = Field(default=None, ge=1)  # None: contracts.max_id_chars (filled below)
    metrics_port: int = Field(ge=0, lt=65536)
    snapshot_dir: Path
    snapshot_interval_s: float = Field(ge=0)
    replica_id: str
    shard_index: int = Field(ge=0)
    shard_count: int = Field(ge=1)
    feeder_batch: int = Field(ge=1)
    feeder_poll_ms: int = Field(ge=1)
    shards: list[list[str]]
    client_deadline_ms: int = Field(gt=0)
    client_retries: int = Field(ge=0)
    client_backoff_ms: int = Field(ge=0)


class ServeSettings(_Section):
    """The backend read path (recs/serving/): HTTP bind address, K, over-fetch, phase.

    The index addresses it calls are ``index.shards`` (one list for every index client).
    """

    host: str
    port: int = Field(ge=0, lt=65536)
    phase: int = Field(ge=1, le=3)  # int, not Literal: env vars ("3") must round-trip
    default_k: int = Field(ge=1)
    max_k: int = Field(ge=1)
    overfetch: float = Field(ge=1)
    extra_fetch: int = Field(ge=0)
    index_deadline_ms: int = Field(gt=0)
    trending_size: int = Field(ge=1)
    header_timeout_s: float = Field(gt=0)
    docs: bool
    model_version: str = ""   # the switch: the version lane ([versions]) the read path serves; "" = live settings


class RoleThreads(_Section):
    """Thread counts of one process role (conf/defaults.toml [threads])."""

    ort_intra_op: int = Field(ge=1)
    ort_inter_op: int = Field(ge=1)
    faiss_omp: int = Field(ge=1)


class ThreadSettings(_Section):
    """Threads per process role: the Flink worker, the index service, batch jobs."""

    flink_worker: RoleThreads
    index_service: RoleThreads
    batch: RoleThreads


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECS_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        toml_file=[DEFAULTS_FILE],
    )

    kafka: KafkaSettings
    redis: RedisSettings
    aerospike: AerospikeSettings
    kv: KVSettings
    flink: FlinkSettings
    contracts: ContractSettings
    stack: StackSettings
    data: DataSettings
    index: IndexSettings
    serve: ServeSettings
    model: ModelSettings
    threads: ThreadSettings
    user_embeddings: UserEmbeddingSettings
    item_index: ItemIndexSettings
    versions: dict[str, VersionLane] = {}

    @model_validator(mode="after")
    def _index_id_limit(self) -> Settings:
        # The index enforces the contract's id limit: one figure, kept in [contracts].
        if self.index.max_id_chars is None:
            object.__setattr__(self.index, "max_id_chars", self.contracts.max_id_chars)
        return self

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        # Relative paths are relative to the project root, not to the caller's cwd.
        for section in (self.stack, self.data, self.model, self.index):
            for name, value in section:
                if isinstance(value, Path) and not value.is_absolute():
                    object.__setattr__(section, name, PROJECT_ROOT / value)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = [DEFAULTS_FILE]
        extra = os.environ.get("RECS_CONFIG")
        if extra:
            path = Path(extra)
            if not path.is_file():
                raise FileNotFoundError(f"RECS_CONFIG={extra} is not a file")
            files.append(path)
        # Later TOML files override earlier ones, key by key (deep merge).
        toml = TomlConfigSettingsSource(settings_cls, toml_file=files, deep_merge=True)
        return (init_settings, env_settings, toml)


def load_settings(**overrides: object) -> Settings:
    """Build the settings once, at the edge of a process (CLI, job main, test fixture)."""
    return Settings(**overrides)  # type: ignore[arg-type]


def to_env(settings: Settings) -> dict[str, str]:
    """The settings as RECS_* environment variables, so a child process (a Flink job submitted with
    `flink run`, a server) rebuilds exactly these settings with load_settings(). Secrets included:
    the variables go to the child's environment only."""
    env: dict[str, str] = {}
    for section_name, section in settings:
        if isinstance(section, dict):       # [versions]: one JSON variable
            env[f"RECS_{section_name.upper()}"] = json.dumps({k: v.model_dump(mode="json") for k, v in section.items()})
            continue
        for name, value in section:
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, BaseModel):
                text = value.model_dump_json()
            elif isinstance(value, str | Path):
                text = str(value)
            else:
                text = json.dumps(value)
            env[f"RECS_{section_name.upper()}__{name.upper()}"] = text
    return env


def override(section: _S, fields: Mapping[str, object]) -> _S:
    """A copy of one settings section with some fields replaced, validated like the original,
    e.g. override(settings.index, {"kind": "Flat"}). (``with_overrides`` does the same for the whole
    settings, where a change may need the cross-section checks.)"""
    return type(section).model_validate({**section.model_dump(), **fields})


def with_overrides(settings: Settings, **sections: dict[str, object]) -> Settings:
    """A copy with some fields replaced and validated, e.g. with_overrides(s, redis={"port": 7000})."""
    data = settings.model_dump()
    for section, fields in sections.items():
        data[section].update(fields)
    return Settings.model_validate(data)


def for_version(settings: Settings, version: str) -> Settings:
    """``settings`` moved into the lane of model ``version`` (conf/versions.py); "" = unchanged."""
    return with_overrides(settings, **lane_overrides(settings, version)) if version else settings
