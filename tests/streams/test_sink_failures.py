"""ClickHouse failures under the person stage and the feedback agent, on real embedded ClickHouse (chDB): a row
ClickHouse refuses is dead-lettered and the rest of its batch lands once; an outage is waited out, counted as
retries, and dead-letters nothing.

chDB cannot be made unreachable, so an outage is a wrapper of the real sink that raises, for its first calls, the
exception clickhouse-connect raises for a server that refuses connections (provoked for real, once per module)."""

from __future__ import annotations

import asyncio
import socket

import clickhouse_connect
import orjson
import pytest

from config.settings import Settings
from core.envelope import encode_entry, encode_envelopes
from schemas.bad_rows import NOT_EVENTS, BadRow, Stage
from sinks.clickhouse import EVENT_COLUMNS, ClickHouseSink, Failure, classify
from streams import metrics
from streams.app import build_pipeline
from streams.sink_writer import SinkWriter

T0 = 1_790_000_000_000


def retries(table: str, kind: str) -> float:
    return metrics.sink_retries.labels(table, kind)._value.get()


@pytest.fixture(scope="module")
def server_down() -> Exception:
    """What clickhouse-connect raises when the ClickHouse server refuses the connection (a port nobody listens on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        clickhouse_connect.get_client(host="127.0.0.1", port=port, connect_timeout=2)
    except Exception as exc:
        assert classify(exc) is Failure.transient
        return exc
    raise AssertionError("a client connected to a closed port")


class OutageSink:
    """The real sink, its first ``down`` inserts failing as a server that is down fails them."""

    def __init__(self, real: ClickHouseSink, exc: Exception, down: int):
        self.real, self.exc, self.down, self.calls = real, exc, down, 0

    def insert_json(self, table, lines, columns, token=None, **options):
        self.calls += 1
        if self.down > 0:
            self.down -= 1
            raise self.exc
        return self.real.insert_json(table, lines, columns, token=token, **options)


class Recorder:
    """A dead-letter sender whose acknowledgements the test may hold back."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, BadRow]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, key: bytes | None, row: BadRow):
        self.sent.append((key, row))
        return self.release.wait()


def entries(prefix: str, n: int, first_offset: int, poison: frozenset[int] = frozenset()) -> list:
    out = []
    for i in range(n):
        ev = {"type": "track", "message_id": f"{prefix}-{first_offset + i}", "event": f"{prefix}_probe",
              "user_id": f"u{i % 5}"}
        meta, body, row = encode_entry(f"user_id:u{i % 5}", T0 + i, T0, 0, first_offset + i, orjson.dumps(ev))
        if i in poison:
            # A row whose event time is not a time (what a bug in an ingest's row could send): ClickHouse refuses it.
            cells = orjson.loads(row)
            cells[EVENT_COLUMNS.index("ts") - 1] = "not a time"  # the row less its OneID
            row = orjson.dumps(cells)
        out.append((meta, body, row))
    return out


def pipeline(tmp_path, sink, prefix: str):
    s = Settings(topic_prefix=prefix, data_dir=tmp_path, partitions=1, sink_batch_rows=10_000)
    p = build_pipeline(s, sink=sink, with_ingest=False, store="memory://")
    p.stage.send_bad_row = Recorder()
    p.app.finalize()
    p.app.flow_control.resume()
    return p


