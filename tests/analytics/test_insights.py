"""Attribution, ROI, A/B readouts, RFM segments and next-step paths on real ClickHouse equal brute-force Python
computations over the same generated events, before and after identity merges join persons."""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from statistics import NormalDist
from typing import Any

import orjson
import pytest

from analytics import insights
from cdp_cli.main import main
from core.envelope import Entry, decode_envelope, encode_envelopes
from core.ingest import RawRecord, epoch_ms, ingest_records
from core.rows import event_row
from sinks.clickhouse import EVENT_COLUMNS
from tests.analytics.identity_merges import MERGE_COLUMNS, merge_lines, resolver
from tests.core.helpers import RULES, every_identifier_known, oneid_of
from traffic.shop import CAMPAIGNS, EXPERIMENT_ID, generate

NOW = 1_790_000_000_000
END = datetime.fromtimestamp(NOW / 1000, UTC)
SEED = 55
USERS = 700
SCOPE = f"message_id LIKE 'gen-{SEED}-%'"  # the session's ClickHouse is shared: this module's events only
HOUR, DAY = 3_600_000, 86_400_000


@dataclass(frozen=True)
class Ev:
    oneid: str
    message_id: str
    event: str
    ms: int
    props: dict[str, Any]
    campaign: tuple[str, str, str]  # (source, medium, name); sources '' when not a touchpoint


def load(sink: Any, raw_events: list[dict[str, Any]], token: str) -> list[Ev]:
    """Through the pipeline's own path: ingest -> envelopes -> event_row -> insert."""
    raw = [orjson.dumps(e) for e in raw_events]
    res = ingest_records([RawRecord("raw", 0, i, NOW, None, v) for i, v in enumerate(raw)], RULES, 1, NOW,
                         resolve=every_identifier_known())
    entries: list[Entry] = [en for env in encode_envelopes("s", 0, res.entries[0])
                            for en in decode_envelope(env).entries]
    sink.insert_json("events", [event_row(en, en.pk) for en in entries], EVENT_COLUMNS, token=token,
                     compact=True)
    out = []
    for en in entries:
        ev = en.event
        c = (ev.get("context") or {}).get("campaign") or {}
        out.append(Ev(en.pk, ev["message_id"], ev.get("event") or ev["type"], en.ts,
                      ev.get("properties") or {}, (c.get("source", ""), c.get("medium", ""), c.get("name", ""))))
    return out


@pytest.fixture(scope="module")
def loaded(chdb_sink) -> list[Ev]:
    chdb_sink.migrate()
    return load(chdb_sink, generate(USERS, 14, seed=SEED, end=END), token=f"insights-{SEED}")


def merge_pairs(evs: list[Ev]) -> list[tuple[str, str]]:
    """(from, into) OneIDs. Identity resolution as the pipeline would do it (a person's anonymous OneID into their
    user OneID once they signed up), plus persons joined with other persons: ones with touchpoints but no order
    into ones with orders, and a chain of three, so that merges move credit between persons."""
    oneids = {e.oneid for e in evs}
    pairs = []
    for i in range(USERS):
        anon, user = oneid_of("anonymous_id", f"anon-{SEED}-{i:06d}"), oneid_of("user_id", f"u{SEED}-{i:06d}")
        if anon in oneids and user in oneids:
            pairs.append((anon, user))
    merged = {f for f, _ in pairs}
    buyers = sorted({e.oneid for e in evs if e.event == "order_paid"} - merged)
    touched = sorted({e.oneid for e in evs if e.campaign[0]} - set(buyers) - merged)
    pairs += list(zip(touched[:15], buyers[:15], strict=True))
    b1, b2, b3 = buyers[15:18]
    return [*pairs, (b1, b2), (b2, b3)]


_applied = itertools.count()


