"""What every Flink job needs before its operators: the environment, Kafka source and sink.

Settings decide everything here (DEPENDENCIES.md explains the choices):
- the Kafka connector jars and the project's own (``jobs/java``) come from ``stack.stack_dir/jars``
  (``make setup`` puts them there; ``env.add_jars`` is the way that reaches the Python gateway);
- Python workers run this interpreter (``python.executable``), else "No module named 'pyflink'";
- ``python.fn-execution.bundle.time/size`` bound freshness: the 1 s default alone costs a second;
- checkpoints every ``flink.checkpoint_interval_ms`` carry the source offsets, in files under
  ``flink.checkpoint_dir`` (the JobManager's memory refuses state over 5 MB);
- the restart strategy is bounded (``restart_config``): exponential delay, at most
  ``flink.restart_attempts`` restarts, then the job FAILS visibly instead of looping in RESTARTING.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pyflink.common import Configuration
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import KafkaRecordSerializationSchema, KafkaSink
from pyflink.table import Schema, StatementSet, StreamTableEnvironment, Table
from pyflink.util.java_utils import load_java_class

from conf.settings import PROJECT_ROOT, FlinkSettings, Settings

CONNECTOR_JARS = ("flink-connector-kafka.jar", "kafka-clients.jar")
PROJECT_JAR = "recs-flink.jar"      # jobs/java, built by `make setup` (recs/local/java_build.py)
JARS = (*CONNECTOR_JARS, PROJECT_JAR)


def restart_config(f: FlinkSettings) -> dict[str, str]:
    """The job's restart strategy: exponential delay, bounded (Flink configuration keys)."""
    return {
        "restart-strategy.type": "exponential-delay",
        "restart-strategy.exponential-delay.initial-backoff": f"{f.restart_initial_delay_ms} ms",
        "restart-strategy.exponential-delay.max-backoff": f"{f.restart_max_delay_ms} ms",
        "restart-strategy.exponential-delay.backoff-multiplier": "2.0",
        "restart-strategy.exponential-delay.attempts-before-reset-backoff": str(f.restart_attempts),
    }


def state_config(f: FlinkSettings) -> dict[str, str]:
    """Where keyed state lives and how it is checkpointed (Flink configuration keys).

    "rocksdb" keeps state serialized off the heap, in managed memory and local files, and each
    checkpoint uploads only the files written since the last one; "hashmap" keeps Java objects on the
    heap and writes all of them at every checkpoint. State that grows with the users seen belongs in
    RocksDB: on the heap it filled the old generation 2.8 minutes into 4,000 clicks/s held, and the
    job fell behind in garbage collection (docs/streaming.md, "Held load")."""
    config = {"state.backend.type": f.state_backend,
              "execution.checkpointing.dir": checkpoint_uri(f.checkpoint_dir)}
    if f.state_backend == "rocksdb":
        config["execution.checkpointing.incremental"] = "true"
    return config


def checkpoint_uri(checkpoint_dir: str) -> str:
    """``flink.checkpoint_dir`` as a URI: kept when it has a scheme, else a path under the project root."""
    if "://" in checkpoint_dir:
        return checkpoint_dir
    path = Path(checkpoint_dir)
    return (path if path.is_absolute() else PROJECT_ROOT / path).resolve().as_uri()


def make_env(settings: Settings) -> StreamExecutionEnvironment:
    f = settings.flink
    config = Configuration()
    for key, value in restart_config(f).items():
        config.set_string(key, value)
    config.set_string("python.execution-mode", f.python_execution_mode)
    config.set_string("python.fn-execution.bundle.time", str(f.bundle_time_ms))
    config.set_string("python.fn-execution.bundle.size", str(f.bundle_size))
    config.set_string("execution.checkpointing.storage", "filesystem")
    for key, value in state_config(f).items():
        config.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_python_executable(sys.executable)
    env.set_parallelism(f.parallelism)
    jars = []
    for name in JARS:
        path = settings.stack.stack_dir / "jars" / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `make setup` (it places the Kafka connector jars "
                                    f"and builds {PROJECT_JAR})")
        jars.append(path.resolve().as_uri())
    env.add_jars(*jars)
    if f.checkpoint_interval_ms > 0:
        env.enable_checkpointing(f.checkpoint_interval_ms)
    return env


