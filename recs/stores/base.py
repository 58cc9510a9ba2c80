"""The KV layout and the ``EmbeddingStore`` protocol every backend implements.

Keys (``kv.key_prefix`` in front of each):

    user:{user_id}   UserRecord   the user embedding, last-N clicked item ids, model_version, event_ts
    item:{item_id}   ItemVector   an item-tower vector (read in batches by the user-embedding job);
                                  a removed item is kept as a tombstone (no vector) so an older write
                                  cannot bring it back
    recs:{user_id}   RecsList     a precomputed top-K list (phase 1, cold start)
    trending         RecsList     the trending list (user_id "" ), cold start of last resort

The event-time rule (ARCHITECTURE.md invariant 2): every record carries ``event_ts``; a write whose
``event_ts`` is older than the stored one is refused, atomically in the store (a Lua script in Redis,
a filter expression in Aerospike), so two writers racing can never let the older one win. An equal
``event_ts`` replaces the record: replaying a topic writes the same record again (idempotent).

Embeddings are stored as float16 or float32 bytes (``kv.embedding_dtype``) and always come back as
float32 numpy arrays.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

KIND_USER, KIND_ITEM, KIND_RECS = "user", "item", "recs"
TRENDING = "trending"
T = TypeVar("T")


class MalformedRecord(ValueError):
    """A stored record that does not decode (a missing field, bytes of the wrong length, bad JSON).

    Raised by ``get_*`` with the key and the reason; the read path counts it and falls back.
    """


@dataclass(frozen=True, slots=True)
class UserRecord:
    user_id: str
    embedding: np.ndarray            # (d,) float32
    model_version: str
    event_ts: int                    # event time (ms) of the newest click it reflects
    last_n: tuple[str, ...] = ()     # most recent last
    updated_ts: int = 0              # wall-clock ms of the write


@dataclass(frozen=True, slots=True)
class ItemVector:
    item_id: str
    embedding: np.ndarray | None     # None: the item was removed (tombstone)
    model_version: str
    event_ts: int
    status: str = "active"
    category: str | None = None


@dataclass(frozen=True, slots=True)
class RecsList:
    key: str                         # user id, or "" for the trending list
    items: tuple[str, ...]
    model_version: str
    event_ts: int                    # data cut-off time of the batch that produced it
    scores: tuple[float, ...] = field(default=())


@runtime_checkable
class EmbeddingStore(Protocol):
    """Batched, event-time-safe access to user/item embeddings and precomputed lists.

    - ``get_*`` take a sequence of ids and return a list of the same length, ``None`` where absent;
      an empty sequence costs no round trip.
    - ``put_*`` return, per record, True when it was written and False when a newer record
      (greater ``event_ts``) was already stored. One round trip per call (pipelined / batched).
    - TTL: user records and recs lists expire ``kv.user_ttl_s`` after their last write (0 = never);
      items and the trending list do not expire.
    - Errors: connection failures and timeouts raise the backend's exception (``redis.RedisError``,
      ``aerospike.exception.AerospikeError``), a record that does not decode ``MalformedRecord``;
      a caller that serves traffic falls back on them.
    """

    def get_users(self, user_ids: Sequence[str]) -> list[UserRecord | None]: ...
    def put_users(self, records: Sequence[UserRecord]) -> list[bool]: ...
    def get_items(self, item_ids: Sequence[str]) -> list[ItemVector | None]: ...
    def put_items(self, records: Sequence[ItemVector]) -> list[bool]: ...
    def get_recs(self, user_ids: Sequence[str]) -> list[RecsList | None]: ...
    def put_recs(self, records: Sequence[RecsList]) -> list[bool]: ...
    def get_trending(self) -> RecsList | None: ...
    def put_trending(self, record: RecsList) -> bool: ...
    def close(self) -> None: ...


def decoded(key: str, decode: Callable[..., T], *args: Any) -> T:
    """``decode(*args)``; a missing field or bad bytes/JSON becomes ``MalformedRecord(key)``."""
    try:
        return decode(*args)
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as e:   # JSON errors are ValueErrors
        raise MalformedRecord(f"{key}: {type(e).__name__}: {e}") from e


def encode_vector(vec: np.ndarray, dtype: str) -> bytes:
    return np.ascontiguousarray(vec, dtype="<f2" if dtype == "float16" else "<f4").tobytes()


def decode_vector(raw: bytes, dtype: str) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f2" if dtype == "float16" else "<f4").astype(np.float32)


def record_key(prefix: str, kind: str, ident: str) -> str:
    """``{prefix}user:{id}``, ``{prefix}item:{id}``, ``{prefix}recs:{id}``, ``{prefix}trending``."""
    return f"{prefix}{TRENDING}" if kind == TRENDING else f"{prefix}{kind}:{ident}"


# The fields of each record, as both stores write them (Redis hash fields, Aerospike bins): text
# values as str, the embedding as bytes; ``None`` = no field. ``event_ts`` is written by the
# store's event-time rule. A store converts its own representation at its edge.
def user_fields(r: UserRecord, dtype: str, now_ms: int) -> dict[str, Any]:
    return {"emb": encode_vector(r.embedding, dtype), "dtype": dtype, "model_version": r.model_version,
            "last_n": json.dumps(list(r.last_n)), "updated_ts": r.updated_ts or now_ms}


def item_fields(r: ItemVector, dtype: str) -> dict[str, Any]:
    return {"emb": None if r.embedding is None else encode_vector(r.embedding, dtype), "dtype": dtype,
            "model_version": r.model_version, "status": r.status, "category": r.category}


def list_fields(r: RecsList) -> dict[str, Any]:
    return {"items": json.dumps(list(r.items)), "scores": json.dumps(list(r.scores)),
            "model_version": r.model_version}


def user_record(uid: str, f: Mapping[str, Any]) -> UserRecord:
    return UserRecord(user_id=uid, embedding=decode_vector(f["emb"], f["dtype"]),
                      model_version=f["model_version"], event_ts=int(f["event_ts"]),
                      last_n=tuple(json.loads(f.get("last_n", "[]"))), updated_ts=int(f.get("updated_ts", 0)))


def item_vector(iid: str, f: Mapping[str, Any]) -> ItemVector:
    return ItemVector(item_id=iid, embedding=decode_vector(f["emb"], f["dtype"]) if f.get("emb") else None,
                      model_version=f["model_version"], event_ts=int(f["event_ts"]), status=f["status"],
                      category=f.get("category") or None)


def recs_list(key: str, f: Mapping[str, Any]) -> RecsList:
    return RecsList(key=key, items=tuple(json.loads(f["items"])), scores=tuple(json.loads(f.get("scores", "[]"))),
                    model_version=f["model_version"], event_ts=int(f["event_ts"]))
