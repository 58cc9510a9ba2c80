"""Event contracts: the one parser used by every producer, job and test.

    click:   {"user_id": str, "item_id": str, "ts": epoch_ms, "event": "click", "session_id": str?}
    listing: {"item_id": str, "title": str, "description": str?, "category": str?,
              "attributes": {str: str|int|float|bool}?, "price": float?,
              "status": "active"|"removed", "ts": epoch_ms}

``parse_click(raw, limits)`` returns a frozen ``Click`` or raises ``ContractError(field, reason)``
and nothing else, whatever the bytes (property-tested); ``parse_listing`` likewise. Unknown extra
fields are ignored (producers evolve before consumers do), field order never matters, and a bool is
never accepted where a number is expected. The JSON Schema of each event (``recs contracts schema``)
is generated from the same field table, so the documented contract and the enforced one cannot
drift apart.

An accepted record is one every sink and encoder can write (``to_json``, UTF-8, the Redis client,
Kafka). So the parser also rejects, naming the field:
- ids (``user_id``, ``item_id``, ``session_id``, ``category``, attribute names and values) outside the
  id alphabet: valid UTF-8 (no lone surrogate such as ``"\\ud800"``), no control character
  (U+0000-U+001F, U+007F-U+009F), 1 to ``max_id_chars`` characters, not only whitespace;
- texts (``title``, ``description``) with a lone surrogate (control characters such as newlines
  are allowed in texts);
- a JSON object with a duplicate key, anywhere in the record: the JSON standard leaves the meaning
  open (Python keeps the last, other parsers the first), so the record is ambiguous;
- ``NaN``, ``Infinity``, ``-Infinity`` (not JSON) and numbers longer than ``MAX_NUMBER_CHARS``
  (Python refuses integers of more than 4,300 digits with a ``ValueError``; none is a timestamp);
- a UTF-8 byte order mark, bad UTF-8, nesting too deep for the parser, records over
  ``max_record_bytes``.

``parse_or_error`` is the total form a streaming job uses: it returns the record or the
``ContractError``, and turns any other exception (a parser bug) into ``ContractError("$",
"unexpected <type>: <message>", unexpected=True)``, so one record can never stop a job.
``recs.dead_letters.dead_letter`` always produces a JSON document that encodes as UTF-8;
``recs.json_schema`` publishes the same rules as JSON Schema.

Keys on Kafka (settings ``kafka.topics.click_key/listing_key``): clicks by ``user_id``, listings and
item embeddings by ``item_id`` by default.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from conf.settings import ContractSettings

EventKind = Literal["click", "listing"]


class ContractError(ValueError):
    """A record that breaks its contract. ``field`` is the JSON field name ("$" = the whole record)."""

    def __init__(self, field: str, reason: str, *, unexpected: bool = False) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.unexpected = unexpected  # True: not a contract rule but an exception the parser did not expect


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


# The id alphabet, as a regex character range shared by the parser and the JSON Schema: control
# characters (C0, DEL, C1) and UTF-16 surrogates are out. A lone surrogate is what a JSON "\ud800"
# escape decodes to; no UTF-8 encoder (Redis client, Kafka, .encode()) can write it.
ID_FORBIDDEN = r"\u0000-\u001f\u007f-\u009f\ud800-\udfff"
TEXT_FORBIDDEN = r"\ud800-\udfff"
_ID_BAD = re.compile(f"[{ID_FORBIDDEN}]")
_TEXT_BAD = re.compile(f"[{TEXT_FORBIDDEN}]")
# No int64 or IEEE double needs more than 25 characters; 100 leaves room for decimals in unknown
# fields and keeps far below Python's 4,300-digit integer conversion limit (a ValueError).
MAX_NUMBER_CHARS = 100
UTF8_BOM = b"\xef\xbb\xbf"


def _short(value: Any, limit: int = 80) -> str:
    """repr of a value for a reason: escapes surrogates and controls, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _number(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if len(text) > MAX_NUMBER_CHARS:
            raise ContractError("$", f"a number of {len(text)} characters, limit {MAX_NUMBER_CHARS}")
        return convert(text)
    return parse


def _not_a_number(name: str) -> Any:
    raise ContractError("$", f"not valid JSON: {name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ContractError("$", f"duplicate key {_short(key)}")
        obj[key] = value
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_int=_number(int),
                            parse_float=_number(float), parse_constant=_not_a_number)


def _load(raw: bytes | str | dict[str, Any], limits: ContractSettings) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if raw is None:
        raise ContractError("$", "empty record (null value)")
    if not isinstance(raw, bytes | str):
        raise ContractError("$", f"expected bytes or str, got {type(raw).__name__}")
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > limits.max_record_bytes:
        raise ContractError("$", f"record is {size} bytes, limit {limits.max_record_bytes}")
    if isinstance(raw, bytes):
        if raw.startswith(UTF8_BOM):
            raise ContractError("$", "not valid JSON: starts with a UTF-8 byte order mark (BOM)")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ContractError("$", f"not valid UTF-8 at byte {e.start}") from None
    try:
        obj = _DECODER.decode(raw)
    except json.JSONDecodeError as e:
        raise ContractError("$", f"not valid JSON: {e.msg} at character {e.pos}") from None
    except RecursionError:
        raise ContractError("$", "not valid JSON: too deeply nested") from None
    if not isinstance(obj, dict):
        raise ContractError("$", f"expected a JSON object, got {_type_name(obj)}")
    return obj


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(value), type(value).__name__)


