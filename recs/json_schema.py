"""JSON Schema (draft 2020-12) of the events, generated from the parser's own field tables
(``recs contracts schema click|listing``)."""

from __future__ import annotations

from typing import Any

from conf.settings import ContractSettings
from recs.contracts import CLICK_FIELDS, ID_FORBIDDEN, LISTING_FIELDS, TEXT_FORBIDDEN, EventKind


def _id_schema(limits: ContractSettings) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": limits.max_id_chars,
            "allOf": [{"pattern": r"\S"}, {"pattern": f"^[^{ID_FORBIDDEN}]*$"}]}


def json_schema(kind: EventKind, limits: ContractSettings) -> dict[str, Any]:
    """The JSON Schema of one event. What it cannot say, the parser still enforces: the
    future-timestamp limit (clock-dependent), duplicate keys, NaN/Infinity, number length."""
    fields = CLICK_FIELDS if kind == "click" else LISTING_FIELDS
    props: dict[str, Any] = {}
    for name, k, _required in fields:
        if k == "id":
            props[name] = _id_schema(limits)
        elif k == "text":
            props[name] = {"type": "string", "maxLength": limits.max_text_chars,
                           "pattern": f"^[^{TEXT_FORBIDDEN}]*$"}
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
                           "propertyNames": _id_schema(limits),
                           "additionalProperties": {
                               "anyOf": [{"type": "string", "maxLength": limits.max_id_chars,
                                          "pattern": f"^[^{ID_FORBIDDEN}]*$"},
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
