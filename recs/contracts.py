"""Event contracts: the one parser used by every producer, job and test.

    click:   {"user_id": str, "item_id": str, "ts": epoch_ms, "event": "click", "session_id": str?}
    listing: {"item_id": str, "title": str, "description": str?, "category": str?,
              "attributes": {str: str|int|float|bool}?, "price": float?,
              "status": "active"|"removed", "ts": epoch_ms}

``parse_click(raw, limits)`` returns a frozen ``Click`` or raises ``ContractError(field, reason)``;
``parse_listing`` likewise. Unknown extra fields are ignored (producers evolve before consumers do),
field order never matters, and a bool is never accepted where a number is expected. The JSON Schema
of each event (``recs contracts schema``) is generated from the same field table, so the documented
contract and the enforced one cannot drift apart.

Keys on Kafka (settings ``kafka.topics.click_key/listing_key``): clicks by ``user_id``, listings and
item embeddings by ``item_id`` by default.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from conf.settings import ContractSettings

EventKind = Literal["click", "listing"]


class ContractError(ValueError):
    """A record that breaks its contract. ``field`` is the JSON field name ("$" = the whole record)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Click:
    user_id: str
    item_id: str
    ts: int
    event: str = "click"
    session_id: str | None = None

    def to_json(self) -> str:
        return _dumps(self)


@dataclass(frozen=True, slots=True)
class Listing:
    item_id: str
    title: str
    status: str
    ts: int
    description: str | None = None
    category: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    price: float | None = None

    def to_json(self) -> str:
        return _dumps(self)

    @property
    def active(self) -> bool:
        return self.status == "active"

    def text(self) -> str:
        """The text the item tower reads: title, category, description, attribute values."""
        parts = [self.title, self.category or "", self.description or ""]
        parts += [f"{k} {v}" for k, v in sorted(self.attributes.items())]
        return " . ".join(p for p in parts if p)


def _dumps(record: Click | Listing) -> str:
    return json.dumps({k: v for k, v in asdict(record).items() if v is not None}, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Field table: (name, kind, required). Kinds: id (short string), text (long string), ts, enum:...,
# price, attributes. The parser and the JSON Schema are both generated from it.
# ---------------------------------------------------------------------------------------------
CLICK_EVENTS = ("click",)
LISTING_STATUSES = ("active", "removed")

CLICK_FIELDS: tuple[tuple[str, str, bool], ...] = (
    ("user_id", "id", True),
    ("item_id", "id", True),
    ("ts", "ts", True),
    ("event", "enum:" + ",".join(CLICK_EVENTS), True),
    ("session_id", "id", False),
)
LISTING_FIELDS: tuple[tuple[str, str, bool], ...] = (
    ("item_id", "id", True),
    ("title", "text", True),
    ("description", "text", False),
    ("category", "id", False),
    ("attributes", "attributes", False),
    ("price", "price", False),
    ("status", "enum:" + ",".join(LISTING_STATUSES), True),
    ("ts", "ts", True),
)


def _load(raw: bytes | str | dict[str, Any], limits: ContractSettings) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if raw is None:
        raise ContractError("$", "empty record (null value)")
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > limits.max_record_bytes:
        raise ContractError("$", f"record is {size} bytes, limit {limits.max_record_bytes}")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ContractError("$", f"not valid UTF-8 at byte {e.start}") from None
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as e:
        msg = getattr(e, "msg", "too deeply nested")
        raise ContractError("$", f"not valid JSON: {msg}") from None
    if not isinstance(obj, dict):
        raise ContractError("$", f"expected a JSON object, got {_type_name(obj)}")
    return obj


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(value), type(value).__name__)


def _check(name: str, kind: str, value: Any, limits: ContractSettings, now_ms: int) -> Any:
    if kind in ("id", "text"):
        if not isinstance(value, str):
            raise ContractError(name, f"expected a string, got {_type_name(value)}")
        if kind == "id" and not value.strip():
            raise ContractError(name, "must not be empty")
        limit = limits.max_id_chars if kind == "id" else limits.max_text_chars
        if len(value) > limit:
            raise ContractError(name, f"is {len(value)} characters, limit {limit}")
        return value
    if kind == "ts":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ContractError(name, f"expected epoch milliseconds (integer), got {_type_name(value)}")
        if isinstance(value, float):
            if not math.isfinite(value) or not value.is_integer():
                raise ContractError(name, f"expected integer epoch milliseconds, got {value!r}")
            value = int(value)
        if value < 0:
            raise ContractError(name, f"is negative ({value})")
        if value < limits.min_ts_ms:
            raise ContractError(name, f"{value} is before the earliest accepted time {limits.min_ts_ms} "
                                      "(seconds instead of milliseconds?)")
        if value > now_ms + limits.max_future_skew_ms:
            raise ContractError(name, f"{value} is more than {limits.max_future_skew_ms} ms "
                                      "in the future")
        return value
    if kind.startswith("enum:"):
        allowed = kind[5:].split(",")
        if value not in allowed:
            raise ContractError(name, f"{value!r} is not one of {allowed}")
        return value
    if kind == "price":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ContractError(name, f"expected a number, got {_type_name(value)}")
        if not math.isfinite(value) or value < 0:
            raise ContractError(name, f"must be a finite number >= 0, got {value!r}")
        return float(value)
    if kind == "attributes":
        if not isinstance(value, dict):
            raise ContractError(name, f"expected an object, got {_type_name(value)}")
        if len(value) > limits.max_attributes:
            raise ContractError(name, f"has {len(value)} entries, limit {limits.max_attributes}")
        for key, v in value.items():
            if isinstance(v, dict | list) or v is None:
                raise ContractError(f"{name}.{key}", f"expected a scalar, got {_type_name(v)}")
            if isinstance(v, str) and len(v) > limits.max_id_chars:
                raise ContractError(f"{name}.{key}", f"is {len(v)} characters, limit {limits.max_id_chars}")
            if isinstance(v, float) and not math.isfinite(v):
                raise ContractError(f"{name}.{key}", f"must be finite, got {v!r}")
        return value
    raise AssertionError(f"unknown field kind {kind}")


