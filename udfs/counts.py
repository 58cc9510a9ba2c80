"""Per-user click counts in keyed state: the foundation's trivial stateful job.

``ClickCount`` is plain Python (tested without Flink); ``CountClicks`` is the keyed function that
keeps one ``ClickCount`` per user in Flink ValueState (checkpointed, never an instance dict).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction
from pyflink.datastream.state import ValueStateDescriptor

from recs.contracts import Click


@dataclass
class ClickCount:
    clicks: int = 0
    last_ts: int = 0

    def add(self, click: Click) -> ClickCount:
        return ClickCount(self.clicks + 1, max(self.last_ts, click.ts))


class CountClicks(KeyedProcessFunction):
    def open(self, runtime_context: Any) -> None:
        self.state = runtime_context.get_state(
            ValueStateDescriptor("click_count", Types.TUPLE([Types.LONG(), Types.LONG()])))

    def process_element(self, click: Click, ctx: KeyedProcessFunction.Context):
        current = self.state.value()
        count = ClickCount(*current) if current else ClickCount()
        count = count.add(click)
        self.state.update((count.clicks, count.last_ts))
        yield click.user_id, count.clicks, count.last_ts
        # (user_id, clicks, last_ts)
