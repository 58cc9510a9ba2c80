"""Fixtures for the model tests: a small synthetic catalogue (recs.local.data.synth) and a tiny model
trained on it in a few seconds, shared by the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

from conf import load_settings
from conf.settings import ModelSettings


def tiny_settings(tmp: Path, **overrides: object) -> ModelSettings:
    """Small enough to train in seconds on 2 cores; big enough to learn colour synonyms."""
    base = load_settings().model.model_dump()
    # 40 epochs of 20k clicks take ~20 s; seeds 0, 1, 2 all learned the colour synonyms
    # (test_text.py) with these values. The epoch count, not the time budget, ends training,
    # so the result does not depend on how busy the machine is. One torch thread: with two, on a
    # machine whose two cores were busy, this training once took over 10 minutes instead of ~20 s.
    base |= dict(artifact_dir=tmp / "model", checkpoint_dir=tmp / "ck", dim=32, hidden=64,
                 max_len=10, vocab_size=400, max_tokens=16, heads=2, layers=1, dropout=0.0,
                 batch_size=32, lr=0.01, max_epochs=40, patience=40, max_train_minutes=10.0,
                 seed=0, threads=1)
    base |= overrides
    return ModelSettings(**base)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recs.local.data.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, events=20_000, seed=7, progress=False)
    return out


@pytest.fixture(scope="session")
def synth_ds(synth_dir: Path):
    from models.data import load_dataset

    return load_dataset(synth_dir)


@pytest.fixture(scope="session")
def trained(synth_ds, tmp_path_factory: pytest.TempPathFactory):
    """The tiny two-tower model trained on synth_ds, with its checkpoint written."""
    from models.data import leave_last_out
    from models.train import train

    tmp = tmp_path_factory.mktemp("tiny")
    cfg = tiny_settings(tmp)
    return train(synth_ds, leave_last_out(synth_ds), cfg, progress=False,
                 checkpoint=cfg.checkpoint_dir / "model.pt")


@pytest.fixture(scope="session")
def artifact_dir(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.export import export

    out = tmp_path_factory.mktemp("artifact")
    export(trained, out, {"note": "test"})
    return out


@pytest.fixture(scope="session")
def make_tiny_settings():
    """The tiny_settings function, for tests that build their own model."""
    return tiny_settings
