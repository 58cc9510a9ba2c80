"""The canonical form of a click: what ``Click.to_json`` writes (the field table's order, ASCII ids).

    form = canonical_click_form(settings.contracts)    # form.pattern (Java regex), form.groups

A streaming job may read such a record without the Python parser (jobs/user_embeddings.py applies
this regex inside Flink); every other value goes through ``recs.contracts.parse_click``. The regex is
generated from the contract's field table, so the contract stays the one definition, and whatever it
accepts (with the ts bounds) the parser accepts with the same values (tests/recs/test_canonical.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from conf.settings import ContractSettings
from recs.contracts import CLICK_FIELDS

# Id characters the canonical form allows: printable ASCII except space, '"' and '\' (no escapes, no
# whitespace, no control character, nothing a UTF-8 decoder could have replaced).
CANONICAL_ID_CHARS = r"!#-\[\]-~"
# A timestamp: a JSON integer without sign or leading zero; 16 digits fit a signed 64-bit integer.
CANONICAL_TS_DIGITS = 16
# What surrounds the ts in its token of a canonical click split on '"' (``: 1700000000000, ``).
TOKEN_TRIM = " :,}"


@dataclass(frozen=True, slots=True)
class CanonicalForm:
    """``pattern`` (Java regex syntax, ``\\z`` = the very end) and the capture group of each field
    the job reads. Every string it matches whose ``ts`` is in ``[min_ts_ms, now + max_future_skew_ms]``
    is a click ``parse_click`` accepts with the same field values (tests/recs/test_canonical.py
    checks this on canonical, near-canonical and hostile records).

    ``tokens``: where each field's value is once the string is split on ``"``, for a string the pattern
    matched (its ids hold no quote): an id is the whole token, the ts is its token less the separators
    ``TOKEN_TRIM`` (``: 1700000000000, ``). Reading fields by position costs a split, not a regex match."""

    pattern: str
    groups: dict[str, int]
    tokens: dict[str, int]

    def python_pattern(self) -> re.Pattern[str]:
        """The same pattern for Python's ``re`` (its end of string is ``\\Z``)."""
        return re.compile(self.pattern.replace(r"\z", r"\Z"))


def canonical_click_form(limits: ContractSettings) -> CanonicalForm:
    """The canonical click, generated from ``CLICK_FIELDS``: ``{"user_id": "u1", "item_id": "i9",
    "ts": 1700000000000, "event": "click"}`` (one optional space after ':' and ',', as ``json.dumps``
    writes them or compact). Optional fields are not in it: a click with a ``session_id`` is parsed
    by ``parse_click``. ``$`` is not used: Java's ``$`` also matches before a final line terminator
    (U+2028 included, which is not JSON whitespace)."""
    parts: list[str] = []
    groups: dict[str, int] = {}
    tokens: dict[str, int] = {}
    token = 0                               # split on '"': token 0 is '{', a field's name is the next
    size = 2                                # {}
    for name, kind, required in CLICK_FIELDS:
        if not required:
            continue
        if kind == "id":
            value, longest = f'"([{CANONICAL_ID_CHARS}]{{1,{limits.max_id_chars}}})"', limits.max_id_chars + 2
        elif kind == "ts":
            value, longest = f"([1-9][0-9]{{0,{CANONICAL_TS_DIGITS - 1}}})", CANONICAL_TS_DIGITS
        elif kind.startswith("enum:") and len(kind[5:].split(",")) == 1:
            value, longest = '"' + re.escape(kind[5:]) + '"', len(kind[5:]) + 2
        else:
            raise AssertionError(f"no canonical form for a {kind} field")
        if kind in ("id", "ts"):
            groups[name] = len(groups) + 1
            tokens[name] = token + (2 if kind == "ts" else 3)   # "name"<: 17, >  or  "name"<: >"value"
        token += 2 if kind == "ts" else 4
        parts.append(f'"{name}": ?{value}')
        size += len(name) + 5 + longest        # "name": value,
    if size > limits.max_record_bytes:     # the parser would refuse a record this long
        raise AssertionError(f"a canonical click can be {size} bytes, over max_record_bytes")
    return CanonicalForm(r"^\{" + ", ?".join(parts) + r"\}\z", groups, tokens)
