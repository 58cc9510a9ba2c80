"""Parse + validate raw Kafka values inside a Flink job; bad records go to a side output.

The logic is ``recs.contracts``; this is the thin Flink wrapper: valid records are emitted as the
contract's dataclass, rejected ones as a dead-letter JSON (reason, field, raw record) on
``DLQ_TAG``, and each rejection is counted in the Flink metric ``recs.dead_letters.<field>``.
"""

from __future__ import annotations

from typing import Any

from pyflink.common import Types
from pyflink.datastream import OutputTag, ProcessFunction

from conf.settings import ContractSettings
from recs.contracts import PARSERS, ContractError, dead_letter

DLQ_TAG = OutputTag("dead-letters", Types.STRING())


class ParseEvents(ProcessFunction):
    def __init__(self, kind: str, limits: ContractSettings, source_topic: str) -> None:
        self.kind = kind
        self.limits = limits
        self.source_topic = source_topic
        self._parse = PARSERS[kind]
        self._dead: dict[str, Any] = {}

    def open(self, runtime_context: Any) -> None:
        self._group = runtime_context.get_metrics_group().add_group("recs")
        self._valid = self._group.counter("valid_records")

    def _count_dead(self, field: str) -> None:
        counter = self._dead.get(field)
        if counter is None:
            counter = self._dead[field] = self._group.add_group("dead_letters").counter(
                "record" if field == "$" else field.replace(".", "_"))
        counter.inc()

    def process_element(self, value: bytes, ctx: ProcessFunction.Context):
        try:
            record = self._parse(value, self.limits)
        except ContractError as e:
            self._count_dead(e.field)
            yield DLQ_TAG, dead_letter(value, e, self.source_topic)
            return
        self._valid.inc()
        yield record
