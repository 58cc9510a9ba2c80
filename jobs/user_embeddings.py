"""user_embeddings: a click moves the user's embedding in the KV store within a second (phase 3).

    recs jobs submit user-embeddings [--parallelism P] [--from-savepoint PATH]

    clicks (Kafka, raw bytes)
      ├─ canonical clicks (Click.to_json's form): read in Java, one match of the contract's regex
      └─ every other value: ParseClicks (the contract parser, row at a time) ──(bad)─────► clicks.dlq
           └─ valid clicks of both paths, event time = ts
                ├─ per user: the last max_len + reorder_slack clicks        (LastNClicks, jobs/java: one keyed-
                │   in arrival order                                        state value a user; RocksDB, TTL)
                │   ══ rescale: the user tower in a task of its own (user_embeddings.tower_task) ══
                │     └─ EmbedUsers | EmbedUsersAsync (user_embeddings.udf)
                │          last-N by event time → item vectors (KV item:{id}, cached)
                │          → one ONNX user-tower run per batch → KV user:{id} ──(refused)──► clicks.dlq
                └─ per item: clicks in a sliding event-time window (HOP, watermark ts - max delay)
                     └─ all counts of one slide in one row → WriteTrending → KV trending

Why this shape (docs/streaming.md, bench/results/stream.json "designs"): per-record Python work is what
limits a PyFlink job on a small machine, so the state lives in Flink's own (Java) operators and Python
sees whole batches: the user tower runs once per Arrow batch (or per micro-batch of concurrent async
calls), the KV reads and writes once per batch; a click in the canonical form never enters Python
before its window does.

Delivery: Kafka offsets and the window state are in the same checkpoints (exactly-once state); the KV
writes and the dead-letter topic are at-least-once, and the KV write is idempotent (the event-time
rule: an equal event_ts replaces, an older one is refused), so after a failure the replayed clicks
rewrite the same records: each user's record equals the one computed from the whole click log
(ARCHITECTURE.md invariant 5, tests/integration/test_user_embeddings.py).
"""

from __future__ import annotations

from pyflink.datastream import DataStream
from pyflink.java_gateway import get_gateway
from pyflink.table import DataTypes, Schema, StatementSet, StreamTableEnvironment, Table
from pyflink.table.udf import udf, udtf

from conf import Settings, load_settings
from jobs.flink_env import (
    create_kafka_table,
    internal_stream,
    job_name,
    kafka_options,
    make_env,
    run_or_explain,
    sql_string,
    through_data_stream,
)
from recs.canonical import TOKEN_TRIM, canonical_click_form
from udfs.user_embedding import PARSED, EmbedUsers, EmbedUsersAsync, ParseClicks, WriteTrending

GROUP_ID = "user-embeddings"
RAW_TEXT = "CAST(`value` AS STRING)"    # the raw click as SQL text (a bad UTF-8 byte becomes U+FFFD)


def table_config(settings: Settings) -> dict[str, str]:
    """Table API options of this job (all from settings)."""
    ue = settings.user_embeddings
    return {
        "pipeline.name": job_name(settings, "user_embeddings"),  # `recs jobs list` shows it (else "insert-into_...")
        # false: every Python operator starts its own worker process (Flink's BeamPythonFunctionRunner shares
        # one per slot when Python workers draw on managed memory), so the parse and the user tower overlap
        "python.fn-execution.memory.managed": "false" if ue.worker_per_operator else "true",
        # uids from the plan, so a savepoint maps back onto the same operators after a restart
        "table.exec.uid.generation": "ALWAYS",
        "table.exec.state.ttl": f"{ue.state_ttl_s} s" if ue.state_ttl_s else "0 ms",
        "python.fn-execution.arrow.batch.size": str(ue.arrow_batch_size),
        # async UDF (DEPENDENCIES.md): with retries or a timeout on, PyFlink starts a timer per record
        # and batches stay ~8; timeouts and retries are handled by the KV client and the sink policy.
        "table.exec.async-scalar.max-concurrent-operations": str(ue.async_concurrency),
        "table.exec.async-scalar.buffer-capacity": str(ue.async_concurrency),
        "table.exec.async-scalar.retry-strategy": "NO_RETRY",
        "table.exec.async-scalar.timeout": "0 s",
        # a parallel instance without clicks must not hold the trending watermark back
        "table.exec.source.idle-timeout": "10 s",
        # trending windows: at parallelism 1 a local pre-aggregation saves no shuffle; it would be a
        # task of its own behind the union of the two read paths (a network hop for every click)
        "table.optimizer.agg-phase-strategy": "ONE_PHASE" if settings.flink.parallelism == 1 else "AUTO",
    }


