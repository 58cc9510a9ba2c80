"""What every Flink job needs before its operators: the environment, Kafka source and sink.

Settings decide everything here (DEPENDENCIES.md explains the choices):
- the Kafka connector jars come from ``stack.stack_dir/jars`` (``make setup`` puts them there;
  ``env.add_jars`` is the way that reaches the Python gateway);
- Python workers run this interpreter (``python.executable``), else "No module named 'pyflink'";
- ``python.fn-execution.bundle.time/size`` bound freshness: the 1 s default alone costs a second;
- checkpoints every ``flink.checkpoint_interval_ms`` carry the source offsets.
"""

from __future__ import annotations

import sys

from pyflink.common import Configuration, WatermarkStrategy
from pyflink.common.serialization import ByteArraySchema, SimpleStringSchema
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
)

from conf.settings import Settings

CONNECTOR_JARS = ("flink-connector-kafka.jar", "kafka-clients.jar")


def make_env(settings: Settings) -> StreamExecutionEnvironment:
    f = settings.flink
    config = Configuration()
    config.set_string("python.execution-mode", f.python_execution_mode)
    config.set_string("python.fn-execution.bundle.time", str(f.bundle_time_ms))
    config.set_string("python.fn-execution.bundle.size", str(f.bundle_size))
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_python_executable(sys.executable)
    env.set_parallelism(f.parallelism)
    jars = []
    for name in CONNECTOR_JARS:
        path = settings.stack.stack_dir / "jars" / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `make setup` (it places the Kafka connector jars)")
        jars.append(path.resolve().as_uri())
    env.add_jars(*jars)
    if f.checkpoint_interval_ms > 0:
        env.enable_checkpointing(f.checkpoint_interval_ms)
    return env


def _kafka_props(settings: Settings) -> dict[str, str]:
    props: dict[str, str] = {"security.protocol": settings.kafka.security_protocol}
    k = settings.kafka
    if k.sasl_mechanism:
        props["sasl.mechanism"] = k.sasl_mechanism
    if k.sasl_username and k.sasl_password:
        props["sasl.jaas.config"] = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{k.sasl_username}" password="{k.sasl_password.get_secret_value()}";')
    return props


def committed_or_earliest() -> KafkaOffsetsInitializer:
    """Committed group offsets, else earliest.

    PyFlink's ``KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST)`` looks
    up a *shaded* ``OffsetResetStrategy`` that the available connector jar (4.0.1-2.0, unshaded
    kafka-clients) does not have, so the Java initializer is built here directly.
    """
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    strategy = jvm.org.apache.kafka.clients.consumer.OffsetResetStrategy.EARLIEST
    initializer = jvm.org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer
    return KafkaOffsetsInitializer(initializer.committedOffsets(strategy))


def kafka_source(env: StreamExecutionEnvironment, settings: Settings, topic: str, group_id: str,
                 name: str) -> DataStream:
    """Raw values of ``topic`` as bytes; resumes from the group's committed offsets, else earliest.

    Bytes, not strings: the parser then sees exactly what was produced (invalid UTF-8 reaches the
    dead-letter topic intact, base64-encoded), and a null value (tombstone) is skipped by the
    connector instead of failing the job in a restart loop as ``SimpleStringSchema`` does. A null
    value carries no event, so nothing is lost.
    """
    builder = (KafkaSource.builder()
               .set_bootstrap_servers(settings.kafka.bootstrap_servers)
               .set_topics(topic)
               .set_group_id(group_id)
               .set_starting_offsets(committed_or_earliest())
               .set_value_only_deserializer(ByteArraySchema())
               .set_property("partition.discovery.interval.ms", "10000"))
    for key, value in _kafka_props(settings).items():
        builder = builder.set_property(key, value)
    return env.from_source(builder.build(), WatermarkStrategy.no_watermarks(), name)


def kafka_string_sink(settings: Settings, topic: str) -> KafkaSink:
    serializer = (KafkaRecordSerializationSchema.builder()
                  .set_topic(topic)
                  .set_value_serialization_schema(SimpleStringSchema())
                  .build())
    builder = (KafkaSink.builder()
               .set_bootstrap_servers(settings.kafka.bootstrap_servers)
               .set_record_serializer(serializer)
               .set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE))
    for key, value in _kafka_props(settings).items():
        builder = builder.set_property(key, value)
    return builder.build()
