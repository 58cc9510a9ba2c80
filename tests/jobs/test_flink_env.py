from conf.settings import load_settings, with_overrides
from jobs.flink_env import state_config


def test_rocksdb_state_is_checkpointed_incrementally():
    s = with_overrides(load_settings(), flink={"state_backend": "rocksdb"})
    config = state_config(s.flink)
    assert config["state.backend.type"] == "rocksdb"
    assert config["execution.checkpointing.incremental"] == "true"
    assert config["execution.checkpointing.dir"].startswith("file:/")


def test_heap_state_has_no_incremental_checkpoints():
    s = with_overrides(load_settings(), flink={"state_backend": "hashmap", "checkpoint_dir": "s3://bucket/ckpt"})
    config = state_config(s.flink)
    assert config["state.backend.type"] == "hashmap"
    assert "execution.checkpointing.incremental" not in config
    assert config["execution.checkpointing.dir"] == "s3://bucket/ckpt"
