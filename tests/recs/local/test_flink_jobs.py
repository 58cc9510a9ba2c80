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


def test_the_parallelism_asked_for_reaches_the_job_script(monkeypatch):
    """`flink run -p` alone is not enough: the job script rebuilds its settings from RECS_* variables
    and sets the environment's parallelism from them (jobs/flink_env.py make_env)."""
    calls = []

    def run(cmd, **kw):
        calls.append((cmd, kw["env"]))
        return flink_jobs.subprocess.CompletedProcess(cmd, 0, "Job has been submitted with JobID " + "ab" * 16, "")

    monkeypatch.setattr(flink_jobs.subprocess, "run", run)
    settings = with_overrides(load_settings(), flink={"parallelism": 1})
    assert flink_jobs.submit(settings, "user-embeddings", parallelism=2) == "ab" * 16
    cmd, env = calls[0]
    assert cmd[cmd.index("-p") + 1] == "2"
    assert env["RECS_FLINK__PARALLELISM"] == "2"
    flink_jobs.submit(settings, "user-embeddings")
    cmd, env = calls[1]
    assert cmd[cmd.index("-p") + 1] == "1" and env["RECS_FLINK__PARALLELISM"] == "1"
