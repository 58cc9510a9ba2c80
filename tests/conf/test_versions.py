"""Version lanes (conf/versions.py): what a new model version owns beside the live settings."""

import pytest

from conf.settings import PROJECT_ROOT, for_version, load_settings, to_env, with_overrides
from conf.versions import UnknownVersion

V2 = "tt-0123abcd4567"


def _with_lane(**lane):
    return with_overrides(load_settings(), versions={V2: {"artifact_dir": "artifacts/model-v2",
                                                          "shards": [["10.0.0.7:50061"]], **lane}})


def test_a_lane_derives_its_own_records_topic_index_and_groups():
    s = _with_lane()
    lane = for_version(s, V2)
    assert lane.kv.key_prefix == f"{s.kv.key_prefix}{V2}:"
    assert lane.kafka.topics.item_embeddings == f"item_embeddings.{V2}"
    assert lane.kafka.topics.partitions_of(lane.kafka.topics.item_embeddings) == \
        s.kafka.topics.partitions_of(s.kafka.topics.item_embeddings)
    assert lane.model.artifact_dir == PROJECT_ROOT / "artifacts/model-v2" and lane.model.version == V2
    assert (lane.index.shards, lane.index.host, lane.index.port) == ([["10.0.0.7:50061"]], "10.0.0.7", 50061)
    assert lane.index.model_version == V2 and lane.index.replica_id == f"{s.index.replica_id}.{V2}"
    # what both lanes share: the input topics, the stores, the cluster
    assert (lane.kafka.topics.clicks, lane.kafka.topics.listings) == (s.kafka.topics.clicks, s.kafka.topics.listings)
    assert (lane.redis, lane.flink) == (s.redis, s.flink)
    assert for_version(s, "") is s      # "" = the live settings as they are


def test_a_lane_may_name_its_prefix_topic_and_metrics_port():
    lane = for_version(_with_lane(key_prefix="v2/", item_embeddings="emb-v2", metrics_port=9465), V2)
    assert (lane.kv.key_prefix, lane.kafka.topics.item_embeddings, lane.index.metrics_port) == ("v2/", "emb-v2", 9465)


def test_an_unknown_or_unsafe_version_is_a_clear_error():
    s = _with_lane()
    with pytest.raises(UnknownVersion, match=f"'tt-other' has no lane.*known: {V2}"):
        for_version(s, "tt-other")
    with pytest.raises(UnknownVersion, match="letters, digits"):
        for_version(s, "v2; rm -rf")


def test_lanes_and_the_switch_travel_to_a_child_process(monkeypatch):
    s = with_overrides(_with_lane(), serve={"model_version": V2})
    for key, value in to_env(s).items():
        monkeypatch.setenv(key, value)
    again = load_settings()
    assert again == s and again.serve.model_version == V2
    assert for_version(again, again.serve.model_version) == for_version(s, V2)
