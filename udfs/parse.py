"""Parse + validate raw Kafka values inside a Flink job; bad records go to a side output.

The logic is ``recs.contracts.parse_or_error`` (total: it never raises); this is the thin Flink
wrapper. Valid records are emitted as the contract's dataclass; rejected ones as a dead-letter JSON
(reason, field, raw record) on ``DLQ_TAG``, each counted in the Flink metric
``recs.dead_letters.<field>`` (``record`` for the whole record), and in
``recs.dead_letters.unexpected`` too when the parser raised something it was not meant to (a bug:
the record is still dead-lettered with the exception's type and message). A null value (Kafka
tombstone) carries no event: it is counted in ``recs.null_values`` and dropped.

Input: ``Row(value=bytes | None)`` as ``jobs.flink_env.kafka_source`` yields it, or bare bytes/None.
"""

from __future__ import annotations

from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import OutputTag, ProcessFunction

from conf.settings import ContractSettings
from recs.contracts import ContractError, EventKind, parse_or_error
from recs.dead_letters import dead_letter

DLQ_TAG = OutputTag("dead-letters", Types.STRING())


class ParseEvents(ProcessFunction):
    def __init__(self, kind: EventKind, limits: ContractSettings, source_topic: str) -> None:
        self.kind: EventKind = kind
        self.limits = limits
        self.source_topic = source_topic
        self._dead: dict[str, Any] = {}

    def open(self, runtime_context: Any) -> None:
        self._group = runtime_context.get_metrics_group().add_group("recs")
        self._valid = self._group.counter("valid_records")
        self._nulls = self._group.counter("null_values")

    def _count_dead(self, field: str) -> None:
        counter = self._dead.get(field)
        if counter is None:
            name = "record" if field == "$" else "".join(c if c.isalnum() else "_" for c in field)
            counter = self._dead[field] = self._group.add_group("dead_letters").counter(name)
        counter.inc()

    def process_element(self, element: Row | bytes | None, ctx: ProcessFunction.Context):
        # Row(value) from jobs.flink_env.kafka_source; bare bytes | None where a test feeds them.
        value = element[0] if isinstance(element, Row) else element
        if value is None:
            self._nulls.inc()
            return
        record = parse_or_error(self.kind, value, self.limits)
        if isinstance(record, ContractError):
            self._count_dead(record.field)
            if record.unexpected:
                self._count_dead("unexpected")
            yield DLQ_TAG, dead_letter(value, record, self.source_topic)
            return
        self._valid.inc()
        yield record
