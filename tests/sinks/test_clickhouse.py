"""The ClickHouse sink on real embedded ClickHouse (chDB). One engine path per process: one sink for the module."""

from __future__ import annotations

import threading

import pytest

from core.envelope import Entry
from core.rows import event_row, row_dict
from sinks.clickhouse import EVENT_COLUMNS, PLAIN_INPUT_MIN_ROWS, migrations


@pytest.fixture()
def sink(chdb_sink):
    return chdb_sink


def test_migrations_apply_once_in_order(sink):
    applied = sink.migrate()
    # The session's engine may have been migrated by an earlier test: either way, all are applied exactly once.
    assert [m.version for m in applied] == sorted(m.version for m in applied)
    assert sink.migrate() == []
    versions = [r[0] for r in sink.rows("SELECT version FROM cdp.schema_migrations FINAL ORDER BY version")]
    assert versions == [m.version for m in migrations()]  # idempotent: a worker runs it at every start
    tables = {r[0] for r in sink.rows("SELECT name FROM system.tables WHERE database = 'cdp'")}
    assert {"events", "actions", "action_feedback", "events_daily", "schema_migrations"} <= tables


def test_a_retried_insert_adds_nothing_and_daily_counts_follow(sink):
    sink.migrate()
    lines = [event_row(Entry.of_event("user_id:u1", 1_790_000_000_000 + i, 1_790_000_000_000, (0, i),
                             {"type": "track", "message_id": f"m{i}", "event": "retry_probe",
                              "identities": {"phone": "13800138000"}}), "o_1") for i in range(3)]
    sink.insert_json("events", lines, EVENT_COLUMNS, token="t:0:1:events", compact=True)
    sink.insert_json("events", lines, EVENT_COLUMNS, token="t:0:1:events", compact=True)  # the retry after a crash
    assert sink.rows("SELECT count() FROM cdp.events WHERE oneid = 'o_1'") == [(3,)]
    assert sink.rows("SELECT sum(events), uniqMerge(persons) FROM cdp.events_daily WHERE event = 'retry_probe'") \
        == [(3, 1)]
    masked = sink.rows("SELECT identities['phone'] FROM cdp.events WHERE oneid = 'o_1' LIMIT 1")[0][0]
    assert masked == "138****8000"
    assert row_dict(lines[0])["identities"] == {"phone": "138****8000"}