async def until(condition, seconds: float = 60.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


@pytest.mark.timeout(120)
async def test_a_row_clickhouse_refuses_is_dead_lettered_the_others_land_once_and_the_partition_goes_on(
        tmp_path, chdb_sink):
    chdb_sink.migrate()
    p = pipeline(tmp_path, chdb_sink, "sinkpoison")
    rejected_before = retries("events", "rejected")
    async with p.persons_agent.test_context() as agent:
        # One batch of 20 events, the 8th refused; then the next envelope of the partition.
        await agent.put(encode_envelopes("src", T0, entries("poison", 20, 0, frozenset({7})))[0], key=b"p", partition=0)
        await agent.put(encode_envelopes("src", T0, entries("poison", 5, 100))[0], key=b"p", partition=0)
        await until(lambda: p.stage.stats.envelopes == 2)
    where = "event = 'poison_probe'"
    assert chdb_sink.rows(f"SELECT count(), uniqExact(message_id) FROM cdp.events WHERE {where}") == [(24, 24)]
    assert chdb_sink.rows(f"SELECT count() FROM cdp.events WHERE {where} AND message_id = 'poison-7'") == [(0,)]
    assert chdb_sink.rows("SELECT sum(events) FROM cdp.events_daily WHERE event = 'poison_probe'") == [(24,)]
    assert p.stage.stats.events_sunk == 24 and p.stage.stats.bad_rows == 1
    [(key, row)] = p.stage.send_bad_row.sent
    cells = orjson.loads(row.original_bytes())  # the row as it was inserted
    assert (row.stage, row.reason, cells[1], cells[EVENT_COLUMNS.index("ts")]) == (
        Stage.sink, "sink_rejected", "poison-7", "not a time")
    assert key == cells[0].encode() and row.reason in NOT_EVENTS  # keyed by OneID; `cdp dlq replay` leaves it
    assert row.errors[0]["code"] == 41 and "CANNOT_PARSE_DATETIME" in row.errors[0]["error"]
    assert row.source["table"] == "events" and (row.source["partition"], row.source["offset"]) == (0, 7)
    assert retries("events", "rejected") > rejected_before


async def test_a_replayed_batch_with_a_refused_row_inserts_nothing_twice(chdb_sink):
    """After a crash the batch is inserted again with its token: the same parts form, ClickHouse skips them, and the
    same row is refused."""
    chdb_sink.migrate()
    good = [orjson.dumps(["o_replay", f"replay-{i}", "track", "replay_probe", "", T0 / 1000 + i, T0 / 1000, {}, {}, 0,
                          i, "", "", "", ""]) for i in range(40)]
    lines = [*good[:29], b'["o_replay", "replay-x", "track"', *good[29:]]  # a malformed line, 30th of 41
    writer = SinkWriter(chdb_sink)
    first = await writer.insert("events", lines, EVENT_COLUMNS, "replay:0:0-9:events", compact=True)
    again = await writer.insert("events", lines, EVENT_COLUMNS, "replay:0:0-9:events", compact=True)
    assert [(r.index, r.line) for r in first] == [(r.index, r.line) for r in again] == [(29, lines[29])]
    assert first[0].code == 27  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    assert chdb_sink.rows("SELECT count(), uniqExact(message_id) FROM cdp.events WHERE oneid = 'o_replay'") == [
        (40, 40)]
    assert chdb_sink.rows("SELECT sum(events) FROM cdp.events_daily WHERE event = 'replay_probe'") == [(40,)]


async def test_refused_action_rows_are_dead_lettered_with_the_batch_and_the_rest_land(tmp_path, chdb_sink):
    """Action rows go to ClickHouse in the same effect as the events; one it refuses is a bad row of the batch (the
    action itself still goes to its topic: the row is ClickHouse's record of it)."""
    from streams.persons import Effects

    chdb_sink.migrate()
    p = pipeline(tmp_path, chdb_sink, "sinkactions")
    sent = []

    async def send_action(channel, key, value):
        sent.append(orjson.loads(value)["action_id"])
        return asyncio.sleep(0)

    p.stage.send_action = send_action

    def action(i: int, version) -> tuple[str, str, dict]:
        return ("sms", "o_act", {"action_id": f"act-{i}", "oneid": "o_act", "rule_id": "r", "rule_version": version,
                                 "channel": "sms", "template": "t", "created_at": "2026-09-21T12:00:00Z",
                                 "not_before": "2026-09-21T12:00:00Z", "expires_at": "2026-09-22T12:00:00Z",
                                 "reason": {}})

    actions = [action(0, 1), action(1, "one"), action(2, 1)]
    await p.stage.complete(Effects(1, 0, "sinkactions.t:0:0-0", [], actions, {}, 0.0))
    assert chdb_sink.rows("SELECT action_id FROM cdp.actions WHERE oneid = 'o_act' ORDER BY action_id") == [
        ("act-0",), ("act-2",)]
    [(key, row)] = p.stage.send_bad_row.sent
    assert (key, row.reason, row.source["table"], row.source["action_id"]) == (
        b"o_act", "sink_rejected", "actions", "act-1")
    assert sent == ["act-0", "act-1", "act-2"] and p.stage.stats.bad_rows == 1


@pytest.mark.timeout(120)
async def test_an_outage_is_retried_with_backoff_counted_and_dead_letters_nothing(tmp_path, chdb_sink, server_down):
    chdb_sink.migrate()
    sink = OutageSink(chdb_sink, server_down, down=4)
    p = pipeline(tmp_path, sink, "sinkoutage")
    before = retries("events", "transient")
    async with p.persons_agent.test_context() as agent:
        await agent.put(encode_envelopes("src", T0, entries("outage2", 12, 0))[0], key=b"p", partition=0)
        await asyncio.sleep(0.5)
        assert p.stage.stats.envelopes == 0  # held (back-pressure): not done, not acknowledged
        await until(lambda: p.stage.stats.envelopes == 1)
    assert retries("events", "transient") - before == 4 and sink.calls >= 4 + 1
    assert p.stage.stats.bad_rows == 0 and p.stage.send_bad_row.sent == []
    assert chdb_sink.rows("SELECT count(), uniqExact(message_id) FROM cdp.events WHERE event = 'outage2_probe'") == [
        (12, 12)]


class UnknownFailures:
    """The real sink, failing with an error nobody classified: every insert for the first ``down`` calls (an
    outage that says nothing known), and every insert holding the line ``poison`` after that."""

    def __init__(self, real: ClickHouseSink, down: int, poison: bytes | None = None):
        self.real, self.down, self.poison = real, down, poison

    def insert_json(self, table, lines, columns, token=None, **options):
        if self.down > 0:
            self.down -= 1
            raise RuntimeError("something nobody expected")
        if self.poison is not None and self.poison in lines:
            raise RuntimeError("something nobody expected, of this row")
        return self.real.insert_json(table, lines, columns, token=token, **options)


def probe_lines(oneid: str, n: int) -> list[bytes]:
    return [orjson.dumps([oneid, f"{oneid}-{i}", "track", f"{oneid}_probe", "", T0 / 1000 + i, T0 / 1000, {}, {}, 0, i,
                          "", "", "", ""]) for i in range(n)]


async def test_an_unknown_failure_that_persists_splits_the_batch_but_dead_letters_nothing_while_no_row_goes_in(
        chdb_sink):
    chdb_sink.migrate()
    lines = probe_lines("o_unk", 8)
    # Past its retries, the batch is halved down to single rows, each failing too: none is dead-lettered.
    writer = SinkWriter(UnknownFailures(chdb_sink, down=40), base_delay=0.001, max_delay=0.01, unknown_attempts=3)
    assert await writer.insert("events", lines, EVENT_COLUMNS, "unk:0:0-0:events", compact=True) == []
    assert chdb_sink.rows("SELECT count() FROM cdp.events WHERE oneid = 'o_unk'") == [(8,)]


async def test_an_unknown_failure_of_one_row_while_the_others_go_in_dead_letters_that_row(chdb_sink):
    chdb_sink.migrate()
    lines = probe_lines("o_unk1", 8)
    writer = SinkWriter(UnknownFailures(chdb_sink, down=0, poison=lines[5]), base_delay=0.001, unknown_attempts=2)
    [r] = await writer.insert("events", lines, EVENT_COLUMNS, "unk1:0:0-0:events", compact=True)
    assert (r.index, r.code, "of this row" in r.error) == (5, None, True)
    assert chdb_sink.rows("SELECT count() FROM cdp.events WHERE oneid = 'o_unk1'") == [(7,)]


def feedback(action_id: str, status: str = "delivered") -> bytes:
    return orjson.dumps({"action_id": action_id, "status": status, "at": "2026-09-21T12:00:00Z"})


class CorruptingSink(OutageSink):
    """An outage first; then the feedback row of action ``bad`` carries a time that is not one (as a bug in
    ``feedback_row`` could make it), which ClickHouse refuses."""

    def insert_json(self, table, lines, columns, token=None, **options):
        lines = [ln.replace(b'"at":', b'"at":"never","was":') if b'"fb-bad"' in ln else ln for ln in lines]
        return super().insert_json(table, lines, columns, token=token, **options)


@pytest.mark.timeout(120)
async def test_feedback_rows_survive_an_outage_a_refused_row_is_dead_lettered_and_acks_wait_for_the_dlq(
        tmp_path, chdb_sink, server_down):
    chdb_sink.migrate()
    sink = CorruptingSink(chdb_sink, server_down, down=2)
    p = pipeline(tmp_path, sink, "sinkfeedback")
    dlq = p.stage.send_bad_row
    dlq.release.clear()  # the dead-letter topic has not acknowledged yet
    agent_ = next(a for name, a in p.app.agents.items() if name.endswith("feedback"))
    before = retries("action_feedback", "transient")
    async with agent_.test_context() as agent:
        events = [await agent.put(feedback("fb-ok"), key=b"fb-ok"), await agent.put(b'{"status": "exploded"}'),
                  await agent.put(feedback("fb-bad"), key=b"fb-bad")]
        await until(lambda: len(dlq.sent) == 2)
        await asyncio.sleep(0.3)
        # Inserted and dead-lettered, but the dead letters are not acknowledged: the batch is not done.
        assert not any(ev.message.acked for ev in events)
        dlq.release.set()
        await until(lambda: all(ev.message.acked for ev in events))
    assert retries("action_feedback", "transient") - before == 2
    assert chdb_sink.rows("SELECT action_id FROM cdp.action_feedback WHERE action_id LIKE 'fb-%'") == [("fb-ok",)]
    assert sorted((row.stage.value, row.reason) for _, row in dlq.sent) == [
        ("sink", "sink_rejected"), ("validate", "feedback_schema")]
    [(key, refused)] = [(k, row) for k, row in dlq.sent if row.reason == "sink_rejected"]
    assert key == b"fb-bad" and refused.source["table"] == "action_feedback" and refused.source["offset"] == 2
    assert orjson.loads(refused.original_bytes())["action_id"] == "fb-bad"
