import os

import pydantic
import pytest

from conf.addresses import split_hostport
from conf.settings import PROJECT_ROOT, Settings, load_settings, override, to_env, with_overrides


def test_defaults_are_the_embedded_stack_on_loopback():
    s = load_settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert (s.redis.host, s.flink.jobmanager_host) == ("127.0.0.1", "127.0.0.1")
    assert s.flink.rest_url == f"http://127.0.0.1:{s.flink.rest_port}"
    assert s.stack.run_dir == PROJECT_ROOT / ".run"  # relative paths resolve against the project


def test_environment_overrides_nested_fields(monkeypatch):
    monkeypatch.setenv("RECS_KAFKA__BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("RECS_KV__BACKEND", "aerospike")
    monkeypatch.setenv("RECS_AEROSPIKE__HOSTS", '["as-1:3000", "as-2:3000"]')
    monkeypatch.setenv("RECS_REDIS__PASSWORD", "s3cret")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert (s.kv.backend, s.aerospike.hosts) == ("aerospike", ["as-1:3000", "as-2:3000"])
    assert s.redis.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)  # secrets never show in logs


def test_config_file_is_deep_merged_over_defaults(tmp_path, monkeypatch):
    f = tmp_path / "prod.toml"
    f.write_text('[flink]\njobmanager_host = "flink-jm"\n[kafka.topics]\nclicks = "prod.clicks"\n')
    monkeypatch.setenv("RECS_CONFIG", str(f))
    s = load_settings()
    assert s.flink.rest_url == f"http://flink-jm:{s.flink.rest_port}"
    assert s.kafka.topics.clicks == "prod.clicks"
    assert s.kafka.topics.listings == "listings"  # untouched keys keep their defaults


def test_missing_config_file_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("RECS_CONFIG", "/nonexistent.toml")
    with pytest.raises(FileNotFoundError, match="RECS_CONFIG=/nonexistent.toml"):
        load_settings()


def test_settings_are_frozen_and_validated(monkeypatch):
    s = load_settings()
    with pytest.raises(pydantic.ValidationError):
        s.redis.port = 1  # type: ignore[misc]
    monkeypatch.setenv("RECS_REDIS__PORT", "70000")
    with pytest.raises(pydantic.ValidationError, match="redis.port"):
        load_settings()
    monkeypatch.delenv("RECS_REDIS__PORT")
    monkeypatch.setenv("RECS_FLINK__PYTHON_EXECUTION_MODE", "fast")
    with pytest.raises(pydantic.ValidationError, match="'process' or 'thread'"):
        load_settings()


def test_to_env_rebuilds_the_same_settings(monkeypatch):
    s = with_overrides(load_settings(), redis={"port": 7001, "password": "pw"},
                       kafka={"bootstrap_servers": "10.0.0.1:9093"})
    for key in [k for k in os.environ if k.startswith("RECS_")]:
        monkeypatch.delenv(key)
    for key, value in to_env(s).items():
        monkeypatch.setenv(key, value)
    assert load_settings() == s
    assert isinstance(s, Settings)


def test_split_hostport():
    assert split_hostport("127.0.0.1:9092") == ("127.0.0.1", 9092)
    assert split_hostport("[::1]:9092") == ("::1", 9092)


def test_split_hostport_default_port_and_missing_port():
    assert split_hostport("db1", default_port=3000) == ("db1", 3000)
    assert split_hostport("[::1]", default_port=3000) == ("::1", 3000)
    assert split_hostport("db1:3100", default_port=3000) == ("db1", 3100)
    with pytest.raises(ValueError, match="has no port"):
        split_hostport("db1")


def test_kafka_java_properties_carry_the_same_security_settings(monkeypatch):
    monkeypatch.setenv("RECS_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RECS_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("RECS_KAFKA__SASL_USERNAME", "u")
    monkeypatch.setenv("RECS_KAFKA__SASL_PASSWORD", "p")
    k = load_settings().kafka
    props = k.java_properties()
    assert props["security.protocol"] == k.client_config()["security.protocol"] == "SASL_SSL"
    assert props["sasl.mechanism"] == "PLAIN"
    assert props["sasl.jaas.config"].endswith('username="u" password="p";')


def test_override_of_a_section_is_validated_like_the_section():
    index = load_settings().index
    flat = override(index, {"kind": "Flat", "port": 0})
    assert (flat.kind, flat.port, flat.dim) == ("Flat", 0, index.dim)
    with pytest.raises(pydantic.ValidationError, match="kind"):
        override(index, {"kind": "Annoy"})
    with pytest.raises(pydantic.ValidationError, match="no_such_field"):
        override(index, {"no_such_field": 1})
