"""Analysts' queries never write: ClickHouse's readonly, a read-only statement check, and no migrations first."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analytics.insights import COST_COLUMNS as ANALYTICS_COST_COLUMNS
from sinks.clickhouse import QueryRefused, chdb_holder, error_line
from streams.admin import COST_COLUMNS, cost_lines

ROOT = Path(__file__).resolve().parents[2]

WRITES = [
    "INSERT INTO cdp.channel_costs (day, source, medium, campaign, cost, currency, updated_at) "
    "VALUES ('2026-01-01', 'ads', 'cpc', '', 1, 'EUR', now())",
    "CREATE TABLE cdp.analyst_scratch (a UInt8) ENGINE = Memory",
    "DROP TABLE cdp.channel_costs",
    "TRUNCATE TABLE cdp.channel_costs",
    "ALTER TABLE cdp.channel_costs DELETE WHERE 1",
    "OPTIMIZE TABLE cdp.channel_costs FINAL",
    "KILL QUERY WHERE 1",
    "SYSTEM DROP MARK CACHE",
    "SET readonly = 0",
    "SELECT 1 SETTINGS readonly = 0",
]


def _costs(sink) -> int:
    return int(sink.query("SELECT count() FROM cdp.channel_costs", "TabSeparated"))


@pytest.fixture()
def sink(chdb_sink):
    chdb_sink.migrate()
    return chdb_sink


@pytest.mark.parametrize("sql", WRITES)
def test_a_write_is_refused_and_nothing_changes(sink, sql):
    before = _costs(sink)
    with pytest.raises(Exception) as exc:  # QueryRefused, or ClickHouse's READONLY
        sink.read_query(sql, "TabSeparated")
    assert isinstance(exc.value, QueryRefused) or "readonly" in str(exc.value).lower()
    assert _costs(sink) == before
    assert sink.rows("SELECT count() FROM system.tables WHERE database = 'cdp' AND name = 'analyst_scratch'") == [(0,)]


@pytest.mark.parametrize("sql", ["SELECT 1 INTO OUTFILE {path}", "INSERT INTO FUNCTION file({path}, 'CSV') SELECT 1",
                                 "SHOW TABLES FROM cdp INTO OUTFILE {path}", "EXPLAIN SELECT 1 INTO OUTFILE {path}"])
def test_no_file_is_written(sink, tmp_path, sql):
    # The embedded engine, like clickhouse-local, writes these under readonly: the statement check refuses them.
    target = tmp_path / "out.tsv"
    with pytest.raises(QueryRefused):
        sink.read_query(sql.format(path=f"'{target}'"), "TabSeparated")
    assert not target.exists()


def test_the_workers_own_statements_still_write_after_a_refused_read(sink):
    with pytest.raises(QueryRefused):
        sink.read_query(WRITES[0], "TabSeparated")
    before = _costs(sink)
    sink.query(WRITES[0], "")  # the sink's own client: readonly is the reader's alone
    assert _costs(sink) == before + 1


@pytest.mark.parametrize("sql,expected", [
    ("SELECT count() FROM cdp.events WHERE event = {e:String}", b"0\n"),
    ("SELECT has({skus:Array(String)}, 'b')", b"1\n"),
    ("SHOW TABLES FROM cdp LIKE 'channel_costs'", b"channel_costs\n"),
    ("DESCRIBE TABLE cdp.channel_costs", None),
    ("EXISTS TABLE cdp.events", b"1\n"),
    ("EXPLAIN SELECT 1", None),
    ("WITH 1 AS x SELECT x UNION ALL SELECT 2 ORDER BY 1", b"1\n2\n"),
    ("SELECT 1 SETTINGS max_threads = 1", b"1\n"),  # readonly=2: query settings still work
])
def test_reads_work(sink, sql, expected):
    out = sink.read_query(sql, "TabSeparated", {"e": "x'y", "skus": ["a", "b"]})
    if expected is not None:
        assert out == expected
    else:
        assert out


def test_a_parse_error_is_clickhouses_placed_in_the_analysts_text(sink):
    with pytest.raises(QueryRefused) as exc:
        sink.read_query("SELEC 1", "TabSeparated")
    assert str(exc.value).startswith("Code: 62.") and "position 7" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_error_line_is_clickhouses_message_without_prefix_or_stack():
    server = RuntimeError("HTTPDriver for http://h:8123 received ClickHouse error code 60\n"
                          " Code: 60. DB::Exception: Unknown table cdp.nope. (UNKNOWN_TABLE) (version 24.3)\n"
                          "Stack trace:\n0. DB::Exception::Exception() @ 0x1")
    assert error_line(server) == "Code: 60. DB::Exception: Unknown table cdp.nope. (UNKNOWN_TABLE) (version 24.3)"
    assert error_line(ValueError("plain")) == "plain"


def test_cost_columns_are_the_analytics_ones():
    assert COST_COLUMNS == ANALYTICS_COST_COLUMNS


def test_cost_lines_take_cost_rows_only():
    row = {"day": "2026-01-01", "source": "ads", "medium": "cpc", "campaign": "", "cost": 1.5, "currency": "EUR"}
    assert len(cost_lines([row])) == 1
    for bad in [{**row, "cost": -1}, {**row, "cost": "1"}, {**row, "day": "01/01/2026"}, {**row, "extra": 1},
                {k: v for k, v in row.items() if k != "currency"}, {**row, "source": 1}]:
        with pytest.raises(ValueError):
            cost_lines([bad])
    with pytest.raises(ValueError):
        cost_lines({"rows": row})


def _cdp(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdp_cli.main", *args], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _env(tmp_path: Path, ch: Path) -> dict[str, str]:
    return {"CDP_CLICKHOUSE_URL": f"chdb://{ch}", "CDP_DATA_DIR": str(tmp_path), "CDP_TOPIC_PREFIX": "readonly"}


@pytest.mark.parametrize("exists", [False, True])
def test_cdp_sql_on_an_empty_path_says_so_and_creates_no_schema(tmp_path, exists):
    ch = tmp_path / "clickhouse"
    if exists:
        ch.mkdir()
    r = _cdp("sql", "SELECT count() FROM cdp.events", env=_env(tmp_path, ch))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"error: no cdp schema at chdb://{ch}: run `cdp worker` or `cdp migrate` "
                                             "first"], r.stderr
    assert ch.exists() == exists
    if exists:  # opened to look, and left without the schema
        probe = subprocess.run(
            [sys.executable, "-c", "import sys, clickhouse_connect; c = clickhouse_connect.get_client("
             "interface='chdb', path=sys.argv[1]); print(c.command(\"SELECT count() FROM system.databases "
             "WHERE name = 'cdp'\"))", str(ch)], capture_output=True, text=True, timeout=120, check=True)
        assert probe.stdout.strip() == "0"


def test_cdp_sql_names_another_process_that_holds_the_path(tmp_path):
    ch = tmp_path / "clickhouse"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, clickhouse_connect as cc; c = cc.get_client(interface='chdb', "
         "path=sys.argv[1]); print('open', flush=True); time.sleep(120)", str(ch)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        assert chdb_holder(ch) is not None and chdb_holder(ch)[0] == holder.pid  # type: ignore[index]
        started = time.monotonic()
        r = _cdp("sql", "SELECT 1", env=_env(tmp_path, ch))
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"held by another process (pid {holder.pid}:" in lines[0], r.stderr
    assert "Another server instance" not in r.stderr
    assert took < 30  # said at once, not after the worker wait
