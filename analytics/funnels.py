"""Analyst queries the CLI runs (SQL text, so they run the same on chDB and on a ClickHouse server), each a
``Query``: SQL with ``{name:Type}`` placeholders and their values (analytics.sql)."""

from __future__ import annotations

from datetime import datetime

from analytics.sql import Params, Query, property_sql, time_range
from rules.loader import parse_duration_ms


def events_source(merge_aware: bool = True) -> str:
    """The FROM-source for analyst queries over events: ``FROM {events_source()} AS e`` (the alias is optional).

    Merge-aware (default): the view ``cdp.events_resolved``, where ``oneid`` is the person's current surviving
    OneID after identity merges and splits. Otherwise raw OneIDs from ``cdp.events FINAL``. Both have every column
    of cdp.events plus ``oneid_original`` (the OneID the event was sunk with)."""
    if merge_aware:
        return "cdp.events_resolved"
    # A subquery, not "cdp.events FINAL", so that callers can alias it like the view.
    return "(SELECT *, oneid AS oneid_original FROM cdp.events FINAL)"


FUNNEL_MODES = ("strict_order", "strict_deduplication", "strict_increase")


def funnel_sql(steps: list[str], window: str, since: datetime | None = None, until: datetime | None = None,
               mode: str | list[str] | tuple[str, ...] | None = None, breakdown: str | None = None,
               merge_aware: bool = True, where: str | None = None, params: Params | None = None) -> Query:
    """Persons (by OneID) reaching each step in order within the window (ClickHouse ``windowFunnel``).

    Rows are ``(level, persons)``: persons whose furthest step is ``level`` (0: never did the first step); with
    ``breakdown``, ``(value, level, persons)`` for level >= 1, where value is that property of the person's
    earliest first-step event in the range (each person counts once, under one value, so the rows add up to the
    funnel without breakdown). ``mode``: windowFunnel's strict modes, any of FUNNEL_MODES (default: none).
    ``merge_aware``: count persons after identity merges (see events_source). ``where`` (the analyst's SQL, taken
    as written) narrows the events. ``params``: bind into these (a query that holds this one), else new ones.
    """
    if len(steps) < 2:
        raise ValueError("a funnel needs at least two steps")
    modes = [mode] if isinstance(mode, str) else list(mode or [])
    modes = [m for m in dict.fromkeys(modes) if m != "default"]
    bad = [m for m in modes if m not in FUNNEL_MODES]
    if bad:
        raise ValueError(f"unknown funnel mode {bad[0]!r}; choose from default, {', '.join(FUNNEL_MODES)}")
    p = params if params is not None else Params()
    window_s = max(1, parse_duration_ms(window) // 1000)
    funnel_params = ", ".join([p("window_s", window_s, "UInt64"),
                               *(p(f"mode_{i}", m, "String") for i, m in enumerate(modes, start=1))])
    step_sql = [p(f"step_{i}", s, "String") for i, s in enumerate(steps, start=1)]
    conds = ", ".join(f"event = {s}" for s in step_sql)
    scope = time_range(p, since, until)
    if where:
        scope.append(f"({where})")
    # strict_order stops a person's chain at any event that is not the next step, so it must see all their events;
    # the other modes only need the steps' events.
    if "strict_order" not in modes:
        scope.append(f"event IN {p('steps', list(dict.fromkeys(steps)), 'Array(String)')}")
    where_sql = f" WHERE {' AND '.join(scope)}" if scope else ""
    # windowFunnel rejects DateTime64: pass whole seconds. Both sources collapse retried inserts (FINAL).
    per_person = f"windowFunnel({funnel_params})(toDateTime(ts), {conds}) AS level"
    if breakdown is None:
        return p.query(
            f"SELECT level, count() AS persons FROM ("
            f" SELECT oneid, {per_person} FROM {events_source(merge_aware)}{where_sql} GROUP BY oneid"
            f") GROUP BY level ORDER BY level"
        )
    value = f"argMinIf({property_sql(p, breakdown, 'breakdown')}, ts, event = {step_sql[0]}) AS value"
    return p.query(
        f"SELECT value, level, count() AS persons FROM ("
        f" SELECT oneid, {per_person}, {value} FROM {events_source(merge_aware)}{where_sql} GROUP BY oneid"
        f") WHERE level > 0 GROUP BY value, level ORDER BY value, level"
    )


def funnel_table(steps: list[str], levels: dict[int, int]) -> list[tuple[str, int, float | None, float | None]]:
    """(step, persons reaching it, % of previous step, % of first step) from windowFunnel's level counts."""
    rows: list[tuple[str, int, float | None, float | None]] = []
    first: int | None = None
    prev: int | None = None
    for i, step in enumerate(steps, start=1):
        n = sum(c for lvl, c in levels.items() if lvl >= i)
        of_prev = None if prev in (None, 0) else 100.0 * n / prev
        of_first = None if first in (None, 0) else 100.0 * n / first
        rows.append((step, n, of_prev, of_first))
        if first is None:
            first = n
        prev = n
    return rows


def format_funnel(rows: list[tuple[str, int, float | None, float | None]]) -> str:
    w = max(len("step"), *(len(r[0]) for r in rows))
    out = [f"{'step':<{w}}  {'persons':>8}  {'of prev':>8}  {'of first':>8}"]
    for step, n, p, f in rows:
        ps = "" if p is None else f"{p:7.1f}%"
        fs = "" if f is None else f"{f:7.1f}%"
        out.append(f"{step:<{w}}  {n:>8}  {ps:>8}  {fs:>8}")
    return "\n".join(out)


def funnel_breakdown(steps: list[str], rows: list[tuple[str, int, int]]
                     ) -> dict[str, list[tuple[str, int, float | None, float | None]]]:
    """funnel_table per breakdown value from ``(value, level, persons)`` rows; '' (no such property) is shown as
    '(none)'. Values in order of persons at the first step, most first."""
    by_value: dict[str, dict[int, int]] = {}
    for value, level, n in rows:
        by_value.setdefault(str(value) or "(none)", {})[int(level)] = int(n)
    tables = {v: funnel_table(steps, levels) for v, levels in by_value.items()}
    return dict(sorted(tables.items(), key=lambda kv: (-kv[1][0][1], kv[0])))


def format_funnel_breakdown(prop: str, tables: dict[str, list[tuple[str, int, float | None, float | None]]]
                            ) -> str:
    return "\n\n".join(f"{prop} = {value}\n{format_funnel(rows)}" for value, rows in tables.items())


_PERIODS = {"day": (1, "toStartOfDay"), "week": (7, "toMonday")}


def retention_sql(period: str = "week", periods: int = 8, event: str | None = None,
                  where: str | None = None, merge_aware: bool = True, since: datetime | None = None,
                  until: datetime | None = None, params: Params | None = None) -> Query:
    """Persons by first-seen cohort (day, or week from Monday; UTC) and period since: rows (cohort, k, persons),
    where k = -1 is the cohort's size and k >= 0 counts its persons active k periods after their cohort began.

    Active = any event, or only ``event`` when given; ``where`` (the analyst's SQL, taken as written) and
    [since, until) narrow every event considered. Persons are counted after identity merges unless ``merge_aware``
    is false (a merged person's cohort is the first event of any of their OneIDs)."""
    if period not in _PERIODS:
        raise ValueError("period is day or week")
    p = params if params is not None else Params()
    days, start = _PERIODS[period]
    scope = " AND ".join(f"({c})" for c in [*time_range(p, since, until), *([where] if where else [])]) or "1"
    active = f"{scope} AND e.event = {p('event', event, 'String')}" if event else scope
    source = events_source(merge_aware)
    return p.query(
        f"WITH f AS (SELECT oneid, {start}(min(ts)) AS cohort FROM {source} WHERE {scope} GROUP BY oneid)"
        f" SELECT cohort, k, uniqExact(oneid) AS persons FROM ("
        f" SELECT f.oneid AS oneid, f.cohort AS cohort,"
        f" intDiv(dateDiff('day', f.cohort, {start}(e.ts)), {days}) AS k"
        f" FROM {source} AS e INNER JOIN f ON e.oneid = f.oneid WHERE {active}"
        f" UNION ALL SELECT oneid, cohort, -1 AS k FROM f"
        f") WHERE k BETWEEN -1 AND {p('periods', int(periods), 'Int64')} GROUP BY cohort, k ORDER BY cohort, k"
    )


def retention_matrix(rows: list[tuple[str, int, int]], periods: int
                     ) -> list[tuple[str, int, list[float | None]]]:
    """(cohort, size, % of the cohort active in period 0..periods) per cohort, oldest first, from
    ``retention_sql``'s rows (cohort, k, persons; k = -1 is the cohort's size)."""
    cohorts: dict[str, dict[int, int]] = {}
    for cohort, k, n in rows:
        cohorts.setdefault(str(cohort)[:10], {})[int(k)] = int(n)
    out: list[tuple[str, int, list[float | None]]] = []
    for cohort in sorted(cohorts):
        ks = cohorts[cohort]
        size = ks.get(-1, 0)
        out.append((cohort, size, [100.0 * ks[k] / size if size and k in ks else None for k in range(periods + 1)]))
    return out


def format_retention(rows: list[tuple[str, int, int]], periods: int) -> str:
    """A cohort table: size, then % of the cohort active in each period."""
    head = f"{'cohort':<10}  {'persons':>7}  " + "  ".join(f"{'+' + str(k):>6}" for k in range(periods + 1))
    out = [head]
    for cohort, size, pcts in retention_matrix(rows, periods):
        cells = "  ".join(f"{'':>6}" if p is None else f"{p:5.1f}%" for p in pcts)
        out.append(f"{cohort:<10}  {size:>7}  {cells}")
    return "\n".join(out)