@pytest.fixture
def merges(chdb_sink, loaded) -> Iterator[dict[str, str]]:
    """The merges in force for one test (OneID -> surviving OneID), split again afterwards, so that every test
    sees the state it asks for whatever the order tests run in: each application is later than the last."""
    k = next(_applied)
    at = (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=2 * k)).strftime("%Y-%m-%d %H:%M:%S.000")
    undo = (datetime(2026, 1, 2, tzinfo=UTC) + timedelta(days=2 * k)).strftime("%Y-%m-%d %H:%M:%S.000")
    pairs = merge_pairs(loaded)
    plan = [(f, into, at, "merge") for f, into in pairs]
    chdb_sink.insert_json("identity_merges", merge_lines(plan), MERGE_COLUMNS, token=f"insights-merge-{k}")
    yield resolver(plan)
    chdb_sink.insert_json("identity_merges", merge_lines([(f, into, undo, "split") for f, into in pairs]),
                          MERGE_COLUMNS, token=f"insights-split-{k}")


# --- brute force ------------------------------------------------------------------------------------------------

def brute_attribution(evs: list[Ev], resolve: dict[str, str], model: str, lookback_ms: int = 30 * DAY,
                      half_life_ms: int = 7 * DAY, gap_ms: int = 30 * 60_000, since: int | None = None,
                      until: int | None = None, by_campaign: bool = False) -> dict[tuple[str, ...], list[float]]:
    person = lambda o: resolve.get(o, o)  # noqa: E731
    touchpoints: dict[str, list[tuple[int, str, str, str, str]]] = defaultdict(list)
    for e in evs:
        if e.campaign[0]:
            touchpoints[person(e.oneid)].append((e.ms, e.message_id, *e.campaign))
    for tps in touchpoints.values():
        tps.sort()
    out: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for c in evs:
        if c.event != "order_paid" or (since and c.ms < since) or (until and c.ms >= until):
            continue
        journey = [t for t in touchpoints[person(c.oneid)] if 0 <= c.ms - t[0] <= lookback_ms]
        visits = [t for i, t in enumerate(journey)
                  if i == 0 or t[2:] != journey[i - 1][2:] or t[0] - journey[i - 1][0] > gap_ms]
        n = len(visits)
        if n == 0:
            credits = [(("(direct)", "(none)", ""), 1.0)]
        elif model == "last_click":
            credits = [(visits[-1][2:], 1.0)]
        elif model == "first_click":
            credits = [(visits[0][2:], 1.0)]
        elif model == "linear":
            credits = [(t[2:], 1 / n) for t in visits]
        elif model == "position_based":
            shares = [1.0] if n == 1 else [0.5, 0.5] if n == 2 else [0.4, *[0.2 / (n - 2)] * (n - 2), 0.4]
            credits = [(t[2:], s) for t, s in zip(visits, shares, strict=True)]
        else:  # time_decay: weight 2^(-(conversion time - touch time) / half-life), normalised
            w = [2 ** (-(c.ms - t[0]) / half_life_ms) for t in visits]
            credits = [(t[2:], x / sum(w)) for t, x in zip(visits, w, strict=True)]
        amount = float(c.props.get("amount") or 0)
        for channel, share in credits:
            key = channel if by_campaign else channel[:2]
            out[key][0] += share
            out[key][1] += share * amount
    return dict(out)


def got_attribution(rows: list[tuple[Any, ...]]) -> dict[tuple[str, ...], list[float]]:
    return {tuple(r[:-2]): [r[-2], r[-1]] for r in rows}


def assert_close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, (conv, rev) in want.items():
        assert got[k][0] == pytest.approx(conv, rel=1e-9, abs=1e-9), k
        assert got[k][1] == pytest.approx(rev, rel=1e-9, abs=1e-6), k


# --- attribution ------------------------------------------------------------------------------------------------

