"""The broker of the local stack: Tansu (Kafka protocol, memory storage), and topic creation."""

from __future__ import annotations

import time
from typing import Any

from conf.addresses import split_hostport
from conf.settings import KafkaSettings, Settings
from recs.local.processes import (
    OneProcess,
    StackError,
    alive,
    ensure_free,
    is_loopback,
    port_open,
    spawn,
    wait_healthy,
)


class Broker(OneProcess):
    """Tansu, a Kafka-protocol broker with memory storage: topics vanish when it stops."""

    name = "broker"
    managed: bool

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        servers = settings.kafka.bootstrap_servers.split(",")
        self.host, self.port = split_hostport(servers[0])
        self.managed = len(servers) == 1 and is_loopback(self.host)
        self.dir = settings.stack.run_dir / "broker"
        self.binary = settings.stack.stack_dir / "bin" / "tansu"

    @property
    def address(self) -> str:
        return self.s.kafka.bootstrap_servers

    def healthy(self) -> bool:
        if not port_open(self.host, self.port):
            return False
        try:
            from confluent_kafka.admin import AdminClient

            admin = AdminClient({**self.s.kafka.client_config(), "socket.timeout.ms": 1000})
            admin.list_topics(timeout=2)
            return True
        except Exception:  # noqa: BLE001 - any failure here simply means "not healthy yet"
            return False

    def start(self) -> None:
        if not self.binary.exists():
            raise StackError(f"{self.binary} is missing: run `make setup` first")
        ensure_free(self.host, self.port, "RECS_KAFKA__BOOTSTRAP_SERVERS")
        url = f"tcp://{self.host}:{self.port}"
        proc = spawn([str(self.binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                       "--storage-engine", "memory://tansu/"], self.log_file, self.pid_file)
        wait_healthy("broker (tansu)", self.healthy, self.s.stack.ready_timeout_s, alive(proc.pid), self.log_file)
        create_topics(self.s)

    def detail(self) -> str:
        try:
            from confluent_kafka.admin import AdminClient

            topics = AdminClient(self.s.kafka.client_config()).list_topics(timeout=2).topics
            return f"{len(topics)} topics"
        except Exception as e:  # noqa: BLE001 - status must report, not crash
            return f"error: {e}"


def create_topics(settings: Settings, names: list[str] | None = None) -> list[str]:
    """Create the topics in settings (with their partition counts); existing ones are left alone."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    topics = settings.kafka.topics
    admin = AdminClient(settings.kafka.client_config())
    names = names or topics.all_names()
    futures = admin.create_topics([NewTopic(n, num_partitions=topics.partitions_of(n),
                                            replication_factor=topics.replication_factor) for n in names])
    created = []
    for name, fut in futures.items():
        try:
            fut.result(timeout=settings.kafka.client_timeout_s)
            created.append(name)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise StackError(f"could not create topic {name}: {e}") from e
    return created


def read_topic(kafka: KafkaSettings, topic: str, expect: int, timeout_s: float = 30.0,
               group: str = "recs-reader") -> list[Any]:
    """Up to ``expect`` messages of a topic from offset 0 of every partition, tombstones included,
    within ``timeout_s`` (assigned partitions, no group join: Tansu joins groups slowly)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**kafka.client_config(), "group.id": group, "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(kafka.topics.partitions_of(topic))])
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < expect and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            out.append(m)
    c.close()
    return out
