"""Small helpers for integration tests (reading a topic: ``recs.local.broker.read_topic``):

    wait_for(check, 60, "what")                  # poll until check() is truthy, or fail saying what
    untrained_artifact(tmp_path_factory, settings.model, "name", WORDS, 300)   # a real ONNX artifact
    use_settings(monkeypatch, settings)          # the CLI (CliRunner) reads these settings
    head, detail = job_rows(monkeypatch, settings, job_id)   # the job's two lines in `recs jobs list`
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")


def untrained_artifact(tmp_path_factory: Any, model: Any, name: str, words: Sequence[str], texts: int,
                       seed: int = 0) -> Path:
    """An artifact with random weights (``seed``) whose tokenizer learned ``texts`` titles of four
    random ``words``: real ONNX towers where the weights do not matter."""
    from models.export import export_untrained

    out = tmp_path_factory.mktemp(name)
    rng = random.Random(seed)
    export_untrained(model, out, [" ".join(rng.choice(words) for _ in range(4)) for _ in range(texts)], seed=seed)
    return Path(out)


def use_settings(monkeypatch: Any, settings: Any) -> None:
    """The CLI reads its settings from RECS_* variables: set them to ``settings`` for this test."""
    from conf.settings import to_env

    for key, value in to_env(settings).items():
        monkeypatch.setenv(key, value)


def job_rows(monkeypatch: Any, settings: Any, job_id: str) -> tuple[str, str]:
    """`recs jobs list` on ``settings``' cluster: the job's line and the line under it."""
    from typer.testing import CliRunner

    from recs.cli import app

    use_settings(monkeypatch, settings)
    out = CliRunner().invoke(app, ["jobs", "list"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith(job_id))
    return lines[row], lines[row + 1]