def _check_string(name: str, value: str, bad: re.Pattern[str], limit: int) -> None:
    if len(value) > limit:
        raise ContractError(name, f"is {len(value)} characters, limit {limit}")
    m = bad.search(value)
    if m:
        char = ord(m.group())
        what = "a lone surrogate (not valid UTF-8)" if 0xD800 <= char <= 0xDFFF else "a control character"
        raise ContractError(name, f"contains {what} U+{char:04X} at index {m.start()}")


def _check_id(name: str, value: Any, limits: ContractSettings) -> str:
    if not isinstance(value, str):
        raise ContractError(name, f"expected a string, got {_type_name(value)}")
    if not value.strip():
        raise ContractError(name, "must not be empty")
    _check_string(name, value, _ID_BAD, limits.max_id_chars)
    return value


def _check(name: str, kind: str, value: Any, limits: ContractSettings, now_ms: int) -> Any:
    if kind == "id":
        return _check_id(name, value, limits)
    if kind == "text":
        if not isinstance(value, str):
            raise ContractError(name, f"expected a string, got {_type_name(value)}")
        _check_string(name, value, _TEXT_BAD, limits.max_text_chars)
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
        if not isinstance(value, str) or value not in allowed:
            raise ContractError(name, f"{_short(value)} is not one of {allowed}")
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
            try:
                _check_id(name, key, limits)
            except ContractError as e:
                raise ContractError(name, f"name {_short(key, 40)} {e.reason}") from None
            if isinstance(v, dict | list) or v is None:
                raise ContractError(f"{name}.{key}", f"expected a scalar, got {_type_name(v)}")
            if isinstance(v, str):
                _check_string(f"{name}.{key}", v, _ID_BAD, limits.max_id_chars)
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


PARSERS: dict[str, Callable[..., Click | Listing]] = {"click": parse_click, "listing": parse_listing}


def encodable(text: str) -> str:
    """``text`` with anything UTF-8 cannot write (lone surrogates) as a backslash escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def parse_or_error(kind: EventKind, raw: bytes | str | dict[str, Any], limits: ContractSettings,
                   now_ms: int | None = None) -> Click | Listing | ContractError:
    """Total parsing: the record, or the error that rejects it; never raises.

    A ContractError is returned as is; any other exception (a bug: the parser is meant to raise
    nothing else) becomes ``ContractError("$", "unexpected <type>: <message>", unexpected=True)``
    so the caller dead-letters and counts it instead of failing the job.
    """
    try:
        return PARSERS[kind](raw, limits, now_ms)
    except ContractError as e:
        return e
    except Exception as e:  # noqa: BLE001 - the point of this function: one record never stops a job
        return ContractError("$", f"unexpected {type(e).__name__}: {encodable(str(e))[:300]}", unexpected=True)


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
        import numpy as np

        vec = np.ascontiguousarray(self.embedding, dtype="<f4")
        doc = {"item_id": self.item_id, "model_version": self.model_version, "status": self.status,
               "ts": self.ts, "category": self.category,
               "emb": base64.b64encode(vec.tobytes()).decode("ascii")}
        return json.dumps(doc).encode("utf-8")

    @staticmethod
    def decode(key: bytes | str, value: bytes | None) -> ItemEmbedding | None:
        """Decode one topic record; None means the item was removed (tombstone)."""
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