def check_attribution(sink: Any, evs: list[Ev], resolve: dict[str, str]) -> dict[str, dict]:
    results = {}
    conversions = sum(1 for e in evs if e.event == "order_paid")
    for model in insights.MODELS:
        got = got_attribution(sink.rows(*insights.attribution_sql(model, where=SCOPE)))
        want = brute_attribution(evs, resolve, model)
        assert_close(got, want)
        # Every conversion is credited exactly once in total, whatever the model.
        assert sum(v[0] for v in got.values()) == pytest.approx(conversions)
        results[model] = got
    # Other parameters: a range (touchpoints before it still count), a short half-life, a short lookback,
    # by campaign, and no visit merging.
    since, until = END - timedelta(days=7), END - timedelta(days=1)
    got = got_attribution(sink.rows(*insights.attribution_sql(
        "time_decay", lookback="3d", half_life="12h", since=since, until=until, by_campaign=True, where=SCOPE)))
    want = brute_attribution(evs, resolve, "time_decay", lookback_ms=3 * DAY, half_life_ms=12 * HOUR,
                             since=epoch_ms(since), until=epoch_ms(until),
                             by_campaign=True)
    assert_close(got, want)
    got = got_attribution(sink.rows(*insights.attribution_sql("linear", visit_gap="0s", where=SCOPE)))
    assert_close(got, brute_attribution(evs, resolve, "linear", gap_ms=0))
    return results


def test_attribution_equals_brute_force_before_merges(chdb_sink, loaded):
    results = check_attribution(chdb_sink, loaded, {})
    last = results["last_click"]
    assert ("(direct)", "(none)") in last
    assert len([k for k in last if k[0] != "(direct)"]) == len(CAMPAIGNS)  # every channel converts somewhere
    # Models do differ on this traffic (persons come back through several channels).
    assert results["first_click"] != last and results["linear"] != last
    # Without merge awareness the raw OneIDs are read: the same numbers before any merge.
    raw = got_attribution(chdb_sink.rows(*insights.attribution_sql("linear", merge_aware=False, where=SCOPE)))
    assert_close(raw, brute_attribution(loaded, {}, "linear"))


def test_attribution_equals_brute_force_after_merges(chdb_sink, loaded, merges):
    before = brute_attribution(loaded, {}, "last_click")
    results = check_attribution(chdb_sink, loaded, merges)
    # The merges matter: touchpoints of a person's anonymous visits and of persons joined to them now credit
    # conversions that had none.
    assert results["last_click"][("(direct)", "(none)")][0] < before[("(direct)", "(none)")][0]
    raw = got_attribution(chdb_sink.rows(*insights.attribution_sql("last_click", merge_aware=False, where=SCOPE)))
    assert_close(raw, before)


def test_attribution_models_on_a_known_journey(chdb_sink):
    """One person, three visits from three channels (the first one twice within a visit), then an order of 100."""
    chdb_sink.migrate()
    t0 = END - timedelta(days=40)

    def ev(i: int, hours: float, source: str | None, **kw: Any) -> dict[str, Any]:
        e: dict[str, Any] = {"type": "page", "name": "home", "messageId": f"ins-known-{i:03d}", "userId": "known-1",
                             "timestamp": (t0 + timedelta(hours=hours)).isoformat().replace("+00:00", "Z"),
                             "context": {}}
        if source:
            e["context"]["campaign"] = {"source": source, "medium": "cpc", "name": "c"}
        e.update(kw)
        return e

    load(chdb_sink, [
        ev(1, 0, "a"), ev(2, 0.1, "a"), ev(3, 24, "b"), ev(4, 48, None), ev(5, 72, "c"),
        ev(6, 96, None, type="track", event="Order Completed", properties={"amount": 100}),
        ev(7, 96 + 24 * 31, None, type="track", event="Order Completed", properties={"amount": 10}),
    ], token="insights-known")
    scope = "message_id LIKE 'ins-known-%'"

    def credit(model: str) -> dict[str, float]:
        rows = chdb_sink.rows(*insights.attribution_sql(model, half_life="1d", where=scope))
        return {r[0]: round(r[-1], 6) for r in rows}

    # The second order has no touchpoint within 30 days: direct.
    assert credit("last_click") == {"c": 100, "(direct)": 10}
    assert credit("first_click") == {"a": 100, "(direct)": 10}
    assert credit("linear") == {"a": round(100 / 3, 6), "b": round(100 / 3, 6), "c": round(100 / 3, 6),
                                "(direct)": 10}
    assert credit("position_based") == {"a": 40, "b": 20, "c": 40, "(direct)": 10}
    # Ages 4, 3 and 1 days at a half-life of 1 day: weights 1/16, 1/8, 1/2.
    total = 1 / 16 + 1 / 8 + 1 / 2
    assert credit("time_decay") == {"a": round(100 / 16 / total, 6), "b": round(100 / 8 / total, 6),
                                    "c": round(100 / 2 / total, 6), "(direct)": 10}


