"""Design ablation only (bench/stream.py --designs): the user-embedding job written the "obvious"
way, with the DataStream API. Not a product job: jobs/user_embeddings.py is.

    Kafka clicks ─► ParseEvents (per record) ─► key_by(user) ─► LastClicks: last max_len + slack
    clicks in Python keyed ValueState (per record) ─► AsyncDataStream.unordered_wait(EmbedAsync:
    MicroBatcher → the same UserTowerWriter) ─► dead letters ─► clicks.dlq

Same parser, same window size, same model call and KV writes as the product job; only the state
(Python keyed state instead of a SQL OVER window) and the way records reach Python differ.
"""

from __future__ import annotations

from typing import Any

from pyflink.common import Time, Types
from pyflink.datastream import AsyncDataStream, KeyedProcessFunction
from pyflink.datastream.functions import AsyncFunction
from pyflink.datastream.state import ValueStateDescriptor

from conf import Settings, load_settings
from jobs.flink_env import kafka_source, kafka_string_sink, make_env
from udfs.batcher import MicroBatcher
from udfs.parse import DLQ_TAG, ParseEvents
from udfs.user_tower import UserWindow


class LastClicks(KeyedProcessFunction):
    def __init__(self, size: int) -> None:
        self.size = size

    def open(self, runtime_context: Any) -> None:
        self.state = runtime_context.get_state(ValueStateDescriptor(
            "last_clicks", Types.TUPLE([Types.LIST(Types.STRING()), Types.LIST(Types.LONG())])))

    def process_element(self, click: Any, ctx: KeyedProcessFunction.Context):
        items, tss = self.state.value() or ([], [])
        items, tss = [*items, click.item_id][-self.size:], [*tss, click.ts][-self.size:]
        self.state.update((items, tss))
        yield click.user_id, items, tss


class EmbedAsync(AsyncFunction):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def open(self, runtime_context: Any) -> None:
        from models.artifact import load_artifact
        from recs.stores import open_store
        from udfs.user_tower import UserTowerWriter

        s = self.settings
        art = load_artifact(s.model.artifact_dir, expect_dim=s.model.dim, threads=s.threads.flink_worker)
        self.store = open_store(s)
        writer = UserTowerWriter(s, self.store, art)
        g = runtime_context.get_metrics_group().add_group("recs")
        self.batches, self.rows = g.counter("batches"), g.counter("batch_rows")

        def run(windows: list[UserWindow]) -> list[str | None]:
            out = writer.process(windows)
            self.batches.inc(1)
            self.rows.inc(len(windows))
            return out.dead_letters

        ue = s.user_embeddings
        self.batcher: MicroBatcher[UserWindow, str | None] = MicroBatcher(run, ue.max_batch, ue.max_wait_ms)

    async def async_invoke(self, value: Any) -> list[str]:
        dead = await self.batcher.submit(UserWindow(value[0], list(value[1]), list(value[2])))
        return [dead] if dead else []

    def close(self) -> None:
        self.batcher.close()
        self.store.close()


def main() -> None:
    settings = load_settings()
    env = make_env(settings)
    topics = settings.kafka.topics
    raw = kafka_source(env, settings, topics.clicks, group_id="user-embeddings-datastream", name="kafka: clicks")
    parsed = raw.process(ParseEvents("click", settings.contracts, topics.clicks)).name("parse").uid("parse")
    window = settings.model.max_len + settings.user_embeddings.reorder_slack
    last = (parsed.key_by(lambda c: c.user_id, key_type=Types.STRING())
            .process(LastClicks(window), output_type=Types.TUPLE([
                Types.STRING(), Types.LIST(Types.STRING()), Types.LIST(Types.LONG())]))
            .name("last clicks").uid("last-clicks"))
    ue = settings.user_embeddings
    dead = AsyncDataStream.unordered_wait(last, EmbedAsync(settings), Time.seconds(60), ue.async_concurrency,
                                          Types.STRING()).name("user tower").uid("user-tower")
    dead.union(parsed.get_side_output(DLQ_TAG)).sink_to(kafka_string_sink(settings, topics.clicks_dlq)) \
        .name("kafka: clicks.dlq").uid("sink-clicks-dlq")
    env.execute("user_embeddings_datastream")


if __name__ == "__main__":
    main()
