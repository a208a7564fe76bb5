"""`cdp funnel`'s SQL on real ClickHouse equals a brute-force count over the same events: generated shop traffic
plus small hand-made persons whose events often share a second (so the strict modes have something to do), for
each windowFunnel mode, with a breakdown, and before and after identity merges."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from analytics.funnels import funnel_sql, funnel_table
from analytics.sql import Query
from core.envelope import decode_envelope, encode_envelopes
from core.ingest import RawRecord, ingest_records
from core.rows import event_row, row_dict
from sinks.clickhouse import EVENT_COLUMNS
from tests.analytics.identity_merges import MERGE_COLUMNS, merge_lines, merge_plan, resolver
from tests.core.helpers import RULES, every_identifier_known
from traffic.shop import generate

STEPS = ["product_view", "add_to_cart", "checkout_start", "order_paid"]
NOW = 1_790_000_000_000
# The generated traffic ends at the ingest's clock: events from after it would be timed at receipt.
END = datetime.fromtimestamp(NOW / 1000, UTC)
# The session's ClickHouse is shared between tests: this module's events only (generated, then hand-made).
SCOPE = "message_id LIKE 'gen-99-%' OR message_id LIKE 'fmode-%'"
MODES = [(), ("strict_order",), ("strict_deduplication",), ("strict_increase",),
         ("strict_order", "strict_deduplication", "strict_increase")]

Row = tuple[str, str, int, dict[str, Any]]  # (oneid, event, ts in ms, properties)


def chain_level(evs: list[tuple[int, str]], steps: list[str], window_s: int) -> int:
    """The most steps done in order by some chain of these (time-ordered) events: each step at or after the
    previous one, all within ``window_s`` seconds of the chain's first step."""
    best = 0
    for i, (t0, e0) in enumerate(evs):
        if e0 != steps[0]:
            continue
        level = 1
        for t, e in evs[i + 1:]:
            if t - t0 > window_s or level == len(steps):
                break
            if e == steps[level]:
                level += 1
        best = max(best, level)
    return best


def latest_chain_level(evs: list[tuple[int, str]], steps: list[str], window_s: int) -> int:
    """strict_increase as ClickHouse defines it: each step remembers only the latest event that reached it (and
    that chain's start); a step counts if strictly later than the previous step's latest event and within the
    window of its start. So a fresh first step restarts the chain: product_view@0, product_view@5,
    add_to_cart@5 reaches 1, though product_view@0 -> add_to_cart@5 would be increasing."""
    rank = {s: i for i, s in enumerate(steps)}
    latest: list[tuple[int, int] | None] = [None] * len(steps)  # (chain start, time) per step
    for t, e in evs:
        k = rank.get(e)
        if k == 0:
            latest[0] = (t, t)
        elif k is not None and (prev := latest[k - 1]) is not None and prev[1] < t <= prev[0] + window_s:
            latest[k] = (prev[0], t)
    return max((k + 1 for k, v in enumerate(latest) if v is not None), default=0)


def person_level(evs: list[tuple[int, str]], steps: list[str], window_s: int, modes: tuple[str, ...]) -> int:
    """windowFunnel's level for one person, from the documented semantics, by brute force over prefixes.

    Events are in time order, those of the same second in step order (ClickHouse's order). Default: the longest
    chain of steps in order within the window (chain_level); strict_increase: see latest_chain_level. The
    person's funnel stops (with the level reached before that event) at, with strict_deduplication, a repeat of
    a step already reached other than the first (a new first step starts a new chain); with strict_order, after
    the first step, any event that is not a step, or a step whose previous step was not reached yet."""
    rank = {s: i + 1 for i, s in enumerate(steps)}
    seq = sorted(evs, key=lambda e: (e[0], rank.get(e[1], 0)))
    if "strict_order" not in modes:
        seq = [e for e in seq if e[1] in rank]

    def reached(prefix: list[tuple[int, str]]) -> int:
        if "strict_increase" in modes:
            return latest_chain_level(prefix, steps, window_s)
        return chain_level(prefix, steps, window_s)

    started = False
    for j, (_, event) in enumerate(seq):
        k = rank.get(event, 0)
        if k == 1:
            started = True
            continue
        level = reached(seq[:j])
        if "strict_deduplication" in modes and k >= 2 and level >= k:
            return level
        if "strict_order" in modes and started and (k == 0 or level < k - 1):
            return level
    return reached(seq)