# --- ROI --------------------------------------------------------------------------------------------------------

def test_roi_equals_brute_force_with_loaded_costs(chdb_sink, loaded, merges, tmp_path):
    since, until = END - timedelta(days=10), END - timedelta(days=2)
    since, until = since.replace(hour=0, minute=0, second=0), until.replace(hour=0, minute=0, second=0)
    rng = random.Random(SEED)
    lines = ["day,source,medium,campaign,cost,currency"]
    for d in range(16):  # some days outside the range, which must not count
        day = (END - timedelta(days=d)).date()
        for source, medium, names, *_ in CAMPAIGNS:
            if source != "organic":  # organic has no spend
                lines += [f"{day},{source},{medium},{name},{rng.randint(50, 900)}.5,CNY" for name in names]
    lines.append(f"{(since + timedelta(days=1)).date()},print_flyer,offline,,300,CNY")  # spend, no conversions
    csv_path = tmp_path / "costs.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    rows = insights.read_costs_csv(csv_path)
    assert len(rows) == len(lines) - 1
    chdb_sink.query(insights.costs_insert_sql(rows, datetime(2026, 1, 1, tzinfo=UTC)), "")
    # A corrected file loaded later replaces the rows of the same day, channel and campaign.
    fixed = [{**r, "cost": 1000.0} if r["source"] == "sms" else r for r in rows]
    chdb_sink.query(insights.costs_insert_sql(fixed, datetime(2026, 1, 2, tzinfo=UTC)), "")

    costs: dict[tuple[str, str], float] = defaultdict(float)
    for r in fixed:
        if since.date() <= date.fromisoformat(r["day"]) < until.date():
            costs[(r["source"], r["medium"])] += r["cost"]
    attributed = brute_attribution(loaded, merges, "position_based", since=epoch_ms(since),
                                   until=epoch_ms(until))
    want = {}
    for key in set(costs) | set(attributed):
        conv, rev = attributed.get(key, [0.0, 0.0])
        cost = costs.get(key, 0.0)
        want[key] = (conv, rev, cost, (rev - cost) / cost if cost else None, rev / cost if cost else None)

    got = {(r[0], r[1]): r[2:] for r in chdb_sink.rows(
        *insights.roi_sql("position_based", since=since, until=until, where=SCOPE))}
    assert set(got) == set(want)
    for key, w in want.items():
        g = got[key]
        assert g[:3] == pytest.approx(w[:3], rel=1e-9, abs=1e-6), key
        for gv, wv in zip(g[3:], w[3:], strict=True):
            assert (gv is None and wv is None) or gv == pytest.approx(wv, rel=1e-9), key
    assert got[("sms", "crm")][2] == pytest.approx(1000.0 * (until - since).days)
    assert got[("print_flyer", "offline")][3] == -1.0  # spend without revenue: all lost
    assert got[("(direct)", "(none)")][3] is None


def test_costs_csv_errors_name_the_line(tmp_path):
    bad = tmp_path / "costs.csv"
    bad.write_text("day,source,medium,campaign,cost,currency\n2026-11-01,sms,crm,x,12,CNY\n2026-11-02,sms,crm,x,"
                   "twelve,CNY\n")
    with pytest.raises(ValueError, match=r"costs.csv:3"):
        insights.read_costs_csv(bad)
    bad.write_text("day,source,cost\n2026-11-01,sms,1\n")
    with pytest.raises(ValueError, match="header"):
        insights.read_costs_csv(bad)
    assert main(["costs", "load", str(bad)]) == 1


# --- A/B test ---------------------------------------------------------------------------------------------------

