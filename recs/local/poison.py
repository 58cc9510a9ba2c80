"""A corpus of poison records: every malformed kind a Flink job must dead-letter without stopping.

    from recs.local.poison import click_poison, listing_poison, interleave

Each ``Poison`` is a raw Kafka value that the broker accepts and the contract rejects, with the
field and a fragment of the reason the dead letter must carry. The two records of issue 8 (an
integer too long for Python's int conversion, a lone surrogate in an id) are here, with bad UTF-8,
truncated JSON, deep nesting, NaN/Infinity, control characters in ids, a BOM, duplicate keys, wrong
types, a huge record and the other contract breaches. Every job that reads clicks reuses it
(``tests/integration/test_poison_records.py`` for click_counts); a job for another event kind adds
its own list next to this one.

A null value (Kafka tombstone) is not in the list: it carries no event, so it is counted (metric
``recs.null_values``), not dead-lettered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from conf.settings import ContractSettings

TS = 1_790_812_800_000  # 2026-10-01, inside every default limit


@dataclass(frozen=True, slots=True)
class Poison:
    name: str
    raw: bytes
    field: str   # the field the dead letter names ("$" = the whole record)
    reason: str  # a fragment of the dead letter's reason


def _click(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"user_id": "u-poison", "item_id": "i1", "ts": TS, "event": "click"}
    doc.update(changes)
    return doc


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()  # ensure_ascii: a lone surrogate travels as the escape \ud800


def _with_raw(field: str, raw_value: str) -> bytes:
    """A valid click whose ``field`` holds ``raw_value`` verbatim (JSON text, not escaped)."""
    doc = _click(**{field: "@@"})
    return json.dumps(doc).replace('"@@"', raw_value).encode()


def click_poison(limits: ContractSettings) -> list[Poison]:
    """The corpus for the click contract under ``limits`` (sizes follow the limits)."""
    nested = 5_000  # 5x Python's recursion limit, 10 kB: under the default max_record_bytes
    valid = _json(_click())
    return [
        # issue 8: both stopped click_counts for good
        Poison("int of 5000 digits", _with_raw("ts", "9" * 5000), "$", "a number of 5000 characters"),
        Poison("lone surrogate in user_id", _with_raw("user_id", '"u\\ud800"'), "user_id", "lone surrogate"),
        # numbers
        Poison("int of 5000 digits in an unknown field", _with_raw("extra", "1" * 5000), "$", "a number of"),
        Poison("float of 200 digits", _with_raw("ts", "0." + "1" * 200), "$", "a number of"),
        Poison("NaN", _with_raw("ts", "NaN"), "$", "NaN is not a JSON number"),
        Poison("Infinity in an unknown field", _with_raw("extra", "-Infinity"), "$", "Infinity is not a JSON number"),
        Poison("1e999 (overflows to inf)", _with_raw("ts", "1e999"), "ts", "expected integer epoch milliseconds"),
        # strings and ids
        Poison("lone low surrogate in item_id", _with_raw("item_id", '"\\udc00"'), "item_id", "lone surrogate"),
        Poison("NUL in user_id", _json(_click(user_id="u\x00")), "user_id", "control character U+0000"),
        Poison("newline in item_id", _json(_click(item_id="i\n1")), "item_id", "control character U+000A"),
        Poison("C1 control in session_id", _json(_click(session_id="s\x85")), "session_id",
               "control character U+0085"),
        Poison("DEL in user_id", _json(_click(user_id="u\x7f")), "user_id", "control character U+007F"),
        Poison("raw control character in a string", valid.replace(b"u-poison", b"u\tpoison"), "$",
               "not valid JSON: Invalid control character"),
        Poison("empty user_id", _json(_click(user_id="")), "user_id", "must not be empty"),
        Poison("whitespace user_id", _json(_click(user_id=" \u3000 ")), "user_id", "must not be empty"),
        Poison("user_id too long", _json(_click(user_id="u" * (limits.max_id_chars + 1))), "user_id",
               f"limit {limits.max_id_chars}"),
        # bytes and JSON syntax
        Poison("bad UTF-8", b"\xff\xfe\x00 binary", "$", "not valid UTF-8 at byte 0"),
        Poison("UTF-8-encoded surrogate", valid.replace(b"u-poison", b"u\xed\xa0\x80"), "$", "not valid UTF-8"),
        Poison("bad UTF-8 in an id", valid.replace(b"u-poison", b"u-poi\xffson"), "$", "not valid UTF-8"),
        Poison("U+2028 after the record", valid + "\u2028".encode(), "$", "not valid JSON: Extra data"),
        Poison("truncated JSON", valid[: len(valid) // 2], "$", "not valid JSON"),
        Poison("empty value", b"", "$", "not valid JSON"),
        Poison("BOM", b"\xef\xbb\xbf" + valid, "$", "byte order mark"),
        Poison("duplicate key", valid.replace(b'{"user_id": "u-poison"', b'{"user_id": "u-a", "user_id": "u-b"'),
               "$", "duplicate key 'user_id'"),
        Poison("duplicate key in a nested object", _with_raw("extra", '{"a": 1, "a": 2}'), "$", "duplicate key 'a'"),
        Poison("deep nesting", b"[" * nested + b"]" * nested, "$", "too deeply nested"),
        Poison("deep nesting in an unknown field",
               _with_raw("extra", '{"a": ' * (nested // 2) + "1" + "}" * (nested // 2)), "$", "too deeply nested"),
        Poison("huge record", _json(_click(extra="x" * limits.max_record_bytes)), "$",
               f"limit {limits.max_record_bytes}"),
        Poison("JSON null", b"null", "$", "expected a JSON object, got null"),
        Poison("array", b"[1, 2, 3]", "$", "expected a JSON object, got array"),
        Poison("string", b'"click"', "$", "expected a JSON object, got string"),
        # wrong types and values
        Poison("user_id a number", _json(_click(user_id=7)), "user_id", "expected a string, got integer"),
        Poison("item_id an object", _json(_click(item_id={"id": 1})), "item_id", "expected a string, got object"),
        Poison("ts a string", _json(_click(ts="yesterday")), "ts", "expected epoch milliseconds"),
        Poison("ts a boolean", _json(_click(ts=True)), "ts", "got boolean"),
        Poison("ts negative", _json(_click(ts=-5)), "ts", "is negative"),
        Poison("ts in seconds", _json(_click(ts=TS // 1000)), "ts", "seconds instead of milliseconds"),
        Poison("ts far in the future", _json(_click(ts=4_102_444_800_000)), "ts", "in the future"),
        Poison("event unknown", _json(_click(event="buy")), "event", "'buy' is not one of"),
        Poison("event a list", _json(_click(event=["click"])), "event", "is not one of"),
        Poison("user_id missing", _json({k: v for k, v in _click().items() if k != "user_id"}), "user_id",
               "missing required field"),
        Poison("user_id null", _json(_click(user_id=None)), "user_id", "must not be null"),
    ]


def _listing(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"item_id": "i-poison", "title": "red dress", "status": "active", "ts": TS,
                           "category": "women", "attributes": {"size": "M"}, "price": 9.5}
    doc.update(changes)
    return doc


def listing_poison(limits: ContractSettings) -> list[Poison]:
    """The corpus for the listing contract: the record-level breaches every parser meets (bytes,
    JSON syntax, numbers, nesting, size) and the listing's own fields."""
    valid = _json(_listing())
    nested = 5_000
    return [
        Poison("int of 5000 digits", valid.replace(b"9.5", b"9" * 5000), "$", "a number of 5000 characters"),
        Poison("lone surrogate in item_id", valid.replace(b'"i-poison"', b'"i\\ud800"'), "item_id",
               "lone surrogate"),
        Poison("NaN price", valid.replace(b"9.5", b"NaN"), "$", "NaN is not a JSON number"),
        Poison("bad UTF-8", b"\xff\xfe\x00 binary", "$", "not valid UTF-8 at byte 0"),
        Poison("truncated JSON", valid[: len(valid) // 2], "$", "not valid JSON"),
        Poison("empty value", b"", "$", "not valid JSON"),
        Poison("BOM", b"\xef\xbb\xbf" + valid, "$", "byte order mark"),
        Poison("duplicate key", valid.replace(b'{"item_id": "i-poison"', b'{"item_id": "a", "item_id": "b"'),
               "$", "duplicate key 'item_id'"),
        Poison("deep nesting", b"[" * nested + b"]" * nested, "$", "too deeply nested"),
        Poison("huge record", _json(_listing(description="x" * limits.max_record_bytes)), "$",
               f"limit {limits.max_record_bytes}"),
        Poison("JSON null", b"null", "$", "expected a JSON object, got null"),
        Poison("title missing", _json({k: v for k, v in _listing().items() if k != "title"}), "title",
               "missing required field"),
        Poison("title a number", _json(_listing(title=7)), "title", "expected a string, got integer"),
        Poison("NUL in item_id", _json(_listing(item_id="i\x00")), "item_id", "control character U+0000"),
        Poison("item_id too long", _json(_listing(item_id="i" * (limits.max_id_chars + 1))), "item_id",
               f"limit {limits.max_id_chars}"),
        Poison("status unknown", _json(_listing(status="sold")), "status", "'sold' is not one of"),
        Poison("price negative", _json(_listing(price=-1)), "price", "must be a finite number >= 0"),
        Poison("price a string", _json(_listing(price="cheap")), "price", "expected a number, got string"),
        Poison("attributes a list", _json(_listing(attributes=["M"])), "attributes", "expected an object"),
        Poison("attribute value an object", _json(_listing(attributes={"size": {"eu": 38}})), "attributes.size",
               "expected a scalar"),
        Poison("ts in seconds", _json(_listing(ts=TS // 1000)), "ts", "seconds instead of milliseconds"),
        Poison("ts far in the future", _json(_listing(ts=4_102_444_800_000)), "ts", "in the future"),
    ]


def interleave(valid: Sequence[bytes], poison: Sequence[bytes], seed: int) -> Iterator[bytes]:
    """``valid`` in order with ``poison`` spread among them at seeded random positions."""
    import random

    rng = random.Random(seed)
    slots = sorted(rng.randrange(len(valid) + 1) for _ in poison)
    p = 0
    for i, v in enumerate(valid):
        while p < len(slots) and slots[p] == i:
            yield poison[p]
            p += 1
        yield v
    yield from poison[p:]
