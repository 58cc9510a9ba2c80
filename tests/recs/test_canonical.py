"""The canonical click (recs/canonical.py): what the user-embedding job reads in Java is exactly what
the parser accepts, with the same values; everything else is left to the parser."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recs.canonical import TOKEN_TRIM, canonical_click_form
from recs.contracts import Click, ContractError, parse_click
from recs.local.poison import click_poison

from .test_contracts import ANY_CHAR, EXAMPLES, LIMITS, NOW, STRATEGIES, TS

FORM = canonical_click_form(LIMITS)
CANONICAL = FORM.python_pattern()


def _canonical_read(raw: bytes, now_ms: int = NOW):
    """What the job's Java path reads (jobs/user_embeddings.py): the value decoded as Flink does
    (a malformed byte becomes U+FFFD), the regex, the fields by their position among the '"'-split
    tokens (SPLIT_INDEX, TRIM), the ts bounds; None = left to the parser."""
    text = raw.decode("utf-8", "replace")
    m = CANONICAL.search(text)
    if m is None:
        return None
    tokens = text.split('"')
    user_id, item_id = tokens[FORM.tokens["user_id"]], tokens[FORM.tokens["item_id"]]
    ts = int(tokens[FORM.tokens["ts"]].strip(TOKEN_TRIM))
    assert (user_id, item_id, ts) == (m.group(FORM.groups["user_id"]), m.group(FORM.groups["item_id"]),
                                      int(m.group(FORM.groups["ts"])))
    if not LIMITS.min_ts_ms <= ts <= now_ms + LIMITS.max_future_skew_ms:
        return None
    return user_id, item_id, ts


def _assert_java_path_agrees(raw: bytes) -> None:
    read = _canonical_read(raw)
    if read is not None:
        record = parse_click(raw, LIMITS, NOW)      # raises if the Java path accepted a bad record
        assert (record.user_id, record.item_id, record.ts) == read, raw


def test_the_canonical_form_is_what_click_to_json_writes():
    assert _canonical_read(Click("u1", "i9", TS).to_json().encode()) == ("u1", "i9", TS)
    compact = json.dumps({"user_id": "u-1", "item_id": "Item#9", "ts": TS, "event": "click"}, separators=(",", ":"))
    assert _canonical_read(compact.encode()) == ("u-1", "Item#9", TS)
    longest = "u" * LIMITS.max_id_chars
    assert _canonical_read(Click(longest, "i", TS).to_json().encode()) == (longest, "i", TS)


@pytest.mark.parametrize("raw", [
    Click("u1", "i9", TS, session_id="s1").to_json(),           # optional field: the parser reads it
    json.dumps({"item_id": "i9", "user_id": "u1", "ts": TS, "event": "click"}),     # other order
    Click("ü", "i9", TS).to_json(), Click("u 1", "i9", TS).to_json(),               # non-ASCII, space
    json.dumps({"user_id": "u\\1", "item_id": "i9", "ts": TS, "event": "click"}),  # an escape
    Click("u1", "i9", TS).to_json() + "\n",                                         # JSON whitespace after
])
def test_other_valid_clicks_are_left_to_the_parser(raw):
    assert _canonical_read(raw.encode()) is None
    parse_click(raw, LIMITS, NOW)


@pytest.mark.parametrize("ts", [NOW + LIMITS.max_future_skew_ms + 1, LIMITS.min_ts_ms - 1])
def test_a_canonical_click_out_of_time_bounds_is_left_to_the_parser(ts):
    raw = Click("u1", "i9", ts).to_json().encode()
    assert _canonical_read(raw) is None
    with pytest.raises(ContractError, match="ts"):
        parse_click(raw, LIMITS, NOW)


@pytest.mark.parametrize("poison", click_poison(LIMITS), ids=lambda p: p.name)
def test_the_java_path_accepts_no_poison_record(poison):
    assert _canonical_read(poison.raw) is None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mutated clicks", "arbitrary bytes", "arbitrary JSON"])
def test_whatever_the_java_path_accepts_the_parser_accepts_with_the_same_values(name):
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
    @given(STRATEGIES[name])
    def run(raw):
        _assert_java_path_agrees(raw)

    run()


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.text(ANY_CHAR, min_size=1, max_size=12), st.text(ANY_CHAR, min_size=1, max_size=12),
       st.integers(0, 10**17), st.booleans(), st.sampled_from(["", "\n", " ", "\u2028", "\r", "}"]))
def test_near_canonical_clicks_agree(user, item, ts, ascii_only, tail):
    """Canonical-shaped text around any characters and numbers: the Java path and the parser agree."""
    raw = json.dumps({"user_id": user, "item_id": item, "ts": ts, "event": "click"}, ensure_ascii=ascii_only) + tail
    _assert_java_path_agrees(raw.encode("utf-8", "surrogatepass"))