def brute_abtest(evs: list[Ev], resolve: dict[str, str], window_ms: int) -> dict[str, tuple[int, int, int]]:
    exposures: dict[str, list[tuple[int, str]]] = defaultdict(list)
    orders: dict[str, list[int]] = defaultdict(list)
    for e in evs:
        p = resolve.get(e.oneid, e.oneid)
        if e.event == "experiment_viewed" and e.props.get("experiment_id") == EXPERIMENT_ID:
            exposures[p].append((e.ms, e.props["variation_id"]))
        elif e.event == "order_paid":
            orders[p].append(e.ms)
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for p, xs in exposures.items():
        first, variant = min(xs)
        out[variant][0] += 1
        out[variant][1] += any(0 <= t - first <= window_ms for t in orders[p])
        out[variant][2] += len({v for _, v in xs}) > 1
    return {v: (n, c, m) for v, (n, c, m) in out.items()}


def check_abtest(sink: Any, evs: list[Ev], resolve: dict[str, str]) -> dict[str, tuple[int, int, int]]:
    for window, window_ms in (("7d", 7 * DAY), ("1h", HOUR)):
        got = {v: (n, c, m) for v, n, c, m in sink.rows(*insights.abtest_sql(EXPERIMENT_ID, window=window,
                                                                             where=SCOPE))}
        assert got == brute_abtest(evs, resolve, window_ms), window
    return got


def test_abtest_counts_equal_brute_force(chdb_sink, loaded):
    got = check_abtest(chdb_sink, loaded, {})
    assert set(got) == {"control", "treatment"}
    readout = insights.abtest_readout([(v, n, c, m) for v, (n, c, m) in got.items()])
    control, treatment = readout
    assert control["variant"] == "control" and control["p_value"] is None
    t = insights.two_proportion_test(control["converted"], control["exposed"], treatment["converted"],
                                     treatment["exposed"])
    assert treatment["p_value"] == t.p_value and treatment["lift"] == t.diff
    assert treatment["ci_low"] < treatment["lift"] < treatment["ci_high"]


def test_abtest_counts_equal_brute_force_after_merges(chdb_sink, loaded, merges):
    got = check_abtest(chdb_sink, loaded, merges)
    assert sum(m for _, _, m in got.values()) > 0  # persons joined across variants are reported as mixed


def test_two_proportion_z_test_matches_hand_computation():
    # 200 of 1000 against 250 of 1000. Pooled p = 450/2000 = 0.225; SE = sqrt(0.225 * 0.775 * 2/1000)
    # = 0.0186748; z = 0.05 / 0.0186748 = 2.67740; two-sided p = 2 (1 - Phi(2.6774)) = 0.007419.
    t = insights.two_proportion_test(200, 1000, 250, 1000)
    assert t.diff == pytest.approx(0.05)
    assert t.relative == pytest.approx(0.25)
    assert t.z == pytest.approx(2.67740, abs=1e-4)
    assert t.p_value == pytest.approx(0.007419, abs=1e-5)
    assert t.p_value == pytest.approx(2 * (1 - NormalDist().cdf(0.05 / math.sqrt(0.225 * 0.775 * 0.002))))
    # Unpooled SE = sqrt(0.2 * 0.8 / 1000 + 0.25 * 0.75 / 1000) = 0.0186414; 95%: +- 1.959964 * SE.
    assert t.ci_low == pytest.approx(0.05 - 0.036536, abs=1e-5)
    assert t.ci_high == pytest.approx(0.05 + 0.036536, abs=1e-5)
    # A symmetric result is symmetric; no difference gives p = 1; no variance gives no test.
    assert insights.two_proportion_test(250, 1000, 200, 1000).z == pytest.approx(-t.z)
    assert insights.two_proportion_test(30, 100, 30, 100).p_value == pytest.approx(1.0)
    assert insights.two_proportion_test(0, 100, 0, 100).p_value is None
    # A classic textbook case: 5/50 vs 15/50 -> z = 2.5, p = 0.0124.
    t = insights.two_proportion_test(5, 50, 15, 50)
    assert t.z == pytest.approx(2.5) and t.p_value == pytest.approx(0.012419, abs=1e-6)