def brute_force(rows: list[Row], steps: list[str], window_s: int, modes: tuple[str, ...] = (),
                breakdown: str | None = None) -> dict[Any, int]:
    """Persons per level (level >= 1), or per (value, level) with a breakdown: the property of the person's
    earliest first-step event ('' where it has none)."""
    by_person: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
    for oneid, event, ms, props in rows:
        by_person.setdefault(oneid, []).append((ms, event, props))
    out: dict[Any, int] = {}
    for evs in by_person.values():
        level = person_level([(ms // 1000, e) for ms, e, _ in evs], steps, window_s, modes)
        if not level:
            continue
        key: Any = level
        if breakdown is not None:
            _, props = min(((ms, p) for ms, e, p in evs if e == steps[0]), key=lambda x: x[0])
            value = props.get(breakdown, "")
            key = (value if isinstance(value, str) else orjson.dumps(value).decode(), level)
        out[key] = out.get(key, 0) + 1
    return out


def handmade_rows(persons: int, seed: int) -> list[bytes]:
    """Short random sequences of funnel steps and other events, a few seconds apart or in the same second."""
    r = random.Random(seed)
    lines = []
    for p in range(persons):
        t = NOW - 3 * 86_400_000 + r.randint(0, 86_400_000)
        for j in range(r.randint(2, 9)):
            t += 1000 * r.choice([0, 0, 0, 1, 2, 30, 600, 2000, 5000])
            event = r.choices([*STEPS, "page", "search"], weights=[5, 4, 3, 2, 2, 1])[0]
            props = {"category": r.choice(["beauty", "food", "home"])} if event == STEPS[0] else {}
            # distinct milliseconds: the earliest first step (breakdown value) is never a tie
            lines.append(orjson.dumps({"message_id": f"fmode-{p}-{j}", "oneid": f"o_fmode_{p:04d}",
                                       "type": "page" if event == "page" else "track", "event": event,
                                       "ts": (t + j) / 1000, "received_at": (t + j + 50) / 1000,
                                       "properties": orjson.dumps(props).decode()}))
    return lines


def parse(lines: list[bytes]) -> list[Row]:
    out = []
    for line in lines:
        d = orjson.loads(line)
        if isinstance(d, list):  # a pipeline row: an array in column order
            d = row_dict(line)
        props = d["properties"]  # an object in pipeline rows, JSON text in this file's hand-made ones
        out.append((d["oneid"], d["event"], round(d["ts"] * 1000), orjson.loads(props) if isinstance(props, str)
                    else props))
    return out


@pytest.fixture(scope="module")
def loaded(chdb_sink) -> list[Row]:
    chdb_sink.migrate()
    raw = [orjson.dumps(e) for e in generate(300, 3, seed=99, end=END)]
    res = ingest_records([RawRecord("raw", 0, i, NOW, None, v) for i, v in enumerate(raw)], RULES, 1, NOW,
                         resolve=every_identifier_known())
    entries = [en for env in encode_envelopes("s", 0, res.entries[0]) for en in decode_envelope(env).entries]
    lines = [event_row(en, en.pk) for en in entries]
    chdb_sink.insert_json("events", lines, EVENT_COLUMNS, token="funnel-test", compact=True)
    handmade = handmade_rows(400, seed=5)
    chdb_sink.insert_json("events", handmade, ["message_id", "oneid", "type", "event", "ts", "received_at",
                                               "properties"], token="funnel-test-handmade")
    return parse(lines) + parse(handmade)


def levels(chdb_sink, q: Query) -> dict[Any, int]:
    got = {}
    for row in chdb_sink.rows(*q):
        *key, n = row
        got[tuple(key) if len(key) > 1 else int(key[0])] = int(n)
    got.pop(0, None)
    return {(k[0], int(k[1])) if isinstance(k, tuple) else k: n for k, n in got.items()}


@pytest.mark.parametrize("modes", MODES, ids=lambda m: "+".join(m) or "default")
@pytest.mark.parametrize("window, window_s", [("1h", 3600), ("1d", 86400)])
def test_funnel_equals_brute_force(chdb_sink, loaded, modes, window, window_s):
    got = levels(chdb_sink, funnel_sql(STEPS, window, mode=list(modes), merge_aware=False, where=SCOPE))
    assert got == brute_force(loaded, STEPS, window_s, modes)
    table = funnel_table(STEPS, got)
    assert table[0][1] >= table[1][1] >= table[2][1] >= table[3][1] > 0


def test_strict_modes_change_the_funnel(loaded):
    """The data exercises every mode: each gives another result than the default."""
    default = brute_force(loaded, STEPS, 3600)
    for modes in MODES[1:]:
        assert brute_force(loaded, STEPS, 3600, modes) != default, modes


@pytest.mark.parametrize("modes", [(), ("strict_order",)], ids=lambda m: "+".join(m) or "default")
def test_funnel_breakdown_equals_brute_force(chdb_sink, loaded, modes):
    got = levels(chdb_sink, funnel_sql(STEPS, "1d", mode=list(modes), breakdown="category", merge_aware=False,
                                       where=SCOPE))
    want = brute_force(loaded, STEPS, 86400, modes, breakdown="category")
    assert got == want
    assert len({v for v, _ in got}) >= 6  # the shop's categories
    # each person counts under one value: the breakdown adds up to the whole funnel
    total: dict[int, int] = {}
    for (_, level), n in got.items():
        total[level] = total.get(level, 0) + n
    assert total == brute_force(loaded, STEPS, 86400, modes)


@pytest.fixture(scope="module")
def merged(chdb_sink, loaded) -> dict[str, Any]:
    """Merge some of the module's persons (chains, splits, plain pairs), noting the merge-aware funnel before."""
    before = levels(chdb_sink, funnel_sql(STEPS, "1d", where=SCOPE))
    reached = sorted({oneid for oneid, event, _, _ in loaded if event == STEPS[0]})
    plan = merge_plan(reached[::3], pairs=40)
    chdb_sink.insert_json("identity_merges", merge_lines(plan), MERGE_COLUMNS, token="funnel-test-merges")
    resolve = resolver(plan)
    rows = [(resolve.get(oneid, oneid), event, ms, props) for oneid, event, ms, props in loaded]
    return {"before": before, "rows": rows}


def test_merges_change_the_funnel(chdb_sink, loaded, merged):
    assert merged["before"] == brute_force(loaded, STEPS, 86400)  # no merges yet: as by raw OneID
    after = levels(chdb_sink, funnel_sql(STEPS, "1d", where=SCOPE))
    assert after == brute_force(merged["rows"], STEPS, 86400)
    assert after != merged["before"]
    assert sum(after.values()) < sum(merged["before"].values())  # merged persons count once
    # --no-merge still sees every raw OneID
    assert levels(chdb_sink, funnel_sql(STEPS, "1d", where=SCOPE, merge_aware=False)) == merged["before"]


@pytest.mark.parametrize("modes", MODES, ids=lambda m: "+".join(m) or "default")
def test_funnel_after_merges_equals_brute_force(chdb_sink, merged, modes):
    got = levels(chdb_sink, funnel_sql(STEPS, "1h", mode=list(modes), where=SCOPE))
    assert got == brute_force(merged["rows"], STEPS, 3600, modes)
    got = levels(chdb_sink, funnel_sql(STEPS, "1d", mode=list(modes), breakdown="category", where=SCOPE))
    assert got == brute_force(merged["rows"], STEPS, 86400, modes, breakdown="category")


def test_funnel_rejects_unknown_mode():
    with pytest.raises(ValueError, match="strict_once"):
        funnel_sql(STEPS, "1d", mode="strict_once")


def test_cli_funnel_modes_breakdown_and_no_merge(chdb_sink, merged, monkeypatch, capsys):
    """`cdp funnel` passes --mode, --breakdown and --no-merge through and prints a table per value (and --json)."""
    from cdp_cli import main as cli
    from ops import worker as ops

    monkeypatch.setattr(ops, "query", lambda settings, sql, fmt, parameters=None: chdb_sink.query(sql, fmt, parameters))
    steps = ",".join(STEPS)
    assert cli.main(["funnel", "--steps", steps, "--window", "1d", "--mode", "strict_order,strict_increase",
                     "--breakdown", "category", "--no-merge", "--json"]) == 0
    rows = orjson.loads(capsys.readouterr().out)
    q = funnel_sql(STEPS, "1d", mode=["strict_order", "strict_increase"], breakdown="category", merge_aware=False)
    want: dict[tuple[str, str], int] = {}
    for value, level, n in chdb_sink.rows(*q):
        for step in STEPS[:level]:
            want[(value or "(none)", step)] = want.get((value or "(none)", step), 0) + n
    assert {(r["breakdown"], r["step"]): r["persons"] for r in rows if r["persons"]} == want
    assert cli.main(["funnel", "--steps", steps, "--window", "1d", "--breakdown", "category"]) == 0
    text = capsys.readouterr().out
    assert "category = beauty" in text and "category = electronics" in text
    assert cli.main(["funnel", "--steps", steps, "--mode", "strict_once"]) == 2
    assert "unknown funnel mode" in capsys.readouterr().err
    assert cli.main(["retention", "--period", "day", "--periods", "3", "--no-merge"]) == 0
    assert capsys.readouterr().out.startswith("cohort")
