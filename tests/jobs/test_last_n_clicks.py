"""jobs/java LastNClicks: its encoding (through the gateway JVM, no job) and, in a local Flink run,
the same windows as the SQL OVER window it replaced (jobs/user_embeddings.py ``last_clicks``)."""

import pytest

from conf.settings import load_settings, with_overrides
from jobs.flink_env import PROJECT_JAR

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def last_n():
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import add_jars_to_context_class_loader

    jar = load_settings().stack.stack_dir / "jars" / PROJECT_JAR
    if not jar.exists():
        pytest.fail(f"{jar} is missing: `make setup` builds it (recs/local/java_build.py)")
    add_jars_to_context_class_loader([jar.resolve().as_uri()])
    return get_gateway().jvm.org.recstream.flink.LastNClicks


def _window(last_n, clicks: bytes | None):
    from pyflink.java_gateway import get_gateway

    row = last_n.window(get_gateway().jvm.org.apache.flink.table.data.StringData.fromString("u1"), clicks)
    items = [str(row.getArray(1).getString(i)) for i in range(row.getArray(1).size())]
    tss = list(row.getArray(2).toLongArray())
    return items, tss


def test_append_keeps_arrival_order_and_drops_the_oldest_beyond_rows(last_n):
    state = None
    for i, ts in enumerate([30, 10, 20, 40, 50]):
        state = last_n.append(state, f"i{i}".encode(), ts, 3)
    assert last_n.count(state) == 3
    assert _window(last_n, state) == (["i2", "i3", "i4"], [20, 40, 50])


def test_ids_of_any_length_and_script_come_back_byte_for_byte(last_n):
    ids = ["é-ü", "x" * 300, "商品-7", "a"]
    state = None
    for i, iid in enumerate(ids):
        state = last_n.append(state, iid.encode(), -i, 10)
    assert _window(last_n, state) == (ids, [0, -1, -2, -3])


def test_a_window_of_one_row_holds_the_newest_click(last_n):
    state = last_n.append(last_n.append(None, b"old", 1, 1), b"new", 2, 1)
    assert _window(last_n, state) == (["new"], [2])
    with pytest.raises(Exception, match="rows must be at least 1"):
        last_n(0, 0)


@pytest.mark.parametrize("mode", ["keyed", "over"])
def test_both_states_give_each_click_the_users_last_rows_in_arrival_order(mode):
    """A local Flink run of ``last_clicks`` on 3 users' clicks (one arriving out of event-time order):
    one row a click, the user's last max_len + reorder_slack clicks, arrival order, the new one last."""
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    from jobs.user_embeddings import last_clicks

    s = with_overrides(load_settings(), model={"max_len": 2},
                       user_embeddings={"reorder_slack": 1, "last_n_state": mode})
    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(1)
    env.add_jars((s.stack.stack_dir / "jars" / PROJECT_JAR).resolve().as_uri())
    t_env = StreamTableEnvironment.create(env)
    clicks = [("u1", "a", 1), ("u2", "b", 5), ("u1", "c", 3), ("u1", "d", 2), ("u3", "e", 9),
              ("u1", "f", 4), ("u2", "g", 6)]
    values = ", ".join(f"('{u}', '{i}', CAST({t} AS BIGINT))" for u, i, t in clicks)
    t_env.create_temporary_view("clicks_valid", t_env.sql_query(
        f"SELECT user_id, item_id, ts, PROCTIME() AS pt FROM (VALUES {values}) AS t(user_id, item_id, ts)"))
    with last_clicks(t_env, s).execute().collect() as rows:
        got = sorted((r[0], tuple(r[1]), tuple(r[2])) for r in rows)
    expected = []
    for n, (user, _, _) in enumerate(clicks):
        mine = [c for c in clicks[:n + 1] if c[0] == user][-3:]
        expected.append((user, tuple(c[1] for c in mine), tuple(c[2] for c in mine)))
    assert got == sorted(expected)