def test_abtest_readout_control_choice():
    rows = [("a", 1000, 200, 0), ("b", 1000, 250, 3), ("c", 500, 90, 0)]
    default = insights.abtest_readout(rows)
    assert [r["variant"] for r in default] == ["a", "b", "c"] and default[0]["control"]
    chosen = insights.abtest_readout(rows, control="b")
    assert [r["variant"] for r in chosen] == ["b", "a", "c"]
    assert chosen[1]["lift"] == pytest.approx(-0.05)
    with pytest.raises(ValueError, match="no variant"):
        insights.abtest_readout(rows, control="z")


# --- RFM --------------------------------------------------------------------------------------------------------

# The documented R x FM grid, written out cell by cell (R from 5 down, FM 1..5).
GRID = {
    5: ["New", "Potential loyalist", "Potential loyalist", "Champions", "Champions"],
    4: ["Promising", "Potential loyalist", "Potential loyalist", "Loyal", "Loyal"],
    3: ["About to sleep", "About to sleep", "Need attention", "Loyal", "Loyal"],
    2: ["Hibernating", "Hibernating", "At risk", "At risk", "Can't lose"],
    1: ["Lost", "Lost", "At risk", "At risk", "Can't lose"],
}


def brute_rfm(evs: list[Ev], resolve: dict[str, str], as_of: datetime, period_ms: int) -> dict[str, tuple]:
    end = epoch_ms(as_of)
    orders: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for e in evs:
        if e.event == "order_paid" and end - period_ms <= e.ms < end:
            orders[resolve.get(e.oneid, e.oneid)].append((e.ms, float(e.props["amount"])))
    raw = {}
    for p, xs in orders.items():
        last = datetime.fromtimestamp(max(t for t, _ in xs) / 1000, UTC).date()
        raw[p] = ((as_of.date() - last).days, len(xs), round(sum(a for _, a in xs), 2))
    n = len(raw)

    def score(value: float, values: list[float], higher_is_better: bool) -> int:
        worse = sum(1 for v in values if (v < value if higher_is_better else v > value))
        return 1 + 5 * worse // n

    recency, freq, money = ([v[i] for v in raw.values()] for i in range(3))
    out = {}
    for p, (rec, f, m) in raw.items():
        r, fs, ms = score(rec, recency, False), score(f, freq, True), score(m, money, True)
        fm = (fs + ms + 1) // 2
        out[p] = (rec, f, m, r, fs, ms, fm, GRID[r][fm - 1])
    return out


def check_rfm(sink: Any, evs: list[Ev], resolve: dict[str, str]) -> None:
    as_of = END - timedelta(days=2, hours=5)
    got = {r[0]: (int(r[1]), int(r[2]), r[3], *map(int, r[4:8]), r[8])
           for r in sink.rows(*insights.rfm_persons_sql(as_of, "10d", where=SCOPE))}
    want = brute_rfm(evs, resolve, as_of, 10 * DAY)
    assert got == want
    sizes = {r[0]: int(r[1]) for r in sink.rows(*insights.rfm_segments_sql(as_of, "10d", where=SCOPE))}
    want_sizes: dict[str, int] = defaultdict(int)
    for v in want.values():
        want_sizes[v[-1]] += 1
    assert sizes == want_sizes
    assert len(sizes) >= 4  # the traffic spreads persons over several segments


def test_rfm_equals_brute_force(chdb_sink, loaded):
    check_rfm(chdb_sink, loaded, {})


def test_rfm_equals_brute_force_after_merges(chdb_sink, loaded, merges):
    check_rfm(chdb_sink, loaded, merges)


def test_rfm_segments_cover_the_grid():
    for r, names in GRID.items():
        for fm, name in enumerate(names, start=1):
            assert insights.rfm_segment(r, fm) == name


# --- paths ------------------------------------------------------------------------------------------------------

