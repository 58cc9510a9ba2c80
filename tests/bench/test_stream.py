"""bench/stream.py: how a sweep's rates become the headline ceilings and the job-to-peer ratio."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from conf.settings import PROJECT_ROOT


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_stream", PROJECT_ROOT / "bench" / "stream.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_ceilings_read_a_sweep_both_ways():
    stream = _load()
    by_rate = {
        "1000": {"flink": {"p99_ms": 300.0}, "plain_consumer": {"p99_ms": 100.0}},
        "4000": {"flink": {"p99_ms": 900.0}, "plain_consumer": {"p99_ms": 200.0}},
        "5000": {"flink": {"p99_ms": 1700.0}, "plain_consumer": {"p99_ms": 400.0}},
        "6000": {"flink": {"p99_ms": None, "error": "failed"}, "plain_consumer": {"p99_ms": 1300.0}},
        "7000": {"flink": {"p99_ms": 2300.0}, "plain_consumer": {"p99_ms": 600.0}},   # a lucky step
    }
    got = stream.ceilings(by_rate, ["flink", "plain_consumer"])
    assert got["max_rate_p99_under_1s"] == {"flink": 4000, "plain_consumer": 7000}
    assert got["sustained_p99_under_1s"] == {"flink": 4000, "plain_consumer": 5000}
    assert got["ratio_flink_to_peer"] == {"max_rate_p99_under_1s": 0.57, "sustained_p99_under_1s": 0.8,
                                          "every_round_p99_under_1s": 0.8}
    assert stream.ceilings({"500": {"flink": {"p99_ms": 1200.0}}}, ["flink"])["sustained_p99_under_1s"] == \
        {"flink": None}


def test_every_round_reading_needs_every_round_under_the_limit():
    stream = _load()
    by_rate = {
        "5000": {"flink": {"p99_ms": 500.0, "p99_ms_rounds": [640.0, 500.0]},
                 "plain_consumer": {"p99_ms": 250.0, "p99_ms_rounds": [320.0, 250.0]}},
        "6000": {"flink": {"p99_ms": 390.0, "p99_ms_rounds": [900.0, 390.0]},
                 "plain_consumer": {"p99_ms": 380.0, "p99_ms_rounds": [380.0, None]}},   # a failed round
        "7000": {"flink": {"p99_ms": 800.0, "p99_ms_rounds": [800.0, 2100.0]},        # best round only
                 "plain_consumer": {"p99_ms": 210.0, "p99_ms_rounds": [210.0, 600.0]}},
    }
    got = stream.ceilings(by_rate, ["flink", "plain_consumer"])
    assert got["sustained_p99_under_1s"] == {"flink": 7000, "plain_consumer": 7000}
    assert got["every_round_p99_under_1s"] == {"flink": 6000, "plain_consumer": 5000}
    assert got["ratio_flink_to_peer"]["every_round_p99_under_1s"] == 1.2
