"""Values reach SQL through ClickHouse's parameter binding (``{name:Type}``), on the embedded engine too."""

from __future__ import annotations

import orjson

from config.settings import Settings
from ops import worker


def test_the_sink_binds_a_string_and_an_array_of_strings(chdb_sink):
    out = chdb_sink.query("SELECT {name:String} AS name, {skus:Array(String)} AS skus, "
                          "length({skus:Array(String)}) AS n",
                          "JSONEachRow", {"name": "it's \\ {x}", "skus": ["a", "b'c", ""]})
    assert orjson.loads(out) == {"name": "it's \\ {x}", "skus": ["a", "b'c", ""], "n": 3}


def test_a_bound_value_is_never_sql(chdb_sink):
    out = chdb_sink.query("SELECT count() AS n FROM system.one WHERE {v:String} = 'x'", "JSONEachRow",
                          {"v": "' OR 1=1 --"})
    assert orjson.loads(out) == {"n": 0}


def test_ops_query_binds_parameters_on_the_embedded_clickhouse(chdb_sink, tmp_path):
    # No worker announced for this deployment: `query` opens the path itself (chDB takes any number of
    # connections to the one path of its process).
    chdb_sink.migrate()  # queries never migrate: the schema is the worker's or `cdp migrate`'s
    s = Settings(clickhouse_url=chdb_sink.url, data_dir=tmp_path, topic_prefix="paramtest")
    out = worker.query(s, "SELECT {a:String} AS a, {b:Array(String)} AS b", "JSONEachRow", {"a": "x'", "b": ["y"]})
    assert orjson.loads(out) == {"a": "x'", "b": ["y"]}
    assert chdb_sink.query("SELECT 1", "TSV") == b"1\n"  # the test process's engine is still open
