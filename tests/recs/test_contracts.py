import base64
import json

import jsonschema
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from conf import load_settings
from recs import contracts
from recs.contracts import (
    Click,
    ContractError,
    ItemEmbedding,
    Listing,
    parse_click,
    parse_listing,
    parse_or_error,
)
from recs.dead_letters import dead_letter
from recs.json_schema import json_schema
from recs.local.poison import click_poison, listing_poison

LIMITS = load_settings().contracts
# Any character, lone surrogates and controls included (hypothesis leaves surrogates out by default).
ANY_CHAR = st.characters(codec=None, exclude_categories=())
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
    (b'{"user_id": "u1", "item_id": "i1", "ts": NaN, "event": "click"}', "$", "NaN is not a JSON number"),
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
     "$", "Infinity is not a JSON number"),
    (listing(price=1e308 * 10), "$", "Infinity is not a JSON number"),
    (listing(title="dress \ud800"), "title", "lone surrogate"),
    (listing(description="\udfff"), "description", "lone surrogate (not valid UTF-8) U+DFFF at index 0"),
    (listing(category="dresses\x00"), "category", "control character U+0000"),
    (listing(attributes={"col\x1bour": "red"}), "attributes", "control character U+001B"),
    (listing(attributes={"": "red"}), "attributes", "must not be empty"),
    (listing(attributes={"colour": "red\ud83d"}), "attributes.colour", "lone surrogate"),
]


@pytest.mark.parametrize(("raw", "field", "reason"), MALFORMED_LISTINGS)
def test_malformed_listing_is_rejected_naming_the_field(raw, field, reason):
    with pytest.raises(ContractError) as err:
        parse_listing(raw, LIMITS, NOW)
    assert (err.value.field, reason in err.value.reason) == (field, True), err.value.reason


@pytest.mark.slow
@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.fixed_dictionaries({
    "user_id": st.one_of(st.text(max_size=140), st.text(ANY_CHAR, max_size=6), st.integers(), st.none()),
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
    assert doc == {"source_topic": "clicks", "stage": "parse", "field": "ts", "reason": "is negative (-1)",
                   "rejected_at": 5, "raw": '{"ts": -1}'}
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


# ---------------------------------------------------------------------------------------------
# Total parsing (issue 8): only ContractError, whatever the input; accepted records encode anywhere.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("poison", click_poison(LIMITS), ids=lambda p: p.name)
def test_every_poison_record_is_a_contract_error_naming_field_and_reason(poison):
    with pytest.raises(ContractError) as err:
        parse_click(poison.raw, LIMITS, NOW)
    assert (err.value.field, poison.reason in err.value.reason) == (poison.field, True), err.value.reason
    assert not err.value.unexpected
    _assert_dead_letter_encodes(poison.raw, err.value)


@pytest.mark.parametrize("poison", listing_poison(LIMITS), ids=lambda p: p.name)
def test_every_listing_poison_record_is_a_contract_error_naming_field_and_reason(poison):
    with pytest.raises(ContractError) as err:
        parse_listing(poison.raw, LIMITS, NOW)
    assert (err.value.field, poison.reason in err.value.reason) == (poison.field, True), err.value.reason
    assert not err.value.unexpected
    _assert_dead_letter_encodes(poison.raw, err.value)


def test_duplicate_keys_are_rejected_even_when_the_values_agree():
    raw = b'{"user_id": "u1", "user_id": "u1", "item_id": "i9", "ts": 1790812800000, "event": "click"}'
    with pytest.raises(ContractError, match="duplicate key 'user_id'"):
        parse_click(raw, LIMITS, NOW)


def test_parse_or_error_turns_an_unexpected_exception_into_a_counted_contract_error(monkeypatch):
    def broken(raw, limits, now_ms=None):
        raise ValueError("Exceeds the limit (4300 digits) for integer string conversion \ud800")

    monkeypatch.setitem(contracts.PARSERS, "click", broken)
    err = parse_or_error("click", b"{}", LIMITS, NOW)
    assert isinstance(err, ContractError) and err.unexpected
    assert err.field == "$" and err.reason.startswith("unexpected ValueError: Exceeds the limit (4300 digits)")
    _assert_dead_letter_encodes(b"{}", err)


def test_parse_or_error_returns_records_and_contract_errors():
    assert parse_or_error("click", click(), LIMITS, NOW) == Click("u1", "i9", TS, "click", "s1")
    err = parse_or_error("click", click(ts=-1), LIMITS, NOW)
    assert isinstance(err, ContractError) and (err.field, err.unexpected) == ("ts", False)


def test_dead_letter_always_encodes_lone_surrogates_as_base64():
    err = ContractError("user_id\ud800", "reason \udfff")
    doc = json.loads(_assert_dead_letter_encodes("u\ud800", err))
    assert base64.b64decode(doc["raw_b64"]) == "u\ud800".encode("utf-8", "surrogatepass")
    assert (doc["field"], doc["reason"]) == ("user_id\\ud800", "reason \\udfff")
    assert json.loads(dead_letter(None, err, "clicks"))["raw"] is None


REDIS_ENCODER = redis.connection.Encoder("utf-8", "strict", False)


def _assert_dead_letter_encodes(raw, error):
    text = dead_letter(raw, error, "clicks")
    text.encode("utf-8")  # the Kafka sink writes UTF-8
    doc = json.loads(text)
    if isinstance(raw, bytes):
        assert (base64.b64decode(doc["raw_b64"]) if "raw_b64" in doc else doc["raw"].encode()) == raw
    return text


def _assert_writable(record):
    """An accepted record goes through every encoder the jobs use and parses back to itself."""
    text = record.to_json()
    data = text.encode("utf-8")
    assert json.loads(json.dumps(json.loads(data))) == json.loads(text)
    for value in json.loads(text).values():
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            REDIS_ENCODER.encode(value)
    for key in ("user_id", "item_id"):
        if hasattr(record, key):
            REDIS_ENCODER.encode(f"clicks:{getattr(record, key)}")
    again = (parse_click if isinstance(record, Click) else parse_listing)(data, LIMITS, NOW)
    assert again == record


def _assert_total(raw):
    for parse in (parse_click, parse_listing):
        try:
            record = parse(raw, LIMITS, NOW)
        except ContractError as e:
            assert e.field and e.reason and not e.unexpected
            _assert_dead_letter_encodes(raw, e)
        else:
            _assert_writable(record)


ADVERSARIAL_TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=12),
    st.sampled_from(["\ud800", "\udfff", "u\x00", "\x7f", "\x85", " ", "\u2028", "\ufeff", "", "click"]),
    st.text(min_size=1, max_size=3).map(lambda t: t * 60),
)
ADVERSARIAL_NUMBER = st.one_of(
    st.integers(), st.floats(), st.just(TS),
    st.integers(min_value=20, max_value=5000).map(lambda n: "9" * n),     # raw JSON text, see _number_text
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "1E400", "0.1e-400"]),
)


