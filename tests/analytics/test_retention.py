"""`cdp retention`'s SQL on real ClickHouse equals a brute-force count over the same generated events, by raw
OneID and after identity merges (a merged person's cohort is the earliest first event of its OneIDs)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from analytics.funnels import format_retention, retention_sql
from core.envelope import decode_envelope, encode_envelopes
from core.ingest import RawRecord, ingest_records
from core.rows import event_row
from sinks.clickhouse import EVENT_COLUMNS
from tests.analytics.identity_merges import MERGE_COLUMNS, merge_lines, merge_plan, resolver
from tests.core.helpers import RULES, every_identifier_known
from traffic.shop import generate

NOW = 1_790_000_000_000
# The generated traffic ends at the ingest's clock: events from after it would be timed at receipt.
END = datetime.fromtimestamp(NOW / 1000, UTC)
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
    raw = [orjson.dumps(e) for e in generate(400, 21, seed=77, end=END)]
    res = ingest_records([RawRecord("raw", 0, i, NOW, None, v) for i, v in enumerate(raw)], RULES, 1, NOW,
                         resolve=every_identifier_known())
    entries = [en for env in encode_envelopes("s", 0, res.entries[0]) for en in decode_envelope(env).entries]
    chdb_sink.insert_json("events", [event_row(en, en.pk) for en in entries], EVENT_COLUMNS,
                          token="retention-test", compact=True)
    return [(en.pk, en.event.get("event") or en.event["type"], en.ts) for en in entries]


CASES = [("week", 3, None), ("day", 10, None), ("day", 7, "order_paid")]


def cohorts(chdb_sink, period: str, periods: int, event: str | None, merge_aware: bool) -> dict:
    return {(str(c)[:10], int(k)): int(n)
            for c, k, n in chdb_sink.rows(*retention_sql(period, periods, event, where=SCOPE,
                                                        merge_aware=merge_aware))}


@pytest.mark.parametrize("period, periods, event", CASES)
def test_retention_equals_brute_force(chdb_sink, loaded, period, periods, event):
    got = cohorts(chdb_sink, period, periods, event, merge_aware=False)
    want = brute_force(loaded, period, periods, event)
    assert got == want
    assert any(k > 0 for _, k in got)  # people do come back in this traffic
    table = format_retention(sorted((c, k, n) for (c, k), n in got.items()), periods)
    assert table.splitlines()[0].startswith("cohort")


@pytest.fixture(scope="module")
def merged(chdb_sink, loaded):
    """Merge some of the module's persons (chains, splits, plain pairs), noting merge-aware cohorts before."""
    before = {case: cohorts(chdb_sink, *case, merge_aware=True) for case in CASES}
    # persons of different first days, so that merging moves some of them to an earlier cohort
    first: dict[str, int] = {}
    for oneid, _, ts in loaded:
        first[oneid] = min(first.get(oneid, ts), ts)
    by_first = sorted(first, key=lambda o: first[o])
    plan = merge_plan(by_first[::-2], pairs=60)
    chdb_sink.insert_json("identity_merges", merge_lines(plan), MERGE_COLUMNS, token="retention-test-merges")
    resolve = resolver(plan)
    return {"before": before, "rows": [(resolve.get(o, o), ev, ts) for o, ev, ts in loaded]}


@pytest.mark.parametrize("period, periods, event", CASES)
def test_retention_after_merges_equals_brute_force(chdb_sink, loaded, merged, period, periods, event):
    before = merged["before"][(period, periods, event)]
    assert before == brute_force(loaded, period, periods, event)  # no merges yet: as by raw OneID
    after = cohorts(chdb_sink, period, periods, event, merge_aware=True)
    assert after == brute_force(merged["rows"], period, periods, event)
    assert after != before
    assert sum(n for (_, k), n in after.items() if k == -1) < sum(n for (_, k), n in before.items() if k == -1)
    assert cohorts(chdb_sink, period, periods, event, merge_aware=False) == before  # --no-merge: raw OneIDs
