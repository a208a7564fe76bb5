"""`cdp retention`'s SQL on real ClickHouse equals a brute-force count over the same generated events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from cdp_cli.analytics import format_retention, retention_sql
from cdp_cli.generate import generate
from core.envelope import decode_envelope, encode_envelopes
from core.ids import oneid_for
from core.ingest import RawRecord, ingest_records
from core.rows import event_row
from sinks.clickhouse import EVENT_COLUMNS
from tests.core.helpers import RULES

NOW = 1_790_000_000_000
SCOPE = "message_id LIKE 'gen-77-%'"  # the session's ClickHouse is shared: this test's events only


def period_start(ms: int, period: str) -> datetime:
    d = datetime.fromtimestamp(ms / 1000, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return d - timedelta(days=d.weekday()) if period == "week" else d


def brute_force(rows: list[tuple[str, str, int]], period: str, periods: int, event: str | None) -> dict:
    days = 7 if period == "week" else 1
    first: dict[str, datetime] = {}
    for oneid, _, ts in rows:
        c = period_start(ts, period)
        first[oneid] = min(first.get(oneid, c), c)
    out: dict[tuple[str, int], set[str]] = {}
    for oneid, ev, ts in rows:
        if event and ev != event:
            continue
        k = (period_start(ts, period) - first[oneid]).days // days
        if 0 <= k <= periods:
            out.setdefault((first[oneid].date().isoformat(), k), set()).add(oneid)
    sizes: dict[str, set[str]] = {}
    for oneid, c in first.items():
        sizes.setdefault(c.date().isoformat(), set()).add(oneid)
    result = {(c, -1): len(s) for c, s in sizes.items()}
    result.update({key: len(s) for key, s in out.items()})
    return result


@pytest.fixture(scope="module")
def loaded(chdb_sink):
    chdb_sink.migrate()
    raw = [orjson.dumps(e) for e in generate(400, 21, seed=77)]
    res = ingest_records([RawRecord("raw", 0, i, NOW, None, v) for i, v in enumerate(raw)], RULES, 1, NOW)
    entries = [en for env in encode_envelopes("s", 0, res.entries[0]) for en in decode_envelope(env).entries]
    chdb_sink.insert_json("events", [event_row(en, oneid_for(en.pk)) for en in entries], EVENT_COLUMNS,
                          token="retention-test")
    return [(oneid_for(en.pk), en.event.get("event") or en.event["type"], en.ts) for en in entries]


@pytest.mark.parametrize("period, periods, event", [("week", 3, None), ("day", 10, None), ("day", 7, "order_paid")])
def test_retention_equals_brute_force(chdb_sink, loaded, period, periods, event):
    got = {(str(c)[:10], int(k)): int(n)
           for c, k, n in chdb_sink.rows(retention_sql(period, periods, event, where=SCOPE))}
    want = brute_force(loaded, period, periods, event)
    assert got == want
    assert any(k > 0 for _, k in got)  # people do come back in this traffic
    table = format_retention(sorted((c, k, n) for (c, k), n in got.items()), periods)
    assert table.splitlines()[0].startswith("cohort")