def sql_string(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def job_name(settings: Settings, name: str) -> str:
    """What `recs jobs list` shows: the job's name, and its model version in a version lane (conf/versions.py)."""
    return f"{name} {settings.model.version}" if settings.model.version else name


def kafka_options(settings: Settings, topic: str, group_id: str | None = None) -> dict[str, str]:
    """Options of the Table API Kafka connector for ``topic``, values in the ``raw`` format.

    As a source (``group_id`` given) it resumes from the group's committed offsets, else the earliest
    (``group-offsets`` + ``auto.offset.reset``), or from ``flink.source_start_ms`` when set; offsets
    are committed on each checkpoint and kept in it (a job restored from one ignores the start mode).
    As a sink it is at-least-once (the producer flushes on each checkpoint)."""
    options = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": settings.kafka.bootstrap_servers,
        "value.format": "raw",
        **{f"properties.{k}": v for k, v in settings.kafka.java_properties().items()},
    }
    if group_id is not None:
        if settings.model.version:      # a version lane's jobs read the shared topics in groups of their own
            group_id = f"{group_id}.{settings.model.version}"
        options |= {"properties.group.id": group_id, "properties.auto.offset.reset": "earliest",
                    "properties.fetch.max.wait.ms": str(settings.kafka.fetch_max_wait_ms),
                    "scan.startup.mode": "group-offsets", "scan.topic-partition-discovery.interval": "10 s"}
        if settings.flink.source_start_ms:
            options |= {"scan.startup.mode": "timestamp",
                        "scan.startup.timestamp-millis": str(settings.flink.source_start_ms)}
        if settings.flink.source_offsets:       # a replay: exact offsets found by recs/local/replay.py
            options |= {"scan.startup.mode": "specific-offsets",
                        "scan.startup.specific-offsets": settings.flink.source_offsets}
        if settings.flink.source_stop_offsets:
            options |= {"scan.bounded.mode": "specific-offsets",
                        "scan.bounded.specific-offsets": settings.flink.source_stop_offsets,
                        "properties.commit.offsets.on.checkpoint": "false"}   # the live job's offsets stay
    else:
        options["sink.delivery-guarantee"] = "at-least-once"
    return options


def create_kafka_table(t_env: StreamTableEnvironment, name: str, columns: str, options: dict[str, str]) -> str:
    """``CREATE TEMPORARY TABLE`` with these columns and connector options; returns the table name
    (it shows in the operator's vertex name)."""
    table = "".join(c if c.isalnum() else "_" for c in name)
    with_clause = ", ".join(f"{sql_string(k)} = {sql_string(v)}" for k, v in options.items())
    t_env.execute_sql(f"CREATE TEMPORARY TABLE `{table}` ({columns}) WITH ({with_clause})")
    return table


def through_data_stream(t_env: StreamTableEnvironment, table: Table, schema: Schema, *,
                        rescale: bool = False) -> Table:
    """``table`` through a DataStream and back as ``schema`` declares it (its computed columns and
    watermark), rows kept in Flink's internal format (``RowData``) all the way.

    A round trip is how a job shares one plan between statements, reads a value once for two
    branches, or (``rescale``) gives what follows a task of its own. PyFlink's ``to_data_stream``
    would convert every row to an external ``Row`` (Java strings, boxed numbers) and
    ``from_data_stream`` back: two conversions and a slower serializer a row
    (bench/results/stream.json ``ablations``)."""
    stream = internal_stream(t_env, table)
    return t_env.from_data_stream(stream.rescale() if rescale else stream, schema)


def internal_stream(t_env: StreamTableEnvironment, table: Table) -> DataStream:
    """``table`` as a DataStream of Flink's internal rows (Java ``RowData``; Java operators only)."""
    row_data = load_java_class("org.apache.flink.table.data.RowData")
    j_type = table._j_table.getResolvedSchema().toPhysicalRowDataType().bridgedTo(row_data)
    return DataStream(t_env._j_tenv.toDataStream(table._j_table, j_type))


def kafka_source(env: StreamExecutionEnvironment, settings: Settings, topic: str, group_id: str,
                 name: str) -> DataStream:
    """Raw values of ``topic`` as ``Row(value)``: ``value`` is bytes, or None for a null value.

    Bytes, not strings: the parser then sees exactly what was produced (invalid UTF-8 reaches the
    dead-letter topic intact, base64-encoded). A null value (tombstone) reaches the parser, which
    counts it (metric ``recs.null_values``): the DataStream Kafka source would drop it inside its
    Java deserializer, where no metric sees it. So the source is the Table connector with the
    ``raw`` format (a null value is a row whose column is NULL), converted to a DataStream.
    """
    t_env = StreamTableEnvironment.create(env)
    table = create_kafka_table(t_env, name, "`value` BYTES", kafka_options(settings, topic, group_id))
    return t_env.to_data_stream(t_env.from_path(table))
    # Row(value=bytes | None); the planner names the source and gives it a stable uid


def kafka_string_sink(settings: Settings, topic: str) -> KafkaSink:
    """At-least-once Kafka sink of strings (UTF-8). A broker briefly down is the Java producer's to
    ride out (it retries until ``delivery.timeout.ms``); a longer outage fails the task, and the
    bounded restart strategy replays from the last checkpoint, so nothing is lost."""
    serializer = (KafkaRecordSerializationSchema.builder()
                  .set_topic(topic)
                  .set_value_serialization_schema(SimpleStringSchema())
                  .build())
    builder = (KafkaSink.builder()
               .set_bootstrap_servers(settings.kafka.bootstrap_servers)
               .set_record_serializer(serializer)
               .set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE))
    for key, value in settings.kafka.java_properties().items():
        builder = builder.set_property(key, value)
    return builder.build()


def run_or_explain(job: StatementSet) -> None:
    """A job script's ``main()``: execute the job (what `recs jobs submit` runs), or with
    ``--explain`` print its optimized plan instead."""
    if "--explain" in sys.argv:
        print(job.explain())
    else:
        job.execute()
