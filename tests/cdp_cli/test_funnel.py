"""`cdp funnel`'s SQL on real ClickHouse equals a brute-force count over the same generated events."""

from __future__ import annotations

import orjson

from cdp_cli.analytics import funnel_sql, funnel_table
from cdp_cli.generate import generate
from core.envelope import decode_envelope, encode_envelopes
from core.ids import oneid_for
from core.ingest import RawRecord, ingest_records
from core.rows import event_row
from sinks.clickhouse import EVENT_COLUMNS
from tests.core.helpers import RULES

STEPS = ["product_view", "add_to_cart", "checkout_start", "order_paid"]
NOW = 1_790_000_000_000


def brute_force_levels(rows: list[tuple[str, str, int]], steps: list[str], window_s: int) -> dict[int, int]:
    """Per person, the most steps reached in order, each at or after the previous, all within the window from
    a first-step event; then persons per level (ClickHouse windowFunnel's default mode)."""
    by_person: dict[str, list[tuple[int, str]]] = {}
    for oneid, event, sec in rows:
        by_person.setdefault(oneid, []).append((sec, event))
    levels: dict[int, int] = {}
    for evs in by_person.values():
        evs.sort()
        best = 0
        for i, (t0, e0) in enumerate(evs):
            if e0 != steps[0]:
                continue
            level, last = 1, t0
            for t, e in evs[i + 1:]:
                if t - t0 > window_s or level == len(steps):
                    break
                if e == steps[level] and t >= last:
                    level, last = level + 1, t
            best = max(best, level)
        if best:
            levels[best] = levels.get(best, 0) + 1
    return levels


def test_funnel_equals_brute_force(chdb_sink):
    chdb_sink.migrate()
    raw = [orjson.dumps(e) for e in generate(300, 3, seed=99)]
    res = ingest_records([RawRecord("raw", 0, i, NOW, None, v) for i, v in enumerate(raw)], RULES, 1, NOW)
    entries = [en for env in encode_envelopes("s", 0, res.entries[0]) for en in decode_envelope(env).entries]
    lines = [event_row(en, oneid_for(en.pk)) for en in entries]
    chdb_sink.insert_json("events", lines, EVENT_COLUMNS, token="funnel-test")
    rows = [(oneid_for(en.pk), en.event.get("event") or en.event["type"], en.ts // 1000) for en in entries]
    for window, window_s in (("1h", 3600), ("1d", 86400)):
        # The session's ClickHouse is shared between tests: count this test's events (message ids gen-99-*) only.
        sql = funnel_sql(STEPS, window).replace("FINAL WHERE", "FINAL WHERE message_id LIKE 'gen-99-%' AND")
        got = {int(lvl): int(n) for lvl, n in chdb_sink.rows(sql)}
        got.pop(0, None)
        want = brute_force_levels(rows, STEPS, window_s)
        assert got == want, window
        table = funnel_table(STEPS, got)
        assert table[0][1] >= table[1][1] >= table[2][1] >= table[3][1] > 0
