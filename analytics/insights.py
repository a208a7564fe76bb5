"""Marketing and product insights the CLI runs: attribution, channel ROI, A/B readouts, RFM segments, next-step paths.

Each ``*_sql`` builder returns a ``Query``: ClickHouse SQL (the same on chDB and on a server) whose every value
is a ``{name:Type}`` placeholder, and the values (analytics.sql); ``cdp <command> --sql`` prints it with the values
written in, for pasting into ``cdp sql`` or a BI tool. Events are read merge-aware by default (``events_source``:
a person's OneIDs joined by identity merges count as one person). ``where`` (SQL over cdp.events columns, the
analyst's own, taken as written) narrows every event a query reads. Statistics that need more than counting (the
A/B test) are computed here in Python.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any

import orjson

from analytics.funnels import events_source
from analytics.sql import Params, Query, ms_time, property_sql, time_range, utc_ms
from rules.loader import parse_duration_ms

MODELS = ("last_click", "first_click", "linear", "time_decay", "position_based")
# Where a conversion without any touchpoint in its lookback window goes (Google Analytics' spelling).
DIRECT = ("(direct)", "(none)")
# Calls that are not behaviour: left out of paths unless asked for.
NON_BEHAVIOUR_EVENTS = ("identify", "alias", "group")


def _and(*conds: str | None) -> str:
    kept = [f"({c})" for c in conds if c]
    return " AND ".join(kept) if kept else "1"


# --- attribution ------------------------------------------------------------------------------------------------

def _credits(model: str) -> str:
    """Per journey, the array of (source, medium, campaign, credit) a model gives its touchpoints; credits sum to 1.

    ``touches`` is the journey's touchpoints, oldest first, as (ms, message_id, source, medium, campaign);
    ``decay`` their time-decay weights (see _decay)."""
    n = "length(touches)"
    if model == "last_click":
        return "[(touches[-1].3, touches[-1].4, touches[-1].5, 1.)]"
    if model == "first_click":
        return "[(touches[1].3, touches[1].4, touches[1].5, 1.)]"
    if model == "linear":
        return f"arrayMap(x -> (x.3, x.4, x.5, 1. / {n}), touches)"
    if model == "position_based":
        share = (f"multiIf({n} = 1, 1., {n} = 2, 0.5, i = 1 OR i = {n}, 0.4, 0.2 / ({n} - 2))")
        return f"arrayMap((x, i) -> (x.3, x.4, x.5, {share}), touches, arrayEnumerate(touches))"
    if model == "time_decay":
        return "arrayMap((x, w) -> (x.3, x.4, x.5, w / arraySum(decay)), touches, decay)"
    raise ValueError(f"unknown attribution model {model!r}; choose from {', '.join(MODELS)}")


def _decay(half_life_ms: str) -> str:
    """Time-decay weights 2^(-age / half-life), the age taken from the latest touch rather than the conversion:
    normalised, the credits are the same, and the latest weight is 1, so a long lookback cannot underflow them
    all to 0. ``half_life_ms``: its SQL (a placeholder)."""
    return f"arrayMap(x -> exp2((x.1 - touches[-1].1) / {half_life_ms}), touches)"


def attribution_sql(model: str = "last_click", conversion: str = "order_paid", lookback: str = "30d",
                    half_life: str = "7d", since: datetime | None = None, until: datetime | None = None,
                    by_campaign: bool = False, visit_gap: str = "30m", merge_aware: bool = True,
                    where: str | None = None, params: Params | None = None) -> Query:
    """Conversions and revenue credited per channel: rows (source, medium[, campaign], conversions, revenue).

    A conversion is a ``conversion`` event in [since, until); its revenue is ``properties.amount``. Its journey is
    the same person's touchpoints (events with a campaign_source) in the ``lookback`` before it, up to and
    including its own time. A touchpoint repeating the previous one's source, medium and campaign within
    ``visit_gap`` is the same visit and counts once. The model splits each conversion (1) and its revenue over
    the journey's touchpoints; a conversion with no touchpoint goes to ``DIRECT``. ``params``: bind into these (a
    query that holds this one), else new ones."""
    p = params if params is not None else Params()
    credits = _credits(model)
    weighted = "visits"
    if model == "time_decay":
        half_life_ms = p("half_life_ms", max(1, parse_duration_ms(half_life)), "Int64")
        weighted = f"(SELECT amount, touches, {_decay(half_life_ms)} AS decay FROM visits)"
    lookback_ms = parse_duration_ms(lookback)
    lookback_sql = p("lookback_ms", lookback_ms, "Int64")
    gap_sql = p("visit_gap_ms", parse_duration_ms(visit_gap), "Int64")
    src = events_source(merge_aware)
    keys = "source, medium, campaign" if by_campaign else "source, medium"
    direct = f"[({p('direct_source', DIRECT[0], 'String')}, {p('direct_medium', DIRECT[1], 'String')}, '', 1.)]"
    conversions = _and(f"event = {p('conversion', conversion, 'String')}", *time_range(p, since, until), where)
    # Touchpoints can precede the first conversion in range by up to the lookback.
    tp_since = [f"ts >= {ms_time(p, 'touch_since', utc_ms(since) - lookback_ms)}"] if since else []
    tp_until = [f"ts < {ms_time(p, 'until', utc_ms(until))}"] if until else []
    touchpoints = _and("campaign_source != ''", *tp_since, *tp_until, where)
    return p.query(
        f"WITH conversions AS ("
        f" SELECT message_id AS conversion_id, oneid, toUnixTimestamp64Milli(ts) AS ms,"
        f" JSONExtractFloat(properties, 'amount') AS amount FROM {src} WHERE {conversions}),"
        f" touchpoints AS ("
        f" SELECT oneid, toUnixTimestamp64Milli(ts) AS ms, message_id,"
        f" toString(campaign_source) AS source, toString(campaign_medium) AS medium, campaign_name AS campaign"
        f" FROM {src} WHERE {touchpoints} AND oneid IN (SELECT oneid FROM conversions)),"
        # Per conversion, its journey: touchpoints in the lookback, oldest first (message_id breaks ties).
        f" journeys AS ("
        f" SELECT c.conversion_id AS conversion_id, any(c.amount) AS amount,"
        f" arraySort(x -> (x.1, x.2), groupArrayIf((t.ms, t.message_id, t.source, t.medium, t.campaign),"
        f" t.oneid != '' AND c.ms - t.ms BETWEEN 0 AND {lookback_sql})) AS raw"
        f" FROM conversions AS c LEFT JOIN touchpoints AS t ON t.oneid = c.oneid GROUP BY c.conversion_id),"
        f" visits AS ("
        f" SELECT conversion_id, amount, arrayFilter((x, i) -> i = 1 OR (x.3, x.4, x.5) !="
        f" (raw[i - 1].3, raw[i - 1].4, raw[i - 1].5) OR x.1 - raw[i - 1].1 > {gap_sql},"
        f" raw, arrayEnumerate(raw)) AS touches FROM journeys),"
        f" credited AS ("
        f" SELECT amount, if(empty(touches), {direct}, {credits}) AS credits FROM {weighted})"
        f" SELECT credit.1 AS source, credit.2 AS medium,{' credit.3 AS campaign,' if by_campaign else ''}"
        f" sum(credit.4) AS conversions, sum(credit.4 * amount) AS revenue"
        f" FROM credited ARRAY JOIN credits AS credit"
        f" GROUP BY {keys} ORDER BY revenue DESC, conversions DESC, {keys}"
    )


def roi_sql(model: str = "last_click", conversion: str = "order_paid", lookback: str = "30d",
            half_life: str = "7d", since: datetime | None = None, until: datetime | None = None,
            by_campaign: bool = False, merge_aware: bool = True, where: str | None = None) -> Query:
    """Per channel: attributed conversions and revenue (as ``attribution_sql``) beside the summed spend of
    cdp.channel_costs over the same days: rows (source, medium[, campaign], conversions, revenue, cost, roi, roas),
    roi = (revenue - cost) / cost and roas = revenue / cost, NULL without cost.

    Costs count on the days from since's date up to, not including, until's date (UTC); pass whole days."""
    p = Params()
    keys = "source, medium, campaign" if by_campaign else "source, medium"
    attributed = attribution_sql(model, conversion, lookback, half_life, since, until, by_campaign,
                                 merge_aware=merge_aware, where=where, params=p).sql
    days = _and(f"day >= toDate({ms_time(p, 'since', utc_ms(since))})" if since else None,
                f"day < toDate({ms_time(p, 'until', utc_ms(until))})" if until else None)
    costs = (f"SELECT toString(source) AS source, toString(medium) AS medium,"
             f"{' campaign,' if by_campaign else ''} 0. AS conversions, 0. AS revenue, sum(cost) AS cost"
             f" FROM cdp.channel_costs FINAL WHERE {days} GROUP BY {keys}")
    return p.query(
        f"SELECT *, if(cost > 0, (revenue - cost) / cost, NULL) AS roi, if(cost > 0, revenue / cost, NULL) AS roas"
        f" FROM (SELECT {keys}, sum(conversions) AS conversions, sum(revenue) AS revenue, sum(cost) AS cost"
        f" FROM (SELECT {keys}, conversions, revenue, 0. AS cost FROM ({attributed}) UNION ALL {costs})"
        f" GROUP BY {keys}) ORDER BY cost DESC, revenue DESC, {keys}"
    )


COST_COLUMNS = ("day", "source", "medium", "campaign", "cost", "currency")


def read_costs_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a cost CSV (header day,source,medium,campaign,cost,currency; campaign may be empty).
    Raises ValueError naming the line of the first bad row."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        if header != list(COST_COLUMNS):
            raise ValueError(f"{path}: the header must be {','.join(COST_COLUMNS)}, not {','.join(header)}")
        rows = []
        for record in reader:
            line = reader.line_num
            r = {k.strip(): (v or "").strip() for k, v in record.items() if k}
            try:
                day = date.fromisoformat(r["day"])
                cost = float(r["cost"])
            except ValueError as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
            if not r["source"] or not r["medium"]:
                raise ValueError(f"{path}:{line}: source and medium are required")
            if not math.isfinite(cost) or cost < 0:
                raise ValueError(f"{path}:{line}: cost must be a number >= 0")
            rows.append({"day": day.isoformat(), "source": r["source"], "medium": r["medium"],
                         "campaign": r["campaign"], "cost": cost, "currency": r["currency"]})
    return rows


def costs_insert_sql(rows: list[dict[str, Any]], updated_at: datetime | None = None) -> str:
    """One INSERT of cost rows (run it with no output format). A later load of the same (day, source, medium,
    campaign) replaces the earlier: its updated_at is later."""
    stamp = (updated_at or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:23]
    body = b"\n".join(orjson.dumps({**r, "updated_at": stamp}) for r in rows)
    return (f"INSERT INTO cdp.channel_costs ({', '.join(COST_COLUMNS)}, updated_at) FORMAT JSONEachRow\n"
            + body.decode())


# --- A/B tests --------------------------------------------------------------------------------------------------

def abtest_sql(experiment: str, conversion: str = "order_paid", window: str = "7d", since: datetime | None = None,
               until: datetime | None = None, merge_aware: bool = True, where: str | None = None) -> Query:
    """Per variant: rows (variant, exposed, converted, mixed).

    A person's variant is that of their first ``experiment_viewed`` of the experiment (properties experiment_id,
    variation_id), first exposure in [since, until); converted: a ``conversion`` event from the first exposure
    up to ``window`` after it; mixed: persons who were also shown another variant (counted under their first)."""
    p = Params()
    window_ms = p("window_ms", parse_duration_ms(window), "Int64")
    src = events_source(merge_aware)
    variant = property_sql(p, "variation_id", "variant_property")
    exposures = _and("event = 'experiment_viewed'", f"{property_sql(p, 'experiment_id', 'experiment_property')}"
                     f" = {p('experiment', experiment, 'String')}", where)
    first_in_range = " AND ".join(time_range(p, since, until, "first_exposed")) or None
    conversions = _and(f"event = {p('conversion', conversion, 'String')}", where)
    return p.query(
        f"WITH exposed AS ("
        f" SELECT oneid, argMin({variant}, ts) AS variant, min(ts) AS first_exposed,"
        f" uniqExact({variant}) > 1 AS mixed FROM {src} WHERE {exposures} GROUP BY oneid"
        f"{f' HAVING {first_in_range}' if first_in_range else ''}),"
        f" persons AS ("
        f" SELECT x.oneid AS oneid, any(x.variant) AS variant, any(x.mixed) AS mixed,"
        f" countIf(c.oneid != '' AND toUnixTimestamp64Milli(c.ts) - toUnixTimestamp64Milli(x.first_exposed)"
        f" BETWEEN 0 AND {window_ms}) > 0 AS converted"
        f" FROM exposed AS x LEFT JOIN (SELECT oneid, ts FROM {src} WHERE {conversions}"
        f" AND oneid IN (SELECT oneid FROM exposed)) AS c ON c.oneid = x.oneid GROUP BY x.oneid)"
        f" SELECT variant, count() AS exposed, countIf(converted) AS converted, countIf(mixed) AS mixed"
        f" FROM persons GROUP BY variant ORDER BY variant"
    )


@dataclass(frozen=True)
class ProportionTest:
    """Variant B against control A: difference of conversion rates, pooled two-proportion z-test, and a Wald
    confidence interval of the difference."""

    diff: float          # rate_b - rate_a
    relative: float | None  # diff / rate_a
    z: float | None
    p_value: float | None  # two-sided
    ci_low: float | None
    ci_high: float | None


def two_proportion_test(converted_a: int, n_a: int, converted_b: int, n_b: int,
                        confidence: float = 0.95) -> ProportionTest:
    """z = (p_b - p_a) / sqrt(p (1 - p) (1/n_a + 1/n_b)) with the pooled p = (x_a + x_b) / (n_a + n_b);
    two-sided p-value = erfc(|z| / sqrt 2). CI: diff ± z_crit sqrt(p_a (1-p_a) / n_a + p_b (1-p_b) / n_b)."""
    if n_a <= 0 or n_b <= 0:
        raise ValueError("both groups need exposed persons")
    p_a, p_b = converted_a / n_a, converted_b / n_b
    diff = p_b - p_a
    pooled = (converted_a + converted_b) / (n_a + n_b)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    z = diff / se_pooled if se_pooled > 0 else None
    p_value = math.erfc(abs(z) / math.sqrt(2)) if z is not None else None
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    z_crit = NormalDist().inv_cdf(0.5 + confidence / 2)
    ci = (diff - z_crit * se, diff + z_crit * se) if se > 0 else (None, None)
    return ProportionTest(diff, diff / p_a if p_a > 0 else None, z, p_value, ci[0], ci[1])


def abtest_readout(rows: list[tuple[str, int, int, int]], control: str | None = None,
                   confidence: float = 0.95) -> list[dict[str, Any]]:
    """Per variant: exposed, converted, rate, mixed, and against the control (``control`` or the first variant
    by name): absolute and relative lift, z, p-value and the confidence interval of the difference."""
    if not rows:
        return []
    by_variant = {str(v): (int(n), int(c), int(m)) for v, n, c, m in rows}
    control = control if control is not None else sorted(by_variant)[0]
    if control not in by_variant:
        raise ValueError(f"no variant {control!r}; the variants are {', '.join(sorted(by_variant))}")
    n_a, c_a, _ = by_variant[control]
    out = []
    for variant in [control, *sorted(v for v in by_variant if v != control)]:
        n, c, mixed = by_variant[variant]
        row: dict[str, Any] = {"variant": variant, "control": variant == control, "exposed": n, "converted": c,
                               "rate": c / n if n else None, "mixed": mixed, "lift": None, "relative_lift": None,
                               "z": None, "p_value": None, "ci_low": None, "ci_high": None}
        if variant != control and n and n_a:
            t = two_proportion_test(c_a, n_a, c, n, confidence)
            row.update(lift=t.diff, relative_lift=t.relative, z=t.z, p_value=t.p_value, ci_low=t.ci_low,
                       ci_high=t.ci_high)
        out.append(row)
    return out


# --- RFM --------------------------------------------------------------------------------------------------------

# (segment, R scores, FM scores): the usual R x FM grid (FM = (F + M) / 2 rounded half up); every cell named once.
RFM_SEGMENTS: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = [
    ("Champions", (5,), (4, 5)),
    ("Loyal", (3, 4), (4, 5)),
    ("Potential loyalist", (4, 5), (2, 3)),
    ("New", (5,), (1,)),
    ("Promising", (4,), (1,)),
    ("Need attention", (3,), (3,)),
    ("About to sleep", (3,), (1, 2)),
    ("At risk", (1, 2), (3, 4)),
    ("Can't lose", (1, 2), (5,)),
    ("Hibernating", (2,), (1, 2)),
    ("Lost", (1,), (1, 2)),
]


def rfm_segment(r: int, fm: int) -> str:
    for name, rs, fms in RFM_SEGMENTS:
        if r in rs and fm in fms:
            return name
    raise ValueError(f"scores out of range: R {r}, FM {fm}")


def _score(column: str, descending: bool = False) -> str:
    """1..5 by quintile of rank: 1 + floor(5 * (persons strictly worse) / persons). Ties share a score."""
    order = f"{column} DESC" if descending else column
    return f"toUInt8(1 + intDiv(5 * (rank() OVER (ORDER BY {order}) - 1), count() OVER ()))"


def rfm_persons_sql(as_of: datetime, period: str = "365d", conversion: str = "order_paid",
                    merge_aware: bool = True, where: str | None = None, segment: str | None = None,
                    params: Params | None = None) -> Query:
    """Per person with a ``conversion`` in [as_of - period, as_of): rows (oneid, recency_days, frequency,
    monetary, r, f, m, fm, segment). recency_days = calendar days (UTC) from the last one to as_of; frequency =
    how many; monetary = sum of properties.amount (rounded to cents). Higher scores are better (recent, often,
    much). Scores rank persons against each other, so ``segment`` (only its persons) filters after scoring.
    ``params``: bind into these (a query that holds this one), else new ones."""
    p = params if params is not None else Params()
    as_of_ms = utc_ms(as_of)
    as_of_sql = ms_time(p, "as_of", as_of_ms)
    cond = _and(f"event = {p('conversion', conversion, 'String')}",
                f"ts >= {ms_time(p, 'since', as_of_ms - parse_duration_ms(period))}", f"ts < {as_of_sql}", where)
    # The segment's name by its index in one bound array (index 0, no cell: '').
    names = p("segment_names", [name for name, _, _ in RFM_SEGMENTS], "Array(String)")
    named = f"{names}[multiIf(" + ", ".join(
        f"r IN ({', '.join(map(str, rs))}) AND fm IN ({', '.join(map(str, fms))}), {i}"
        for i, (_, rs, fms) in enumerate(RFM_SEGMENTS, start=1)) + ", 0)]"
    sql = (
        f"SELECT oneid, recency_days, frequency, monetary, r, f, m, toUInt8(intDiv(f + m + 1, 2)) AS fm,"
        f" {named} AS segment FROM ("
        f" SELECT *, {_score('recency_days', descending=True)} AS r, {_score('frequency')} AS f,"
        f" {_score('monetary')} AS m FROM ("
        f" SELECT oneid, dateDiff('day', toDate(max(ts)), toDate({as_of_sql})) AS recency_days,"
        f" count() AS frequency, round(sum(JSONExtractFloat(properties, 'amount')), 2) AS monetary"
        f" FROM {events_source(merge_aware)} WHERE {cond} GROUP BY oneid))"
        f" ORDER BY r DESC, fm DESC, oneid"
    )
    if segment:
        sql = (f"SELECT * FROM ({sql}) WHERE segment = {p('segment', segment, 'String')}"
               f" ORDER BY r DESC, fm DESC, oneid")
    return p.query(sql)


def rfm_segments_sql(as_of: datetime, period: str = "365d", conversion: str = "order_paid",
                     merge_aware: bool = True, where: str | None = None) -> Query:
    """Segment sizes: rows (segment, persons, avg_recency_days, avg_frequency, avg_monetary, total_monetary)."""
    p = Params()
    return p.query(
        f"SELECT segment, count() AS persons, avg(recency_days) AS avg_recency_days,"
        f" avg(frequency) AS avg_frequency, avg(monetary) AS avg_monetary, sum(monetary) AS total_monetary"
        f" FROM ({rfm_persons_sql(as_of, period, conversion, merge_aware, where, params=p).sql})"
        f" GROUP BY segment ORDER BY persons DESC, segment"
    )


# --- paths ------------------------------------------------------------------------------------------------------

END, START = "(end)", "(start)"


def paths_sql(event: str, steps: int = 3, top: int = 20, window: str = "1d", direction: str = "from",
              since: datetime | None = None, until: datetime | None = None,
              exclude: Sequence[str] = NON_BEHAVIOUR_EVENTS, collapse_repeats: bool = False,
              merge_aware: bool = True, where: str | None = None) -> Query:
    """The most frequent sequences of the ``steps`` events after (``direction`` "from") or before ("to") each
    ``event`` in [since, until), the same person's, within ``window`` of it: rows (path, occurrences, persons),
    path an array of event names, oldest first, without the anchor event itself. A path shorter than ``steps``
    ends in '(end)' (nothing more within the window) or starts with '(start)'. ``exclude``: events left out
    entirely; ``collapse_repeats``: a run of the same event counts as one step."""
    if direction not in ("from", "to"):
        raise ValueError("direction is from or to")
    if steps < 1:
        raise ValueError("steps must be at least 1")
    p = Params()
    window_ms = parse_duration_ms(window)
    window_sql = p("window_ms", window_ms, "Int64")
    since_ms, until_ms = (utc_ms(since) if since else None), (utc_ms(until) if until else None)
    # Only events that can be a step of an anchor in range: the range widened by the window.
    cond = _and(f"event NOT IN {p('exclude', list(exclude), 'Array(String)')}" if exclude else None,
                f"ts >= {ms_time(p, 'events_since', since_ms - window_ms)}" if since_ms is not None else None,
                f"ts < {ms_time(p, 'events_until', until_ms + window_ms)}" if until_ms is not None else None, where)
    anchor = _and(f"evs[j].3 = {p('event', event, 'String')}",
                  f"evs[j].1 >= {p('since_ms', since_ms, 'Int64')}" if since_ms is not None else None,
                  f"evs[j].1 < {p('until_ms', until_ms, 'Int64')}" if until_ms is not None else None)
    n = p("steps", int(steps), "Int64")
    history = "arraySort(x -> (x.1, x.2), groupArray((toUnixTimestamp64Milli(ts), message_id, toString(event))))"
    if collapse_repeats:
        history = f"arrayFilter((x, i) -> i = 1 OR x.3 != h[i - 1].3, {history} AS h, arrayEnumerate(h))"
    if direction == "from":
        near = f"arrayFilter(x -> x.1 - evs[j].1 <= {window_sql}, arraySlice(evs, j + 1, {n}))"
        path = f"arrayConcat(arrayMap(x -> x.3, near), if(length(near) < {n}, [{p('end', END, 'String')}], []))"
    else:
        first = f"greatest(1, j - {n})"
        near = f"arrayFilter(x -> evs[j].1 - x.1 <= {window_sql}, arraySlice(evs, {first}, j - {first}))"
        path = f"arrayConcat(if(length(near) < {n}, [{p('start', START, 'String')}], []), arrayMap(x -> x.3, near))"
    return p.query(
        f"SELECT path, count() AS occurrences, uniqExact(oneid) AS persons FROM ("
        f" SELECT oneid, {near} AS near, {path} AS path FROM ("
        f" SELECT oneid, {history} AS evs FROM {events_source(merge_aware)} WHERE {cond} GROUP BY oneid)"
        f" ARRAY JOIN arrayFilter(j -> {anchor}, arrayEnumerate(evs)) AS j)"
        f" GROUP BY path ORDER BY occurrences DESC, path LIMIT {p('top', int(top), 'UInt64')}"
    )


# --- output -----------------------------------------------------------------------------------------------------

def _cell(v: Any, kind: str) -> str:
    if v is None:
        return ""
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if kind == "money":
        return f"{v:,.2f}"
    if kind == "num":
        return f"{int(v):,}"
    if kind == "dec":
        return f"{v:,.1f}"
    if kind == "ratio":
        return f"{v:.2f}"
    if kind == "p":
        return f"{v:.4f}" if v >= 0.0001 else "<0.0001"
    return str(v)


def format_table(columns: list[tuple[str, str, str]], rows: list[dict[str, Any]]) -> str:
    """A plain text table; columns are (key, heading, kind), kind one of text, num (a count), dec (one decimal),
    money, pct, ratio, p."""
    cells = [[_cell(r.get(k), kind) for k, _, kind in columns] for r in rows]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, (_, h, _) in enumerate(columns)]
    right = [kind != "text" for _, _, kind in columns]

    def line(values: list[str]) -> str:
        padded = (v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True))
        return "  ".join(padded).rstrip()

    return "\n".join([line([h for _, h, _ in columns]), *(line(c) for c in cells)])


ATTRIBUTION_COLUMNS = [("source", "source", "text"), ("medium", "medium", "text"),
                       ("conversions", "conversions", "dec"), ("revenue", "revenue", "money")]
ROI_COLUMNS = [*ATTRIBUTION_COLUMNS, ("cost", "cost", "money"), ("roi", "ROI", "pct"), ("roas", "ROAS", "ratio")]
ABTEST_COLUMNS = [("variant", "variant", "text"), ("exposed", "exposed", "num"), ("converted", "converted", "num"),
                  ("rate", "rate", "pct"), ("lift", "lift", "pct"), ("relative_lift", "rel. lift", "pct"),
                  ("ci", "95% CI of lift", "text"), ("p_value", "p-value", "p")]
RFM_SEGMENT_COLUMNS = [("segment", "segment", "text"), ("persons", "persons", "num"),
                       ("avg_recency_days", "recency (d)", "dec"), ("avg_frequency", "frequency", "dec"),
                       ("avg_monetary", "avg monetary", "money"), ("total_monetary", "total monetary", "money")]
RFM_PERSON_COLUMNS = [("oneid", "oneid", "text"), ("recency_days", "recency (d)", "num"),
                      ("frequency", "frequency", "num"), ("monetary", "monetary", "money"), ("r", "R", "num"),
                      ("f", "F", "num"), ("m", "M", "num"), ("segment", "segment", "text")]
PATH_COLUMNS = [("path", "path", "text"), ("occurrences", "occurrences", "num"), ("persons", "persons", "num")]


def path_text(event: str, path: Sequence[str], direction: str = "from") -> str:
    steps = [f"[{event}]", *path] if direction == "from" else [*path, f"[{event}]"]
    return " > ".join(steps)
