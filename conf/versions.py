"""Model versions rolled out side by side: the lane each new version owns.

    [versions."tt-0123abcd4567"]                    # conf/defaults.toml or a RECS_CONFIG file
    artifact_dir = "artifacts/model-tt-0123abcd4567"
    shards = [["127.0.0.1:50061"]]                  # the new version's own index service

    s2 = for_version(settings, "tt-0123abcd4567")   # (conf.settings) the same settings, moved into the lane

The settings as written are the live lane. A lane named after a model version (the artifact's
``model_version``) owns everything a version's vectors live in, so filling it never touches the
live one (ARCHITECTURE.md invariant 1: a user vector is only compared with items of its version):

- its artifact (``model.artifact_dir``; jobs refuse an artifact of another version, ``model.version``);
- its KV records: ``kv.key_prefix`` + ``"<version>:"`` (users, items, trending), unless given;
- its item_embeddings topic: ``"<topics.item_embeddings>.<version>"``, unless given;
- its index service (``shards``), which accepts only that version (``index.model_version``);
- its Kafka consumer groups (``model.version`` suffixes the jobs' group ids).

Clicks and listings are shared: both lanes' jobs read the same topics. The read path serves the
lane named by ``serve.model_version`` ("" = the live settings): that one setting is the switch.
Runbook: docs/operations.md "Rolling out a new model version".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from conf.section import Section

if TYPE_CHECKING:
    from conf.settings import Settings

# A version names topics, consumer groups and key prefixes: keep it to what all of them accept.
VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class VersionLane(Section):
    """What one model version owns beside the live one (every field but the first two derived)."""

    artifact_dir: Path
    shards: list[list[str]] = Field(min_length=1)   # the version's index service: shards of replicas
    key_prefix: str | None = None                   # default: kv.key_prefix + "<version>:"
    item_embeddings: str | None = None              # default: topics.item_embeddings + ".<version>"
    metrics_port: int | None = Field(default=None, ge=0, lt=65536)  # its index's /metrics; default index.metrics_port
                                                    # (give another when it shares a host with the live index)


class UnknownVersion(ValueError):
    pass


def lane_overrides(settings: Settings, version: str) -> dict[str, dict[str, object]]:
    """The settings fields that move ``settings`` into the lane of ``version`` (for ``with_overrides``)."""
    if not VERSION_NAME.match(version):
        raise UnknownVersion(f"model version {version!r}: expected letters, digits, '.', '_' or '-' (at most 64)")
    lane = settings.versions.get(version)
    if lane is None:
        known = ", ".join(sorted(settings.versions)) or "none"
        raise UnknownVersion(f"model version {version!r} has no lane in [versions] (known: {known}); "
                             f"see docs/operations.md 'Rolling out a new model version'")
    topics = settings.kafka.topics
    emb = lane.item_embeddings or f"{topics.item_embeddings}.{version}"
    host, _, port = lane.shards[0][0].rpartition(":")
    return {
        "model": {"artifact_dir": lane.artifact_dir, "version": version},
        "kv": {"key_prefix": lane.key_prefix if lane.key_prefix is not None
               else f"{settings.kv.key_prefix}{version}:"},
        "kafka": {"topics": {**topics.model_dump(), "item_embeddings": emb,
                             "partitions": {**topics.partitions, emb: topics.partitions_of(topics.item_embeddings)}}},
        "index": {"shards": lane.shards, "model_version": version, "host": host or settings.index.host,
                  "port": int(port) if port.isdigit() else settings.index.port,
                  "replica_id": f"{settings.index.replica_id}.{version}",
                  "metrics_port": settings.index.metrics_port if lane.metrics_port is None else lane.metrics_port},
    }
