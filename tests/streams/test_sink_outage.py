"""ClickHouse unavailable under the persons agent (Faust test_context, real embedded ClickHouse): nothing is lost,
nothing is duplicated, and no envelope is acknowledged before its batch is in ClickHouse."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from config.settings import Settings
from core.envelope import encode_entry, encode_envelopes
from sinks.clickhouse import ClickHouseSink
from streams import metrics
from streams.app import build_pipeline

T0 = 1_790_000_000_000
PREFIX = "outage-"


class FlakySink:
    """The real sink, failing its first inserts: some before writing anything (ClickHouse down), and one after
    the rows were written but before the answer came back (a timeout), which is the retry that could duplicate."""

    def __init__(self, real: ClickHouseSink, fail_before: int, fail_after: int):
        self.real = real
        self.fail_before = fail_before
        self.fail_after = fail_after
        self.calls = 0
        self.rows_written = 0

    def insert_json(self, table, lines, columns, token=None, unique_keys=False, compact=False):
        self.calls += 1
        if self.fail_before > 0:
            self.fail_before -= 1
            raise ConnectionError("ClickHouse is down")
        n = self.real.insert_json(table, lines, columns, token=token, unique_keys=unique_keys,
                                  compact=compact)
        if table == "events" and self.fail_after > 0:
            self.fail_after -= 1
            raise TimeoutError("no answer from ClickHouse (the rows went in)")
        return n


def envelope(batch: int, n: int, flush: bool) -> bytes:
    entries = []
    for i in range(n):
        mid = f"{PREFIX}{batch}-{i}"
        ev = {"type": "track", "message_id": mid, "event": "outage_probe", "user_id": f"u{i % 7}"}
        entries.append(encode_entry(f"user_id:u{i % 7}", T0 + batch * 1000 + i, T0, 0, batch * 100 + i,
                                    orjson.dumps(ev)))
    return encode_envelopes("test-source", T0, entries, flush=flush)[0]


@pytest.mark.timeout(120)
async def test_an_outage_loses_nothing_and_duplicates_nothing(tmp_path, chdb_sink):
    chdb_sink.migrate()
    s = Settings(topic_prefix="outagetest", data_dir=tmp_path, partitions=1, sink_batch_rows=25)
    flaky = FlakySink(chdb_sink, fail_before=3, fail_after=1)
    p = build_pipeline(s, sink=flaky, with_ingest=False, store="memory://")  # type: ignore[arg-type]
    p.app.finalize()
    p.app.flow_control.resume()
    retried = metrics.sink_retries.labels("events", "transient")
    before = retried._value.get()
    async with p.persons_agent.test_context() as agent:
        # Four envelopes of 10 events, none flushing: batches close at 25 events (3 envelopes), the 4th flushes.
        for b in range(3):
            await agent.put(envelope(b, 10, flush=False), key=b"p0", partition=0)
        await asyncio.sleep(0.3)
        # ClickHouse is down: the closed batch waits, nothing is counted as done.
        assert p.stage.stats.envelopes == 0 and p.stage.stats.events_sunk == 0
        await agent.put(envelope(3, 10, flush=True), key=b"p0", partition=0)
        for _ in range(600):
            if p.stage.stats.envelopes == 4:
                break
            await asyncio.sleep(0.02)
    assert p.stage.stats.envelopes == 4 and p.stage.stats.events_sunk == 40
    assert flaky.calls >= 3 + 1 + 2  # the failures were really retried
    # Counted as retries (not as anything dropped), and none of the rows was taken for a refused one.
    assert retried._value.get() - before == 3 + 1 and p.stage.stats.bad_rows == 0
    where = f"message_id LIKE '{PREFIX}%'"
    assert chdb_sink.rows(f"SELECT count(), uniqExact(message_id) FROM cdp.events WHERE {where}") == [(40, 40)]
    # The daily aggregate saw each event once too: the retried insert was skipped by its token.
    assert chdb_sink.rows("SELECT sum(events) FROM cdp.events_daily WHERE event = 'outage_probe'") == [(40,)]
