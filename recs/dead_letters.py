"""Dead letters: what a job writes to ``<topic>.dlq`` for a rejected record. Nothing is lost: the
raw record travels in full (base64 when it is not UTF-8).

    dead_letter(raw, ContractError("ts", "missing"), "clicks")   # -> one JSON line, always UTF-8
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from recs.contracts import ContractError, encodable


def dead_letter(raw: bytes | str | None, error: ContractError, source_topic: str,
                now_ms: int | None = None, stage: str = "parse") -> str:
    """The dead-letter JSON for one rejected record; always encodes as UTF-8.

    ``{"source_topic", "stage", "field", "reason", "rejected_at", "raw" | "raw_b64"}``: ``raw`` is the
    record as text when it is valid UTF-8 (``null`` for a null value), else ``raw_b64`` holds its
    bytes in base64 (a str with lone surrogates: its bytes under UTF-8 "surrogatepass"). ``stage``
    says which step rejected it: ``parse`` or the sink's name (``sink:redis``).
    """
    doc: dict[str, Any] = {
        "source_topic": encodable(source_topic),
        "stage": encodable(stage),
        "field": encodable(error.field),
        "reason": encodable(error.reason),
        "rejected_at": int(time.time() * 1000) if now_ms is None else now_ms,
    }
    if isinstance(raw, str):
        try:
            raw.encode("utf-8")
            doc["raw"] = raw
        except UnicodeEncodeError:
            doc["raw_b64"] = base64.b64encode(raw.encode("utf-8", "surrogatepass")).decode("ascii")
    elif isinstance(raw, bytes):
        try:
            doc["raw"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            doc["raw_b64"] = base64.b64encode(raw).decode("ascii")
    else:
        doc["raw"] = None if raw is None else encodable(repr(raw))
    return json.dumps(doc, ensure_ascii=False)
