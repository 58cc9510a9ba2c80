"""Submission checks that run before `flink run` (no cluster needed)."""

import json

import pytest

from conf.settings import for_version, load_settings, with_overrides
from recs.local import flink_jobs


def _lane(tmp_path, holds):
    (tmp_path / "metadata.json").write_text(json.dumps({"model_version": holds}))
    s = with_overrides(load_settings(), versions={"tt-new": {"artifact_dir": str(tmp_path),
                                                             "shards": [["127.0.0.1:50061"]]}})
    return for_version(s, "tt-new")


def test_a_lane_with_another_versions_artifact_is_refused_before_submitting(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(flink_jobs.subprocess, "run", lambda *a, **k: ran.append(a))
    with pytest.raises(flink_jobs.FlinkError, match="holds 'tt-old'"):
        flink_jobs.submit(_lane(tmp_path, "tt-old"), "item-index")
    with pytest.raises(flink_jobs.FlinkError, match="cannot read"):
        flink_jobs.submit(with_overrides(_lane(tmp_path, "tt-new"), model={"artifact_dir": tmp_path / "none"}),
                          "item-index")
    assert ran == []
