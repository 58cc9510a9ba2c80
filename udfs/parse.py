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


class DeadLetterCounters:
    """``recs.dead_letters.<field>`` (``record`` for the whole record), each created when first
    needed, and ``recs.dead_letters.unexpected`` too when the parser raised what it should not."""

    def __init__(self, recs_group: Any) -> None:
        self._group = recs_group.add_group("dead_letters")
        self._by_field: dict[str, Any] = {}

    def count(self, error: ContractError) -> None:
        self._inc(error.field)
        if error.unexpected:
            self._inc("unexpected")

    def _inc(self, field: str) -> None:
        counter = self._by_field.get(field)
        if counter is None:
            name = "record" if field == "$" else "".join(c if c.isalnum() else "_" for c in field)
            counter = self._by_field[field] = self._group.counter(name)
        counter.inc()


class ParseEvents(ProcessFunction):
    def __init__(self, kind: EventKind, limits: ContractSettings, source_topic: str) -> None:
        self.kind: EventKind = kind
        self.limits = limits
        self.source_topic = source_topic

    def open(self, runtime_context: Any) -> None:
        group = runtime_context.get_metrics_group().add_group("recs")
        self._valid = group.counter("valid_records")
        self._nulls = group.counter("null_values")
        self._dead = DeadLetterCounters(group)

    def process_element(self, element: Row | bytes | None, ctx: ProcessFunction.Context):
        # Row(value) from jobs.flink_env.kafka_source; bare bytes | None where a test feeds them.
        value = element[0] if isinstance(element, Row) else element
        if value is None:
            self._nulls.inc()
            return
        record = parse_or_error(self.kind, value, self.limits)
        if isinstance(record, ContractError):
            self._dead.count(record)
            yield DLQ_TAG, dead_letter(value, record, self.source_topic)
            return
        self._valid.inc()
        yield record