def test_inserts_of_different_partitions_run_side_by_side_and_a_retry_still_adds_nothing(sink):
    """The person stage carries out several partitions' batches at once, each insert on its own connection."""
    sink.migrate()

    def lines(partition: int) -> list[bytes]:
        return [event_row(Entry.of_event(f"user_id:p{partition}-{i % 50}", 1_790_000_000_000 + i, 1_790_000_000_000,
                                (partition, i), {"type": "track", "message_id": f"side-{partition}-{i}",
                                                 "event": "side_by_side"}), f"o_side{partition}{i % 50}")
                for i in range(5000)]

    batches = {p: lines(p) for p in range(4)}
    inside = threading.Barrier(2)  # two inserts at a time: both threads are inside an insert together

    def insert(partitions: list[int]) -> None:
        inside.wait()
        for p in partitions:
            for _ in range(2):  # the second is the retry after a crash: same token, nothing added
                sink.insert_json("events", batches[p], EVENT_COLUMNS, token=f"side:{p}:0-9:events", compact=True,
                                 unique_keys=True)

    threads = [threading.Thread(target=insert, args=([0, 2],)), threading.Thread(target=insert, args=([1, 3],))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sink.rows("SELECT count(), uniqExact(message_id) FROM cdp.events WHERE event = 'side_by_side'") == \
        [(20_000, 20_000)]


def test_an_embedded_insert_reads_low_cardinality_columns_as_text_and_stores_them_as_the_table_says(sink, tmp_path,
                                                                                                  monkeypatch):
    """Embedded, a large insert of event rows reads LowCardinality columns as plain String and converts them per
    block (0.5 µs of CPU per row less): the stored values, the table's types and the deduplication of a retry by its
    token are unchanged, and the file the rows pass through is removed."""
    import tempfile

    sink.migrate()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert sink._plain_input("events", EVENT_COLUMNS) is not None
    n = PLAIN_INPUT_MIN_ROWS

    def lines(first: int) -> list[bytes]:
        return [event_row(Entry.of_event("user_id:lc", 1_790_000_000_000 + i, 1_790_000_000_000, (0, i), {
            "type": "track", "message_id": f"lc{i}", "event": f"lc_probe_{i % 2}",
            "context": {"campaign": {"source": "baidu", "medium": "cpc", "name": "n'1"}}}), "o_lc")
            for i in range(first, first + n)]

    sink.insert_json("events", lines(0), EVENT_COLUMNS, token="lc:0:1:events", compact=True, unique_keys=True)
    # The retry of that batch after a crash, whatever it holds, adds nothing: the token decides, not the rows.
    sink.insert_json("events", lines(n), EVENT_COLUMNS, token="lc:0:1:events", compact=True, unique_keys=True)
    assert sink.rows("SELECT type, event, campaign_source, campaign_medium, campaign_name, count() FROM cdp.events "
                     "WHERE oneid = 'o_lc' GROUP BY ALL ORDER BY event") == [
        ("track", "lc_probe_0", "baidu", "cpc", "n'1", n // 2), ("track", "lc_probe_1", "baidu", "cpc", "n'1", n // 2)]
    assert sink.rows("SELECT sum(events) FROM cdp.events_daily WHERE event LIKE 'lc_probe_%'") == [(n,)]
    assert sink.rows("SELECT toTypeName(event), toTypeName(campaign_source) FROM cdp.events LIMIT 1") == [
        ("LowCardinality(String)", "LowCardinality(String)")]
    assert list(tmp_path.iterdir()) == []


def test_an_engine_whose_file_function_cannot_read_the_rows_keeps_the_direct_insert(chdb_sink, monkeypatch):
    from sinks.clickhouse import ClickHouseSink

    probe = ClickHouseSink.__new__(ClickHouseSink)
    probe.__dict__.update(chdb_sink.__dict__, _structures={}, _file_reads=None)

    def refuse(sql, parameters=None):
        raise RuntimeError("file() is restricted to user_files_path")

    monkeypatch.setattr(probe, "rows", refuse)
    assert probe._plain_input("events", EVENT_COLUMNS) is None and probe._file_reads is False


# Failures, provoked for real: what clickhouse-connect (embedded and over HTTP) raises, and what classify makes of it.

def _event_line(i: int, **change) -> bytes:
    import orjson

    cells = dict(zip(EVENT_COLUMNS, ["o_fail", f"fail-{i}", "track", "fail_probe", "", 1_790_000_000.0 + i,
                                     1_790_000_000.0, {}, {}, 0, i, "", "", "", ""], strict=True))
    cells.update(change)
    return orjson.dumps(list(cells.values()))


def _raised(fn):
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("no failure")


@pytest.mark.parametrize(("line", "code"), [
    (b'["o_fail", "fail-x", "track"', 27),  # a malformed line: CANNOT_PARSE_INPUT_ASSERTION_FAILED
    (_event_line(1, raw_partition="three"), 27),  # a string in a UInt32 column
    (_event_line(2, raw_partition=-1), 72),  # a negative number in an unsigned column: CANNOT_PARSE_NUMBER
    (_event_line(3, ts="not a time"), 41),  # CANNOT_PARSE_DATETIME
])
@pytest.mark.parametrize("rows", [2, PLAIN_INPUT_MIN_ROWS])  # the direct insert, and the one through a file
def test_rows_clickhouse_refuses_for_their_data_are_rejected_and_nothing_of_their_insert_goes_in(sink, line, code,
                                                                                                rows):
    from sinks.clickhouse import Failure, classify, error_code

    sink.migrate()
    lines = [_event_line(i) for i in range(10, 10 + rows)]
    exc = _raised(lambda: sink.insert_json("events", [*lines, line], EVENT_COLUMNS, token=f"fail:{code}:{rows}",
                                           compact=True))
    assert (classify(exc), error_code(exc)) == (Failure.rejected, code)
    assert sink.rows("SELECT count() FROM cdp.events WHERE oneid = 'o_fail'") == [(0,)]


def test_a_missing_table_or_column_is_transient_not_the_rows_fault(sink):
    from sinks.clickhouse import ACTION_COLUMNS, Failure, classify, error_code

    sink.migrate()
    no_table = _raised(lambda: sink.insert_json("no_such_table", [_event_line(0)], EVENT_COLUMNS, compact=True))
    no_column = _raised(lambda: sink.insert_json("actions", [b'{"nope": 1}'], [*ACTION_COLUMNS[:-1], "nope"]))
    assert [(classify(e), error_code(e)) for e in (no_table, no_column)] == [(Failure.transient, 60),
                                                                           (Failure.transient, 16)]


def test_a_server_that_refuses_connections_is_transient():
    import socket

    import clickhouse_connect

    from sinks.clickhouse import Failure, classify

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nobody listens there
    exc = _raised(lambda: clickhouse_connect.get_client(host="127.0.0.1", port=port, connect_timeout=2))
    assert type(exc).__name__ == "OperationalError" and classify(exc) is Failure.transient
    assert classify(ConnectionRefusedError()) is classify(TimeoutError()) is Failure.transient


def test_anything_else_is_unknown(sink):
    from sinks.clickhouse import Failure, classify, make_client

    closed = make_client(sink.url)
    closed.close()
    exc = _raised(lambda: closed.raw_insert("cdp.events", EVENT_COLUMNS, insert_block=_event_line(0),
                                            fmt="JSONCompactEachRow"))
    assert type(exc).__name__ == "ProgrammingError" and classify(exc) is Failure.unknown
    assert classify(RuntimeError("a bug")) is Failure.unknown


def test_the_error_codes_are_the_ones_their_names_say(sink):
    """Each code of the two sets is the one the engine gives the name written beside it."""
    import inspect
    import re

    import sinks.clickhouse as ch

    written = dict((int(c), n) for c, n in re.findall(r"^    (\d+),  # ([A-Z0-9_]+)$", inspect.getsource(ch), re.M))
    assert set(written) == ch.TRANSIENT_CODES | ch.REJECTED_CODES and not ch.TRANSIENT_CODES & ch.REJECTED_CODES
    codes = ", ".join(map(str, sorted(written)))
    assert dict(sink.rows(f"SELECT c, errorCodeToName(c) FROM (SELECT arrayJoin([{codes}]) AS c)")) == written
