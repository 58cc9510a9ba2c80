import base64
import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conf import load_settings
from recs.contracts import (
    Click,
    ContractError,
    ItemEmbedding,
    Listing,
    dead_letter,
    json_schema,
    parse_click,
    parse_listing,
)

LIMITS = load_settings().contracts
NOW = 1_795_000_000_000  # fixed "now" so far-future checks are deterministic
TS = 1_790_812_800_000
CLICK = {"user_id": "u1", "item_id": "i9", "ts": TS, "event": "click", "session_id": "s1"}
LISTING = {"item_id": "i9", "title": "Norvik scarlet silk dress", "description": "A dress.", "category": "dresses",
           "attributes": {"colour": "scarlet", "size": "M", "stock": 3, "new": True}, "price": 49.5,
           "status": "active", "ts": TS}


def click(**changes):
    doc = {**CLICK, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...})


def listing(**changes):
    doc = {**LISTING, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...})


def test_valid_click_parses_to_record():
    assert parse_click(click(), LIMITS, NOW) == Click("u1", "i9", TS, "click", "s1")


def test_valid_listing_parses_to_record():
    got = parse_listing(listing(), LIMITS, NOW)
    assert got == Listing("i9", "Norvik scarlet silk dress", "active", TS, "A dress.", "dresses",
                          {"colour": "scarlet", "size": "M", "stock": 3, "new": True}, 49.5)
    assert got.active and "scarlet" in got.text() and "dresses" in got.text()


def test_unknown_fields_are_ignored_and_order_does_not_matter():
    doc = dict(reversed(list({**CLICK, "device": "ios", "extra": {"nested": [1, 2]}}.items())))
    assert parse_click(json.dumps(doc).encode(), LIMITS, NOW) == parse_click(click(), LIMITS, NOW)


def test_optional_fields_may_be_absent_or_null():
    assert parse_click(click(session_id=...), LIMITS, NOW).session_id is None
    assert parse_click(click(session_id=None), LIMITS, NOW).session_id is None
    got = parse_listing(listing(description=..., category=None, attributes=..., price=...), LIMITS, NOW)
    assert (got.description, got.category, got.attributes, got.price) == (None, None, {}, None)


def test_integral_float_timestamp_is_accepted():
    assert parse_click(click(ts=float(TS)), LIMITS, NOW).ts == TS


def test_round_trip_through_to_json():
    rec = parse_listing(listing(), LIMITS, NOW)
    assert parse_listing(rec.to_json(), LIMITS, NOW) == rec


MALFORMED_CLICKS = [
    # (raw record, field named in the error, fragment of the reason)
    (b"not json", "$", "not valid JSON"),
    (b"", "$", "not valid JSON"),
    (b'{"user_id": "u1"', "$", "not valid JSON"),
    (b"\xff\xfe{}", "$", "not valid UTF-8"),
    (b"[1, 2]", "$", "expected a JSON object, got array"),
    (b'"a string"', "$", "expected a JSON object, got string"),
    (b"null", "$", "expected a JSON object, got null"),
    (b"[" * 100_000, "$", "record is"),  # oversize (and too deep)
    (b"[" * 5000, "$", "not valid JSON"),  # too deeply nested for the JSON parser
    (click(user_id=...), "user_id", "missing required field"),
    (click(item_id=...), "item_id", "missing required field"),
    (click(ts=...), "ts", "missing required field"),
    (click(event=...), "event", "missing required field"),
    (click(user_id=None), "user_id", "must not be null"),
    (click(user_id=42), "user_id", "expected a string, got integer"),
    (click(user_id=["u1"]), "user_id", "expected a string, got array"),
    (click(user_id=""), "user_id", "must not be empty"),
    (click(user_id="   "), "user_id", "must not be empty"),
    (click(user_id="u" * 129), "user_id", "129 characters, limit 128"),
    (click(item_id={"id": 1}), "item_id", "expected a string, got object"),
    (click(session_id=7), "session_id", "expected a string, got integer"),
    (click(ts="1790812800000"), "ts", "expected epoch milliseconds (integer), got string"),
    (click(ts=True), "ts", "got boolean"),
    (click(ts=1.5e12 + 0.5), "ts", "expected integer epoch milliseconds"),
    (click(ts=-1), "ts", "is negative"),
    (click(ts=0), "ts", "before the earliest accepted time"),
    (click(ts=1_790_812_800), "ts", "seconds instead of milliseconds"),
    (click(ts=NOW + 3_600_001), "ts", "in the future"),
    (click(ts=10**30), "ts", "in the future"),
    (click(event="purchase"), "event", "'purchase' is not one of ['click']"),
    (click(event=1), "event", "is not one of"),
    (b'{"user_id": "u1", "item_id": "i1", "ts": NaN, "event": "click"}', "ts", "integer epoch"),
]


