"""`recs stack up` twice is harmless, status is healthy, `down` leaves no process behind —
on a stack of its own (own ports, own run folder)."""

import psutil

from conf.settings import with_overrides
from recs.local.processes import free_port
from recs.local.stack import Stack


def test_up_twice_status_and_down_leave_nothing(test_settings, tmp_path):
    s = with_overrides(test_settings,
                       kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"},
                       redis={"port": free_port()},
                       flink={"rest_port": free_port(), "rpc_port": free_port()},
                       stack={"run_dir": tmp_path / "run"})
    stack = Stack(s)
    try:
        first = stack.up()
        assert [(st.name, st.state) for st in first] == [("broker", "healthy"), ("redis", "healthy"),
                                                         ("flink", "healthy")]
        assert "5 topics" in first[0].detail and "1 taskmanager(s)" in first[2].detail
        pids = [st.pid for st in first]
        second = stack.up()  # harmless: nothing restarted
        assert [st.pid for st in second] == pids and all(st.ok for st in second)
        everything = stack.leftovers()
        assert len(everything) >= 4  # tansu, redis, jobmanager, taskmanager
    finally:
        left = stack.down()
    assert left == []
    assert not any(psutil.pid_exists(p) for p in everything)
    assert [st.state for st in stack.status()] == ["down", "down", "down"]