def _number_text(value):
    return value if isinstance(value, str) else json.dumps(value)


@st.composite
def mutated_clicks(draw):
    """A valid click with one to three fields replaced by adversarial JSON text."""
    doc = {k: json.dumps(v) for k, v in CLICK.items()}
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from([*CLICK, "extra"]))
        doc[name] = draw(st.one_of(
            ADVERSARIAL_TEXT.map(lambda t: json.dumps(t)),  # ensure_ascii: surrogates as \udXXX escapes
            ADVERSARIAL_NUMBER.map(_number_text),
            st.sampled_from(["null", "true", "[]", "{}", '{"a": 1, "a": 2}', "[" * 3000 + "]" * 3000]),
        ))
    body = ", ".join(f"{json.dumps(k)}: {v}" for k, v in doc.items())
    if draw(st.booleans()):
        body += f", {json.dumps(draw(st.sampled_from(list(CLICK))))}: {json.dumps(draw(ADVERSARIAL_TEXT))}"
    raw = ("{" + body + "}").encode()
    return draw(st.sampled_from([raw, b"\xef\xbb\xbf" + raw, raw[: draw(st.integers(0, len(raw)))]]))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | ADVERSARIAL_TEXT,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(ADVERSARIAL_TEXT, c, max_size=3), max_leaves=3)
EVENT_KEYS = st.sampled_from(sorted({*CLICK, *LISTING}))

STRATEGIES = {
    "arbitrary bytes": st.binary(max_size=400),
    # a valid click or listing with some fields (or new ones) holding any JSON value, or any JSON
    # value; lone surrogates escaped (ASCII) or written raw (then not valid UTF-8)
    "arbitrary JSON": st.tuples(st.one_of(
        st.dictionaries(EVENT_KEYS | ADVERSARIAL_TEXT, JSON_VALUES, max_size=4).map(lambda d: {**CLICK, **d}),
        st.dictionaries(EVENT_KEYS | ADVERSARIAL_TEXT, JSON_VALUES, max_size=4).map(lambda d: {**LISTING, **d}),
        JSON_VALUES), st.booleans()).map(
        lambda t: json.dumps(t[0], ensure_ascii=t[1]).encode("utf-8", "surrogatepass")),
    "mutated clicks": mutated_clicks(),
    "deep nesting": st.tuples(st.integers(1, 3_000), st.sampled_from(["[", '{"a": '])).map(
        lambda t: (t[1] * t[0] + "1" + ("]" if t[1] == "[" else "}") * t[0]).encode()),
}
EXAMPLES = 2000


@pytest.mark.slow     # 2,000 examples a strategy
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_parsing_is_total_and_accepted_records_encode_everywhere(name):
    """Only ContractError, for every strategy, EXAMPLES examples each."""

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
    @given(STRATEGIES[name])
    def run(raw):
        _assert_total(raw)

    run()


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
@given(st.builds(Click, user_id=st.text(ANY_CHAR, min_size=1, max_size=140), item_id=st.text(ANY_CHAR, max_size=8),
                 ts=st.integers(LIMITS.min_ts_ms, NOW), session_id=st.none() | st.text(ANY_CHAR, max_size=8)))
def test_what_the_parser_accepts_every_encoder_writes(candidate):
    """Records built from any characters: either rejected, or writable by every encoder."""
    try:
        fields = ("user_id", "item_id", "ts", "event", "session_id")
        record = parse_click(json.dumps({k: getattr(candidate, k) for k in fields
                                         if getattr(candidate, k) is not None}), LIMITS, NOW)
    except ContractError:
        return
    _assert_writable(record)
