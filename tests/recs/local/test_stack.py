import socket

import pytest

from conf.settings import load_settings, with_overrides
from recs.local.broker import Broker
from recs.local.flink_cluster import Flink
from recs.local.processes import StackError, is_loopback
from recs.local.redis_server import Redis
from recs.local.stack import Stack


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("10.0.0.5") and not is_loopback("kafka-1")


def test_remote_services_are_external_never_started():
    s = with_overrides(load_settings(), kafka={"bootstrap_servers": "kafka-1:9092,kafka-2:9092"},
                       redis={"host": "redis.internal"}, flink={"jobmanager_host": "flink-jm"})
    assert not Broker(s).managed and not Redis(s).managed and not Flink(s).managed
    assert [st.state for st in Stack(s).status()] == ["external"] * 3


def test_port_taken_by_another_process_is_a_clear_error(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        s = with_overrides(load_settings(), redis={"port": port}, stack={"run_dir": tmp_path})
        with pytest.raises(StackError, match=f"port {port} on 127.0.0.1 is already in use.*RECS_REDIS__PORT"):
            Redis(s).start()


def test_unknown_service_is_rejected():
    with pytest.raises(StackError, match="unknown services"):
        Stack(load_settings(), ("broker", "zookeeper"))


def test_taskmanager_config_carries_the_memory_split(tmp_path):
    import yaml

    s = with_overrides(load_settings(), stack={"run_dir": tmp_path},
                       flink={"taskmanager_memory": "3072m", "managed_memory_fraction": 0.25})
    cfg = yaml.safe_load((Flink(s).write_config() / "config.yaml").read_text())
    assert cfg["taskmanager"]["memory"]["process"]["size"] == "3072m"
    assert cfg["taskmanager"]["memory"]["managed"]["fraction"] == 0.25