def _canonical(settings: Settings, s: str, field: str | None = None) -> str:
    """SQL: whether the raw click text ``s`` is in the canonical form (``recs.canonical.canonical_click_form``),
    or, with ``field``, that field (user_id, item_id: STRING; ts: BIGINT) read by its position.

    The position is right only where the form matched: elsewhere it is whatever sits there (the ts
    NULL when not a number), so a query tests the form once and reads the fields beside it. One
    regex match a click, not one a field: regex matching was 55 % of the read path's profile with
    five (docs/streaming.md). ``REGEXP``, not ``REGEXP_EXTRACT``: Flink 2.3's REGEXP_EXTRACT compiles
    its pattern on every call, REGEXP keeps compiled patterns in a cache."""
    form = canonical_click_form(settings.contracts)
    if field is None:
        return f"REGEXP({s}, {sql_string(form.pattern)})"
    token = f"SPLIT_INDEX({s}, '\"', {form.tokens[field]})"
    if field == "ts":
        return f"TRY_CAST(TRIM(BOTH {sql_string(TOKEN_TRIM)} FROM {token}) AS BIGINT)"
    return token


def click_columns(settings: Settings) -> str:
    """Columns of the clicks source: the raw value, and the event time the trending windows use.

    The watermark is declared here, in the source, so that Flink tracks it per Kafka partition (the
    minimum over partitions, ``table.exec.source.idle-timeout`` for a partition without clicks): a
    watermark computed after the partitions are merged would jump ahead on one partition's clicks
    and drop the others' as late. ``rt`` reads ``ts`` in Java (the canonical form's digits, else
    ``JSON_VALUE``); it only places a record in time (the parser decides validity): unreadable → 0
    (never moves the watermark), later than the contract accepts (``max_future_skew_ms``) → capped,
    so one hostile record cannot push it ahead."""
    c = settings.contracts
    # CASE, not COALESCE: Flink evaluates every argument of COALESCE, and JSON_VALUE is the costly one
    ts = (f"CASE WHEN {_canonical(settings, RAW_TEXT)} THEN {_canonical(settings, RAW_TEXT, 'ts')} "
          f"ELSE COALESCE(TRY_CAST(JSON_VALUE({RAW_TEXT}, '$.ts') AS BIGINT), 0) END")
    now_cap = f"CAST(UNIX_TIMESTAMP() AS BIGINT) * 1000 + {c.max_future_skew_ms}"
    delay = settings.user_embeddings.trending_max_delay_ms
    return (f"`value` BYTES, "
            f"`rt` AS TO_TIMESTAMP_LTZ(LEAST({ts}, {now_cap}), 3), "
            f"WATERMARK FOR `rt` AS `rt` - INTERVAL '{delay / 1000:.3f}' SECOND")


