"""A user's last-N clicks from the window Flink keeps for them: plain Python, tested without Flink.

The job's state (``LastNClicks`` in jobs/java, or the SQL OVER window behind ``last_n_state = "over"``)
holds the user's most recent ``max_len + reorder_slack`` clicks in arrival order, as two parallel
arrays (item ids and event times). The model was trained on
clicks in event-time order, ties in log order, every click a position (a repeated click on the same
item is a repeated position: models/data.py keeps them), so here:

    order the window by event time, stably (arrival order breaks ties), keep the last ``n``.

A click that arrives late, by up to ``reorder_slack`` of the user's clicks, lands where its event
time puts it; one later than that is already outside the window (documented in docs/streaming.md).
``newest_ts`` is the event time of the newest click the list reflects: the KV record's ``event_ts``,
which the store's event-time rule compares (an older write never replaces a newer one).
"""

from __future__ import annotations

from collections.abc import Sequence


def last_n(items: Sequence[str], tss: Sequence[int], n: int) -> tuple[list[str], int]:
    """(item ids, most recent last; event time of the newest click). ``items`` and ``tss`` are
    parallel, in arrival order, and not empty."""
    if len(items) != len(tss):
        raise ValueError(f"{len(items)} items but {len(tss)} timestamps")
    if not items:
        raise ValueError("an empty window has no last-N")
    order = sorted(range(len(items)), key=lambda i: tss[i])  # stable: arrival order breaks ties
    kept = order[-n:]
    return [items[i] for i in kept], int(tss[order[-1]])
