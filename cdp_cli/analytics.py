"""Analyst queries the CLI runs (SQL text, so they run the same on chDB and on a ClickHouse server)."""

from __future__ import annotations

from datetime import datetime

from rules.loader import parse_duration_ms


def quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def funnel_sql(steps: list[str], window: str, since: datetime | None = None, until: datetime | None = None) -> str:
    """Persons (by OneID) reaching each step in order within the window (ClickHouse ``windowFunnel``)."""
    if len(steps) < 2:
        raise ValueError("a funnel needs at least two steps")
    window_s = max(1, parse_duration_ms(window) // 1000)
    conds = ", ".join(f"event = {quote(s)}" for s in steps)
    where = [f"event IN ({', '.join(quote(s) for s in dict.fromkeys(steps))})"]
    if since:
        where.append(f"ts >= toDateTime64({quote(since.isoformat(sep=' ', timespec='seconds'))}, 3, 'UTC')")
    if until:
        where.append(f"ts < toDateTime64({quote(until.isoformat(sep=' ', timespec='seconds'))}, 3, 'UTC')")
    # windowFunnel rejects DateTime64: pass whole seconds. FINAL collapses rows a retried insert duplicated.
    return (
        f"SELECT level, count() AS persons FROM ("
        f" SELECT oneid, windowFunnel({window_s})(toDateTime(ts), {conds}) AS level"
        f" FROM cdp.events FINAL WHERE {' AND '.join(where)} GROUP BY oneid"
        f") GROUP BY level ORDER BY level"
    )


def funnel_table(steps: list[str], levels: dict[int, int]) -> list[tuple[str, int, float | None, float | None]]:
    """(step, persons reaching it, % of previous step, % of first step) from windowFunnel's level counts."""
    rows = []
    first = prev = None
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


_PERIODS = {"day": (1, "toStartOfDay"), "week": (7, "toMonday")}


def retention_sql(period: str = "week", periods: int = 8, event: str | None = None,
                  where: str | None = None) -> str:
    """Persons by first-seen cohort (day, or week from Monday; UTC) and period since: rows (cohort, k, persons),
    where k = -1 is the cohort's size and k >= 0 counts its persons active k periods after their cohort began.

    Active = any event, or only ``event`` when given; ``where`` (SQL) narrows every event considered."""
    if period not in _PERIODS:
        raise ValueError("period is day or week")
    days, start = _PERIODS[period]
    scope = f"({where})" if where else "1"
    active = f"{scope} AND e.event = {quote(event)}" if event else scope
    return (
        f"WITH f AS (SELECT oneid, {start}(min(ts)) AS cohort FROM cdp.events FINAL WHERE {scope} GROUP BY oneid)"
        f" SELECT cohort, k, uniqExact(oneid) AS persons FROM ("
        f" SELECT f.oneid AS oneid, f.cohort AS cohort,"
        f" intDiv(dateDiff('day', f.cohort, {start}(e.ts)), {days}) AS k"
        f" FROM cdp.events AS e FINAL INNER JOIN f ON e.oneid = f.oneid WHERE {active}"
        f" UNION ALL SELECT oneid, cohort, -1 AS k FROM f"
        f") WHERE k BETWEEN -1 AND {int(periods)} GROUP BY cohort, k ORDER BY cohort, k"
    )


def format_retention(rows: list[tuple[str, int, int]], periods: int) -> str:
    """A cohort table: size, then % of the cohort active in each period."""
    cohorts: dict[str, dict[int, int]] = {}
    for cohort, k, n in rows:
        cohorts.setdefault(str(cohort)[:10], {})[int(k)] = int(n)
    head = f"{'cohort':<10}  {'persons':>7}  " + "  ".join(f"{'+' + str(k):>6}" for k in range(periods + 1))
    out = [head]
    for cohort, ks in cohorts.items():
        size = ks.get(-1, 0)
        cells = "  ".join(f"{100.0 * ks[k] / size:5.1f}%" if size and k in ks else f"{'':>6}"
                          for k in range(periods + 1))
        out.append(f"{cohort:<10}  {size:>7}  {cells}")
    return "\n".join(out)
