"""Pure parts of `recs replay`: the time argument and the connector's specific-offsets value (the
range itself is found against a real broker: tests/integration/test_replay.py)."""

from __future__ import annotations

import pytest
import typer

from recs.commands.replay import parse_time
from recs.local.replay import Range, offsets_spec


def test_parse_time_takes_earliest_epoch_ms_and_iso_utc_by_default():
    assert parse_time(None) is None and parse_time("earliest") is None
    assert parse_time("1790812800000") == 1790812800000
    assert parse_time("2026-10-01T00:00:00") == 1790812800000
    assert parse_time("2026-10-01T02:00:00+02:00") == 1790812800000
    with pytest.raises(typer.BadParameter, match="expected 'earliest'"):
        parse_time("yesterday")


def test_offsets_spec_and_range_sizes():
    ranges = [Range(0, 5, 9), Range(1, 7, 7)]
    assert offsets_spec(ranges, "start") == "partition:0,offset:5;partition:1,offset:7"
    assert offsets_spec(ranges, "stop") == "partition:0,offset:9;partition:1,offset:7"
    assert [r.records for r in ranges] == [4, 0]