@pytest.mark.parametrize(("raw", "field", "reason"), MALFORMED_CLICKS)
def test_malformed_click_is_rejected_naming_the_field(raw, field, reason):
    with pytest.raises(ContractError) as err:
        parse_click(raw, LIMITS, NOW)
    assert err.value.field == field
    assert reason in err.value.reason


MALFORMED_LISTINGS = [
    (listing(title=...), "title", "missing required field"),
    (listing(title=5), "title", "expected a string"),
    (listing(title="x" * 10_001), "title", "10001 characters, limit 10000"),
    (listing(description="x" * 10_001), "description", "limit 10000"),
    (listing(status="deleted"), "status", "'deleted' is not one of ['active', 'removed']"),
    (listing(price=-1), "price", "finite number >= 0"),
    (listing(price="9.99"), "price", "expected a number, got string"),
    (listing(price=True), "price", "expected a number, got boolean"),
    (listing(attributes=["red"]), "attributes", "expected an object, got array"),
    (listing(attributes={"colour": {"name": "red"}}), "attributes.colour", "expected a scalar, got object"),
    (listing(attributes={"colour": None}), "attributes.colour", "expected a scalar, got null"),
    (listing(attributes={f"k{i}": i for i in range(65)}), "attributes", "65 entries, limit 64"),
    (listing(attributes={"colour": "r" * 129}), "attributes.colour", "limit 128"),
    (listing(category=""), "category", "must not be empty"),
    (b'{"item_id": "i1", "title": "t", "status": "active", "ts": 1790812800000, "price": Infinity}',
     "price", "finite number"),
]


@pytest.mark.parametrize(("raw", "field", "reason"), MALFORMED_LISTINGS)
def test_malformed_listing_is_rejected_naming_the_field(raw, field, reason):
    with pytest.raises(ContractError) as err:
        parse_listing(raw, LIMITS, NOW)
    assert (err.value.field, reason in err.value.reason) == (field, True), err.value.reason


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                  max_size=6))
                 .map(lambda v: json.dumps(v).encode())))
def test_any_input_gives_a_record_or_a_contract_error(raw):
    for parse in (parse_click, parse_listing):
        try:
            parse(raw, LIMITS, NOW)
        except ContractError as e:
            assert e.field and e.reason


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({
    "user_id": st.one_of(st.text(max_size=140), st.integers(), st.none()),
    "item_id": st.text(min_size=0, max_size=5),
    "ts": st.one_of(st.integers(min_value=-10, max_value=NOW), st.booleans(), st.text(max_size=3)),
    "event": st.sampled_from(["click", "view", 3]),
}))
def test_json_schema_agrees_with_the_parser(doc):
    """What the published schema accepts, the parser accepts, and vice versa (for what a schema can
    express: the future-timestamp limit depends on the clock and is checked by the parser only)."""
    schema = json_schema("click", LIMITS)
    try:
        jsonschema.validate(doc, schema)
        schema_ok = True
    except jsonschema.ValidationError:
        schema_ok = False
    try:
        parse_click(doc, LIMITS, NOW)
        parser_ok = True
    except ContractError:
        parser_ok = False
    assert schema_ok == parser_ok, doc


def test_dead_letter_keeps_the_whole_record_and_the_reason():
    err = ContractError("ts", "is negative (-1)")
    doc = json.loads(dead_letter(b'{"ts": -1}', err, "clicks", now_ms=5))
    assert doc == {"source_topic": "clicks", "field": "ts", "reason": "is negative (-1)", "rejected_at": 5,
                   "raw": '{"ts": -1}'}
    binary = json.loads(dead_letter(b"\xff\x00", err, "clicks", now_ms=5))
    assert base64.b64decode(binary["raw_b64"]) == b"\xff\x00" and "raw" not in binary


def test_item_embedding_round_trip_and_tombstone():
    import numpy as np

    rec = ItemEmbedding("i1", np.array([0.5, -1.0, 2.0], dtype=np.float32), "m1", "active", TS, "shoes")
    back = ItemEmbedding.decode(b"i1", rec.encode())
    assert back is not None
    assert (back.item_id, back.model_version, back.status, back.ts, back.category) == ("i1", "m1", "active", TS,
                                                                                        "shoes")
    assert back.embedding.tolist() == [0.5, -1.0, 2.0]
    assert ItemEmbedding.decode(b"i1", None) is None
    with pytest.raises(ContractError, match="key says"):
        ItemEmbedding.decode(b"other", rec.encode())
    with pytest.raises(ContractError, match="bad item_embeddings record"):
        ItemEmbedding.decode(b"i1", b'{"emb": 1}')