def brute_paths(evs: list[Ev], resolve: dict[str, str], event: str, steps: int, window_ms: int, direction: str,
                exclude: tuple[str, ...], collapse: bool, since: int | None = None,
                until: int | None = None) -> dict[tuple[str, ...], tuple[int, int]]:
    history: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for e in evs:
        if e.event not in exclude:
            history[resolve.get(e.oneid, e.oneid)].append((e.ms, e.message_id, e.event))
    counts: dict[tuple[str, ...], list[Any]] = defaultdict(lambda: [0, set()])
    for p, hs in history.items():
        hs.sort()
        if collapse:
            hs = [h for i, h in enumerate(hs) if i == 0 or h[2] != hs[i - 1][2]]
        for j, (t, _, name) in enumerate(hs):
            if name != event or (since and t < since) or (until and t >= until):
                continue
            if direction == "from":
                near = [h[2] for h in hs[j + 1:j + 1 + steps] if h[0] - t <= window_ms]
                path = tuple(near) + (("(end)",) if len(near) < steps else ())
            else:
                near = [h[2] for h in hs[max(0, j - steps):j] if t - h[0] <= window_ms]
                path = (("(start)",) if len(near) < steps else ()) + tuple(near)
            counts[path][0] += 1
            counts[path][1].add(p)
    return {k: (n, len(ps)) for k, (n, ps) in counts.items()}


@pytest.mark.parametrize("event, steps, window, direction, collapse", [
    ("add_to_cart", 3, "1h", "from", False),
    ("product_view", 2, "10m", "from", True),
    ("order_paid", 3, "1d", "to", False),
])
def test_paths_equal_brute_force(chdb_sink, loaded, event, steps, window, direction, collapse):
    window_ms = {"1h": HOUR, "10m": 600_000, "1d": DAY}[window]
    since, until = END - timedelta(days=9), END - timedelta(days=3)
    wanted = []
    for kw in ({}, {"since": since, "until": until}):  # all anchors; anchors in a range
        q = insights.paths_sql(event, steps, 100_000, window, direction, collapse_repeats=collapse,
                               where=SCOPE, **kw)
        got = {tuple(path): (int(n), int(p)) for path, n, p in chdb_sink.rows(*q)}
        ms = {k: epoch_ms(v) for k, v in kw.items()}
        want = brute_paths(loaded, {}, event, steps, window_ms, direction, insights.NON_BEHAVIOUR_EVENTS,
                           collapse, **ms)
        assert got == want
        assert len(want) > 3
        wanted.append(want)
    assert sum(n for n, _ in wanted[1].values()) < sum(n for n, _ in wanted[0].values())
    # Top K: the most frequent paths, most frequent first.
    top = chdb_sink.rows(*insights.paths_sql(event, steps, 5, window, direction, collapse_repeats=collapse,
                                             where=SCOPE))
    ranked = sorted(wanted[0].items(), key=lambda kv: (-kv[1][0], kv[0]))
    assert [(tuple(p), int(n)) for p, n, _ in top] == [(p, n) for p, (n, _) in ranked[:5]]


def test_paths_equal_brute_force_after_merges(chdb_sink, loaded, merges):
    q = insights.paths_sql("add_to_cart", 3, 100_000, "1d", "from", where=SCOPE)
    got = {tuple(path): (int(n), int(p)) for path, n, p in chdb_sink.rows(*q)}
    assert got == brute_paths(loaded, merges, "add_to_cart", 3, DAY, "from", insights.NON_BEHAVIOUR_EVENTS, False)


# --- the CLI ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["attribution", "--model", "time_decay", "--half-life", "3d", "--sql"],
    ["roi", "--since", "2026-11-01", "--until", "2026-12-01", "--sql"],
    ["abtest", "--experiment", "checkout_redesign", "--sql"],
    ["rfm", "--as-of", "2026-12-01", "--sql"],
    ["rfm", "--persons", "--sql"],
    ["paths", "--from", "add_to_cart", "--sql"],
    ["paths", "--to", "order_paid", "--no-merge", "--sql"],
])
def test_cli_prints_the_sql(argv, capsys):
    assert main(argv) == 0
    sql = capsys.readouterr().out
    assert sql.startswith(("WITH", "SELECT"))
    assert ("cdp.events_resolved" in sql) != ("--no-merge" in argv)