def read_clicks(t_env: StreamTableEnvironment, settings: Settings, clicks_table: str) -> None:
    """Views ``clicks_valid`` (user_id, item_id, ts, pt, rt) and ``clicks_dead`` (dead) of the raw clicks.

    Two paths, one contract. A click in the canonical form (what ``Click.to_json`` and every producer
    of this project write) is read in Java: the regex generated from the contract's field table, and
    its ``ts`` bounds. Every other value (another field order, escapes, non-ASCII ids, a session id,
    anything malformed) goes to ``ParseClicks``, the Python parser, row at a time. A record the Java
    path accepts is one the parser accepts with the same values (tests/recs/test_canonical.py), so the
    split changes the cost, never the outcome (bench/results/stream.json "parse_paths").

    The split must send each record one way: ``now_ms`` is read once a record, before the DataStream
    round trip, so that both branches test the same value (``UNIX_TIMESTAMP()`` in each branch would
    be read twice, and a click at the future limit could go both ways or neither). The round trip
    also keeps the Python call on the rows that need it (a filter written after a Python call in one
    SQL query is applied after it)."""
    c = settings.contracts
    read = t_env.sql_query(f"""
        SELECT `value`, {_canonical(settings, RAW_TEXT)} AS canonical,
               {_canonical(settings, RAW_TEXT, 'user_id')} AS user_id,
               {_canonical(settings, RAW_TEXT, 'item_id')} AS item_id, {_canonical(settings, RAW_TEXT, 'ts')} AS ts,
               CAST(UNIX_TIMESTAMP() AS BIGINT) * 1000 AS now_ms, rt
        FROM `{clicks_table}`""")
    schema = (Schema.new_builder()
              .column("value", DataTypes.BYTES()).column("canonical", DataTypes.BOOLEAN())
              .column("user_id", DataTypes.STRING()).column("item_id", DataTypes.STRING())
              .column("ts", DataTypes.BIGINT()).column("now_ms", DataTypes.BIGINT())
              .column("rt", DataTypes.TIMESTAMP_LTZ(3))
              .column_by_expression("java_path", f"canonical IS TRUE AND ts >= {c.min_ts_ms} "
                                                 f"AND ts <= now_ms + {c.max_future_skew_ms}")
              .watermark("rt", "SOURCE_WATERMARK()")
              .build())
    t_env.create_temporary_view("clicks_read", through_data_stream(t_env, read, schema))
    t_env.create_temporary_function("parse_clicks", udtf(ParseClicks(settings), result_types=PARSED))
    parsed = t_env.sql_query("""
        SELECT p.user_id, p.item_id, p.ts, p.dead, rt
        FROM clicks_read, LATERAL TABLE(parse_clicks(`value`)) AS p(user_id, item_id, ts, dead)
        WHERE java_path IS NOT TRUE""")
    # The parsed rows through a round trip of their own: what follows is planned more than once (the
    # user tower's own task is fed through a DataStream, see build), and each plan would otherwise run
    # its own copy of the parser. The union stays in SQL, so it feeds each branch's exchange directly.
    schema = (Schema.new_builder()
              .column("user_id", DataTypes.STRING()).column("item_id", DataTypes.STRING())
              .column("ts", DataTypes.BIGINT()).column("dead", DataTypes.STRING())
              .column("rt", DataTypes.TIMESTAMP_LTZ(3)).watermark("rt", "SOURCE_WATERMARK()")
              .build())
    t_env.create_temporary_view("clicks_parsed", through_data_stream(t_env, parsed, schema))
    t_env.create_temporary_view("clicks_valid", t_env.sql_query("""
        SELECT user_id, item_id, ts, PROCTIME() AS pt, rt FROM (
            SELECT user_id, item_id, ts, rt FROM clicks_read WHERE java_path
            UNION ALL
            SELECT user_id, item_id, ts, rt FROM clicks_parsed WHERE dead IS NULL)"""))
    t_env.create_temporary_view("clicks_dead", t_env.sql_query(
        "SELECT dead FROM clicks_parsed WHERE dead IS NOT NULL"))


WINDOWS = (Schema.new_builder().column("user_id", DataTypes.STRING())
           .column("items", DataTypes.ARRAY(DataTypes.STRING()))
           .column("tss", DataTypes.ARRAY(DataTypes.BIGINT())).build())