def _parse(raw: bytes | str | dict[str, Any], fields: tuple[tuple[str, str, bool], ...],
           limits: ContractSettings, now_ms: int | None) -> dict[str, Any]:
    obj = _load(raw, limits)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    out: dict[str, Any] = {}
    for name, kind, required in fields:
        value = obj.get(name)
        if value is None:
            if required:
                raise ContractError(name, "missing required field" if name not in obj else "must not be null")
            continue
        out[name] = _check(name, kind, value, limits, now)
    return out


def parse_click(raw: bytes | str | dict[str, Any], limits: ContractSettings,
                now_ms: int | None = None) -> Click:
    """Parse and validate one click; raises ContractError naming the field."""
    return Click(**_parse(raw, CLICK_FIELDS, limits, now_ms))


def parse_listing(raw: bytes | str | dict[str, Any], limits: ContractSettings,
                  now_ms: int | None = None) -> Listing:
    """Parse and validate one listing event; raises ContractError naming the field."""
    return Listing(**_parse(raw, LISTING_FIELDS, limits, now_ms))


PARSERS = {"click": parse_click, "listing": parse_listing}


# ---------------------------------------------------------------------------------------------
# Dead letters: what a job writes to <topic>.dlq for a rejected record. Nothing is lost: the raw
# record travels in full (base64 when it is not UTF-8).
# ---------------------------------------------------------------------------------------------
def dead_letter(raw: bytes | str | None, error: ContractError, source_topic: str,
                now_ms: int | None = None) -> str:
    import base64

    doc: dict[str, Any] = {
        "source_topic": source_topic,
        "field": error.field,
        "reason": error.reason,
        "rejected_at": int(time.time() * 1000) if now_ms is None else now_ms,
    }
    if isinstance(raw, bytes):
        try:
            doc["raw"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            doc["raw_b64"] = base64.b64encode(raw).decode("ascii")
    else:
        doc["raw"] = raw
    return json.dumps(doc, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# JSON Schema (draft 2020-12), generated from the field tables.
# ---------------------------------------------------------------------------------------------
def json_schema(kind: EventKind, limits: ContractSettings) -> dict[str, Any]:
    fields = CLICK_FIELDS if kind == "click" else LISTING_FIELDS
    props: dict[str, Any] = {}
    for name, k, _required in fields:
        if k == "id":
            props[name] = {"type": "string", "minLength": 1, "maxLength": limits.max_id_chars,
                           "pattern": r"\S"}
        elif k == "text":
            props[name] = {"type": "string", "maxLength": limits.max_text_chars}
        elif k == "ts":
            props[name] = {"type": "integer", "minimum": limits.min_ts_ms,
                           "description": "epoch milliseconds; at most "
                                          f"{limits.max_future_skew_ms} ms in the future"}
        elif k.startswith("enum:"):
            props[name] = {"enum": k[5:].split(",")}
        elif k == "price":
            props[name] = {"type": "number", "minimum": 0}
        elif k == "attributes":
            props[name] = {"type": "object", "maxProperties": limits.max_attributes,
                           "additionalProperties": {
                               "anyOf": [{"type": "string", "maxLength": limits.max_id_chars},
                                         {"type": "number"}, {"type": "boolean"}]}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://recstream.dev/schemas/{kind}.schema.json",
        "title": kind,
        "type": "object",
        "properties": props,
        "required": [n for n, _k, r in fields if r],
        "additionalProperties": True,
    }


# ---------------------------------------------------------------------------------------------
# item_embeddings topic: key = item_id (UTF-8); value = JSON below, or null (tombstone) = removed.
# The embedding travels as base64 of little-endian float32, so a record is ~1 KB at d = 128 and
# any consumer (Python, Java, a shell with jq + base64) can read it.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ItemEmbedding:
    item_id: str
    embedding: Any  # numpy.ndarray, shape (d,), float32
    model_version: str
    status: str
    ts: int
    category: str | None = None

    def encode(self) -> bytes:
        import base64

        import numpy as np

        vec = np.ascontiguousarray(self.embedding, dtype="<f4")
        doc = {"item_id": self.item_id, "model_version": self.model_version, "status": self.status,
               "ts": self.ts, "category": self.category,
               "emb": base64.b64encode(vec.tobytes()).decode("ascii")}
        return json.dumps(doc).encode("utf-8")

    @staticmethod
    def decode(key: bytes | str, value: bytes | None) -> ItemEmbedding | None:
        """Decode one topic record; None means the item was removed (tombstone)."""
        import base64

        import numpy as np

        if value is None:
            return None
        try:
            doc = json.loads(value)
            vec = np.frombuffer(base64.b64decode(doc["emb"]), dtype="<f4")
            item_id = key.decode("utf-8") if isinstance(key, bytes) else key
            if doc.get("item_id", item_id) != item_id:
                raise ContractError("item_id", f"value says {doc['item_id']!r}, key says {item_id!r}")
            return ItemEmbedding(item_id=item_id, embedding=vec, model_version=str(doc["model_version"]),
                                 status=str(doc["status"]), ts=int(doc["ts"]), category=doc.get("category"))
        except ContractError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise ContractError("$", f"bad item_embeddings record: {e}") from None
