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