def last_clicks(t_env: StreamTableEnvironment, settings: Settings) -> Table:
    """(user_id, items, tss) once a valid click: the user's last ``max_len + reorder_slack`` clicks in
    arrival order, the new one last, kept in Flink state (checkpointed, ``state_ttl_s``).

    ``last_n_state = "keyed"``: ``LastNClicks`` (jobs/java), one keyed-state value a user (the clicks
    as one byte array), read and written once a click. ``"over"``: the SQL OVER window, whose
    ROWS-bounded operator keeps every row in a map state and the two ARRAY_AGG accumulators beside
    it, several state accesses and two list (de)serializations a click. Same rows out; the CPU a
    click differs (bench/results/stream.json ``ablations.last_n_state``)."""
    ue = settings.user_embeddings
    rows = settings.model.max_len + ue.reorder_slack
    if ue.last_n_state == "keyed":
        jvm = get_gateway().jvm
        last_n = jvm.org.recstream.flink.LastNClicks
        clicks = internal_stream(t_env, t_env.sql_query("SELECT user_id, item_id, ts FROM clicks_valid"))
        j_windows = (clicks._j_data_stream.keyBy(last_n.byUser(), last_n.keyType())
                     .process(last_n(rows, ue.state_ttl_s * 1000), last_n.outputType())
                     .name("LastNClicks").uid("user-last-clicks"))
        stream = DataStream(j_windows)
        # rescale: the user tower in a task of its own (tower_task), as for the OVER window below
        return t_env.from_data_stream(stream.rescale() if ue.tower_task else stream, WINDOWS)
    windows = t_env.sql_query(f"""
        SELECT user_id, ARRAY_AGG(item_id) OVER w AS items, ARRAY_AGG(ts) OVER w AS tss
        FROM clicks_valid
        WINDOW w AS (PARTITION BY user_id ORDER BY pt ROWS BETWEEN {rows - 1} PRECEDING AND CURRENT ROW)""")
    if ue.tower_task:   # chained, the window's thread would wait for every bundle Python runs (docs/streaming.md)
        windows = through_data_stream(t_env, windows, WINDOWS, rescale=True)
    return windows


def build(t_env: StreamTableEnvironment, settings: Settings, clicks_table: str) -> Table:
    """Wire the job on a table of raw click values (column ``value`` BYTES, NULL for a null value).
    Returns the dead letters of every step as one STRING column (the KV writes happen inside the
    UDFs); tests swap the source and sinks."""
    ue = settings.user_embeddings
    read_clicks(t_env, settings, clicks_table)

    windows = last_clicks(t_env, settings)
    t_env.create_temporary_view("user_windows", windows)
    if ue.udf == "async":
        embed = udf(EmbedUsersAsync(settings), result_type=DataTypes.STRING())
    else:
        embed = udf(EmbedUsers(settings), result_type=DataTypes.STRING(), func_type="pandas")
    t_env.create_temporary_function("embed_users", embed)

    t_env.create_temporary_function("write_trending", udf(WriteTrending(settings), result_type=DataTypes.STRING()))
    t_env.create_temporary_view("item_counts", t_env.sql_query(f"""
        SELECT window_time AS hop_time, item_id, COUNT(*) AS clicks, MAX(ts) AS last_ts
        FROM TABLE(HOP(TABLE clicks_valid, DESCRIPTOR(rt), INTERVAL '{ue.trending_slide_s}' SECOND(9),
                       INTERVAL '{ue.trending_window_s}' SECOND(9)))
        GROUP BY window_start, window_end, window_time, item_id"""))
    t_env.create_temporary_view("trending_writes", t_env.sql_query(f"""
        SELECT write_trending(ARRAY_AGG(item_id), ARRAY_AGG(clicks), MAX(last_ts)) AS dead
        FROM TABLE(TUMBLE(TABLE item_counts, DESCRIPTOR(hop_time), INTERVAL '{ue.trending_slide_s}' SECOND(9)))
        GROUP BY window_start, window_end"""))
    dead = t_env.sql_query("""
        SELECT dead FROM clicks_dead
        UNION ALL
        SELECT dead FROM (SELECT embed_users(user_id, items, tss) AS dead FROM user_windows) WHERE dead IS NOT NULL
        UNION ALL
        SELECT dead FROM trending_writes WHERE dead IS NOT NULL""")
    return dead


def statements(settings: Settings) -> StatementSet:
    """The whole job on the Kafka topics in settings, ready to execute (or explain)."""
    t_env = StreamTableEnvironment.create(make_env(settings))
    for key, value in table_config(settings).items():
        t_env.get_config().set(key, value)
    topics = settings.kafka.topics
    clicks = create_kafka_table(t_env, "kafka: clicks", click_columns(settings),
                                kafka_options(settings, topics.clicks, GROUP_ID))
    dlq = create_kafka_table(t_env, "kafka: clicks.dlq", "`value` STRING", kafka_options(settings, topics.clicks_dlq))
    out = t_env.create_statement_set()
    out.add_insert(dlq, build(t_env, settings, clicks))
    return out


def main() -> None:
    """``python jobs/user_embeddings.py`` (what `recs jobs submit` runs); ``--explain`` prints the plan."""
    run_or_explain(statements(load_settings()))


if __name__ == "__main__":
    main()
