"""Aerospike implementation of ``EmbeddingStore`` (official client), the production KV store.

One record per key in ``aerospike.namespace`` / ``aerospike.set_name``, user keys "user:{id}" etc.
(the same layout as Redis). Bins mirror the Redis hash fields. The event-time rule is a filter
expression on every write: ``not exists(event_ts) or event_ts <= new``; a refused write comes back
as result code 27 (FILTERED_OUT) and is reported as False. Reads and writes are batched
(``batch_read`` / ``batch_write``): one round trip per call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from conf.addresses import split_hostport
from conf.settings import AerospikeSettings, KVSettings
from recs.stores.base import (
    KIND_ITEM,
    KIND_RECS,
    KIND_USER,
    TRENDING,
    ItemVector,
    RecsList,
    UserRecord,
    decoded,
    item_fields,
    item_vector,
    list_fields,
    record_key,
    recs_list,
    user_fields,
    user_record,
)

FILTERED_OUT = 27
KEY_NOT_FOUND = 2


class AerospikeStore:
    def __init__(self, settings: AerospikeSettings, kv: KVSettings, client: Any = None) -> None:
        import aerospike

        self.settings = settings
        self.kv = kv
        self._aerospike = aerospike
        if client is None:
            hosts = [split_hostport(h, default_port=3000) for h in settings.hosts]
            config: dict[str, Any] = {"hosts": hosts, "policies": {
                "read": {"total_timeout": settings.timeout_ms},
                "write": {"total_timeout": settings.timeout_ms},
                "batch": {"total_timeout": settings.timeout_ms}}}
            if settings.user:
                config["user"] = settings.user
                config["password"] = settings.password.get_secret_value() if settings.password else ""
            client = aerospike.client(config).connect()
        self.client = client

    def _key(self, kind: str, ident: str) -> tuple[str, str, str]:
        return (self.settings.namespace, self.settings.set_name, record_key(self.kv.key_prefix, kind, ident))

    def _read(self, keys: list[tuple[str, str, str]]) -> list[dict[str, Any] | None]:
        if not keys:
            return []
        res = self.client.batch_read(keys)
        out: list[dict[str, Any] | None] = []
        for br in res.batch_records:
            out.append(br.record[2] if br.result == 0 and br.record else None)
        return out

    def _write(self, rows: list[tuple[tuple[str, str, str], int, int, dict[str, Any]]]) -> list[bool]:
        if not rows:
            return []
        from aerospike_helpers import expressions as exp
        from aerospike_helpers.batch.records import BatchRecords, Write
        from aerospike_helpers.operations import operations as op

        writes = []
        for key, event_ts, ttl, bins in rows:
            newer_or_new = exp.Or(exp.Not(exp.BinExists("event_ts")),
                                  exp.LE(exp.IntBin("event_ts"), int(event_ts))).compile()
            ops = [op.write("event_ts", int(event_ts))]
            ops += [op.write(name, value) for name, value in bins.items()]  # None removes the bin
            meta = {"ttl": ttl if ttl > 0 else self._aerospike.TTL_NEVER_EXPIRE}
            writes.append(Write(key, ops, meta=meta, policy={"expressions": newer_or_new}))
        res = self.client.batch_write(BatchRecords(writes))
        out = []
        for br in res.batch_records:
            if br.result not in (0, FILTERED_OUT):
                raise self._aerospike.exception.AerospikeError(  # type: ignore[attr-defined]
                    f"batch write of {br.key} failed with result code {br.result}")
            out.append(br.result == 0)
        return out

    def get_users(self, user_ids: Sequence[str]) -> list[UserRecord | None]:
        out: list[UserRecord | None] = []
        for uid, b in zip(user_ids, self._read([self._key(KIND_USER, u) for u in user_ids]), strict=True):
            out.append(None if not b or "emb" not in b else
                       decoded(record_key(self.kv.key_prefix, KIND_USER, uid), user_record, uid, b))
        return out

    def put_users(self, records: Sequence[UserRecord]) -> list[bool]:
        now, dt = int(time.time() * 1000), self.kv.embedding_dtype
        return self._write([(self._key(KIND_USER, r.user_id), r.event_ts, self.kv.user_ttl_s,
                             _blob(user_fields(r, dt, now))) for r in records])

    def get_items(self, item_ids: Sequence[str]) -> list[ItemVector | None]:
        rows = self._read([self._key(KIND_ITEM, i) for i in item_ids])
        return [item_vector(iid, b) if b else None for iid, b in zip(item_ids, rows, strict=True)]

    def put_items(self, records: Sequence[ItemVector]) -> list[bool]:
        dt = self.kv.embedding_dtype
        return self._write([(self._key(KIND_ITEM, r.item_id), r.event_ts, 0, _blob(item_fields(r, dt)))
                            for r in records])

    def _list(self, key: str, b: dict[str, Any] | None) -> RecsList | None:
        if not b:
            return None
        where = record_key(self.kv.key_prefix, TRENDING if key == "" else KIND_RECS, key)
        return decoded(where, recs_list, key, b)

    def get_recs(self, user_ids: Sequence[str]) -> list[RecsList | None]:
        rows = self._read([self._key(KIND_RECS, u) for u in user_ids])
        return [self._list(u, b) for u, b in zip(user_ids, rows, strict=True)]

    def put_recs(self, records: Sequence[RecsList]) -> list[bool]:
        return self._write([(self._key(KIND_RECS, r.key), r.event_ts, self.kv.user_ttl_s, list_fields(r))
                            for r in records])

    def get_trending(self) -> RecsList | None:
        return self._list("", self._read([self._key(TRENDING, "")])[0])

    def put_trending(self, record: RecsList) -> bool:
        return self._write([(self._key(TRENDING, ""), record.event_ts, 0, list_fields(record))])[0]

    def close(self) -> None:
        self.client.close()


def _blob(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields with the embedding as a bytearray, the type this store has always written it as."""
    emb = fields.get("emb")
    return fields if emb is None else {**fields, "emb": bytearray(emb)}
