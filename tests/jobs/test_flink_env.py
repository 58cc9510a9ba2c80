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



def test_a_round_trip_keeps_values_and_schema_in_internal_rows():
    """A local (in-process) Flink run: values of every kind come back as they went, the schema's
    computed column and watermark apply, and the DataStream between carries RowData, not Row."""
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import DataTypes, Schema, StreamTableEnvironment

    from jobs.flink_env import internal_stream, through_data_stream

    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(1)
    t_env = StreamTableEnvironment.create(env)
    table = t_env.sql_query("""
        SELECT k, CAST(v AS BIGINT) AS v, ARRAY[COALESCE(k, '-'), 'x'] AS arr,
               TO_TIMESTAMP_LTZ(CAST(v AS BIGINT), 3) AS rt
        FROM (VALUES ('a', 1000), ('b', 2000), (CAST(NULL AS STRING), 3000)) AS t(k, v)""")
    row_class = internal_stream(t_env, table)._j_data_stream.getType().getTypeClass().getName()
    assert row_class == "org.apache.flink.table.data.RowData"
    schema = (Schema.new_builder().column("k", DataTypes.STRING()).column("v", DataTypes.BIGINT())
              .column("arr", DataTypes.ARRAY(DataTypes.STRING())).column("rt", DataTypes.TIMESTAMP_LTZ(3))
              .column_by_expression("v2", "v * 2").watermark("rt", "rt - INTERVAL '1' SECOND").build())
    back = through_data_stream(t_env, table, schema, rescale=True)
    assert "*ROWTIME*" in back._j_table.getResolvedSchema().toString()
    t_env.create_temporary_view("back", back)
    with t_env.sql_query("SELECT k, v, arr, v2, SECOND(rt) FROM back").execute().collect() as rows:
        got = sorted((r[0] or "", r[1], list(r[2]), r[3], r[4]) for r in rows)
    assert got == [("", 3000, ["-", "x"], 6000, 3), ("a", 1000, ["a", "x"], 2000, 1), ("b", 2000, ["b", "x"], 4000, 2)]
