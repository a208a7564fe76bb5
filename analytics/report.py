"""``cdp report --out report.html``: one self-contained page (inline CSS and SVG, no script, nothing fetched)
with the funnel, a retention heatmap and actions per day, for people who would rather look than read.

``gather`` queries ClickHouse with the same SQL as ``cdp funnel`` and ``cdp retention``; ``render_report`` is a
pure function of what was gathered, so the page is tested without a database.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from analytics.funnels import events_source, funnel_sql, funnel_table, retention_matrix, retention_sql
from analytics.sql import Params, Query, time_range

CHANNEL_COLOURS = {"sms": "#2b6cb0", "email": "#2f855a", "push": "#b7791f", "wechat": "#319795", "crm": "#805ad5",
                   "webhook": "#718096"}


@dataclass
class ReportData:
    steps: list[str]
    window: str
    funnel: list[tuple[str, int, float | None, float | None]]
    period: str
    periods: int
    retention: list[tuple[str, int, int]]  # (cohort, k, persons); k = -1 is the cohort's size
    actions_per_day: list[tuple[str, str, int]]  # (day, channel, actions)
    totals: dict[str, Any] = field(default_factory=dict)
    generated_at: str = ""
    feedback_per_day: list[tuple[str, str, int]] = field(default_factory=list)  # (day, status, actions)
    since: str = ""  # the requested range, '' where open
    until: str = ""


# Outcomes that exclude each other, so their bars stack; opened/clicked are later steps of a delivered message.
FEEDBACK_OUTCOMES = {"delivered": "#2f855a", "failed": "#c53030", "bounced": "#dd6b20"}


def _rows(run: Any, q: Query) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in run(q.sql, q.params).splitlines() if line.strip()]


def _utc(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _where(conditions: list[str]) -> str:
    return " WHERE " + " AND ".join(f"({c})" for c in conditions) if conditions else ""


def gather(run: Any, steps: list[str], window: str = "1d", period: str = "week", periods: int = 8,
           since: datetime | None = None, until: datetime | None = None, where: str | None = None,
           merge_aware: bool = True, actions_where: str | None = None) -> ReportData:
    """Query everything the page shows. ``run(sql, parameters) -> JSONEachRow bytes`` (``ops.worker.query``
    bound to settings, or a sink's ``query``; ``parameters`` bind the SQL's ``{name:Type}`` placeholders).
    ``since``/``until`` bound event time, action creation and feedback time; ``where`` (SQL over cdp.events
    columns, the analyst's own, taken as written) narrows the events, ``actions_where`` (over cdp.actions columns)
    the actions and their feedback."""
    levels = {int(r["level"]): int(r["persons"])
              for r in _rows(run, funnel_sql(steps, window, since, until, merge_aware=merge_aware, where=where))}
    retention = [(str(r["cohort"])[:10], int(r["k"]), int(r["persons"])) for r in _rows(
        run, retention_sql(period, periods, where=where, merge_aware=merge_aware, since=since, until=until))]
    p = Params()
    action_scope = time_range(p, since, until, "created_at") + ([actions_where] if actions_where else [])
    actions = [(str(r["day"]), str(r["channel"]), int(r["actions"])) for r in _rows(run, p.query(
        "SELECT toString(toDate(created_at)) AS day, channel, count() AS actions FROM cdp.actions FINAL"
        f"{_where(action_scope)} GROUP BY day, channel ORDER BY day, channel"))]
    p = Params()
    feedback_scope = time_range(p, since, until, "at") + (
        [f"action_id IN (SELECT action_id FROM cdp.actions WHERE {actions_where})"] if actions_where else [])
    # Actions per day and reported status (a sender may report a status twice: the action counts once).
    feedback = [(str(r["day"]), str(r["status"]), int(r["actions"])) for r in _rows(run, p.query(
        "SELECT toString(toDate(at)) AS day, toString(status) AS status, uniqExact(action_id) AS actions"
        f" FROM cdp.action_feedback FINAL{_where(feedback_scope)} GROUP BY day, status ORDER BY day, status"))]
    p = Params()
    event_scope = time_range(p, since, until, "ts") + ([where] if where else [])
    t = _rows(run, p.query("SELECT count() AS events, uniqExact(oneid) AS persons, toString(min(ts)) AS first,"
                           f" toString(max(ts)) AS last FROM {events_source(merge_aware)}{_where(event_scope)}"))[0]
    totals = {"events": int(t["events"]), "persons": int(t["persons"]), "first": t["first"] if t["events"] else "",
              "last": t["last"] if t["events"] else "", "actions": sum(n for _, _, n in actions)}
    return ReportData(steps, window, funnel_table(steps, levels), period, periods, retention, actions, totals,
                      datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), feedback,
                      _utc(since) if since else "", _utc(until) if until else "")


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:.1f}%"


def _funnel_svg(rows: list[tuple[str, int, float | None, float | None]]) -> str:
    width, bar_h, gap, label_w = 760, 34, 12, 170
    top = max((n for _, n, _, _ in rows), default=0) or 1
    h = len(rows) * (bar_h + gap) + gap
    out = [f'<svg role="img" aria-labelledby="funnel-title" viewBox="0 0 {width} {h}" width="100%" '
           f'xmlns="http://www.w3.org/2000/svg"><title id="funnel-title">Funnel: persons reaching each step'
           f'</title>']
    for i, (step, n, of_prev, of_first) in enumerate(rows):
        y = gap + i * (bar_h + gap)
        w = max(1.0, (width - label_w - 170) * n / top)
        note = "" if of_prev is None else f"{_pct(of_prev)} of previous, {_pct(of_first)} of first"
        out.append(f'<text x="{label_w - 8}" y="{y + bar_h * 0.65:.0f}" text-anchor="end" class="lbl">'
                   f'{_e(step)}</text>'
                   f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" class="bar"><title>{_e(step)}: '
                   f'{n} persons {_e(note)}</title></rect>'
                   f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h * 0.65:.0f}" class="num">{n:,}'
                   f'{"" if of_prev is None else " · " + _pct(of_prev)}</text>')
    out.append("</svg>")
    return "".join(out)


def _heat(p: float | None) -> str:
    if p is None:
        return "#f4f4f4"
    a = 0.08 + 0.92 * min(100.0, p) / 100.0
    return f"rgba(43,108,176,{a:.2f})"


def _retention_svg(matrix: list[tuple[str, int, list[float | None]]], periods: int, period: str) -> str:
    cell_w, cell_h, left, head = 62, 26, 170, 28
    width = left + cell_w * (periods + 1) + 10
    h = head + cell_h * len(matrix) + 6
    out = [f'<svg role="img" aria-labelledby="ret-title" viewBox="0 0 {width} {h}" width="100%" '
           f'xmlns="http://www.w3.org/2000/svg"><title id="ret-title">Retention by first-seen {_e(period)}: % of '
           f'each cohort active in each {_e(period)} after</title>']
    for k in range(periods + 1):
        out.append(f'<text x="{left + k * cell_w + cell_w / 2:.0f}" y="18" text-anchor="middle" class="lbl">'
                   f'+{k}</text>')
    for i, (cohort, size, cells) in enumerate(matrix):
        y = head + i * cell_h
        out.append(f'<text x="{left - 8}" y="{y + cell_h * 0.68:.0f}" text-anchor="end" class="lbl">'
                   f'{_e(cohort)} ({size:,})</text>')
        for k, p in enumerate(cells):
            x = left + k * cell_w
            dark = p is not None and p > 55
            out.append(f'<rect x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" fill="{_heat(p)}">'
                       f'<title>{_e(cohort)} +{k}: {_pct(p) or "no data"}</title></rect>')
            if p is not None:
                out.append(f'<text x="{x + cell_w / 2 - 1:.0f}" y="{y + cell_h * 0.66:.0f}" text-anchor="middle" '
                           f'class="cell{" dark" if dark else ""}">{p:.0f}%</text>')
    out.append("</svg>")
    return "".join(out)


def _stacked_days_svg(per_day: list[tuple[str, str, int]], colours: dict[str, str], chart_id: str,
                      title: str) -> str:
    """Bars per day, stacked by series (channel, status), with a legend; days without data are left out."""
    days = sorted({d for d, _, _ in per_day})
    series = sorted({c for _, c, _ in per_day})
    counts = {(d, c): n for d, c, n in per_day}
    totals = {d: sum(counts.get((d, c), 0) for c in series) for d in days}
    top = max(totals.values(), default=0) or 1
    width, h, left, bottom = 760, 240, 50, 40
    bw = (width - left - 10) / max(1, len(days))
    label_every = max(1, math.ceil(44 / bw))  # a "MM-DD" label needs about 44 units
    out = [f'<svg role="img" aria-labelledby="{chart_id}-title" viewBox="0 0 {width} {h}" width="100%" '
           f'xmlns="http://www.w3.org/2000/svg"><title id="{chart_id}-title">{_e(title)}</title>'
           f'<line x1="{left}" y1="{h - bottom}" x2="{width - 10}" y2="{h - bottom}" class="axis"/>'
           f'<text x="{left - 6}" y="16" text-anchor="end" class="lbl">{top:,}</text>']
    for i, d in enumerate(days):
        x = left + i * bw
        y: float = h - bottom
        for c in series:
            n = counts.get((d, c), 0)
            if not n:
                continue
            bh = (h - bottom - 20) * n / top
            y -= bh
            out.append(f'<rect x="{x + bw * 0.15:.1f}" y="{y:.1f}" width="{bw * 0.7:.1f}" height="{bh:.1f}" '
                       f'fill="{colours.get(c, "#4a5568")}"><title>{_e(d)} {_e(c)}: {n:,}</title></rect>')
        if bw >= 28:  # room for the day's total above its bar
            out.append(f'<text x="{x + bw / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle" class="num">'
                       f'{totals[d]:,}</text>')
        if i % label_every == 0:
            out.append(f'<text x="{x + bw / 2:.1f}" y="{h - bottom + 16}" text-anchor="middle" class="lbl">'
                       f'{_e(d[5:])}</text>')
    for j, c in enumerate(series):
        out.append(f'<rect x="{left + j * 110}" y="{h - 14}" width="10" height="10" '
                   f'fill="{colours.get(c, "#4a5568")}"/><text x="{left + j * 110 + 14}" y="{h - 5}" '
                   f'class="lbl">{_e(c)}</text>')
    out.append("</svg>")
    return "".join(out)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"PingFang SC","Microsoft YaHei",sans-serif;
color:#1a202c;max-width:900px;margin:2em auto;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #e2e8f0}
.meta{color:#4a5568}.bar{fill:#2b6cb0}.lbl{font-size:12px;fill:#2d3748}.num{font-size:12px;fill:#1a202c}
.cell{font-size:11px;fill:#1a202c}.cell.dark{fill:#fff}.axis{stroke:#a0aec0}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #e2e8f0;padding:2px 8px;
text-align:right}th{background:#f7fafc}details{margin:.5em 0}
@media print{body{margin:0;max-width:none}svg,table{break-inside:avoid}h2{break-after:avoid}}
"""


def render_report(d: ReportData) -> str:
    """The whole page, from gathered data only."""
    matrix = retention_matrix(d.retention, d.periods)
    t = d.totals
    funnel_rows = [[s, f"{n:,}", _pct(p), _pct(f)] for s, n, p, f in d.funnel]
    ret_rows = [[c, f"{size:,}", *[_pct(p) for p in cells]] for c, size, cells in matrix]
    act_rows = [[day, ch, f"{n:,}"] for day, ch, n in d.actions_per_day]
    outcomes = [(day, st, n) for day, st, n in d.feedback_per_day if st in FEEDBACK_OUTCOMES]
    requested = f"{d.since or 'the start'} to {d.until or 'now'} (UTC)" if d.since or d.until else "all data"
    seen = (f" · events from {str(t.get('first', ''))[:19]} to {str(t.get('last', ''))[:19]} UTC"
            if t.get("first") else "")
    feedback = [] if not d.feedback_per_day else [
        "<h2>Delivery reported by senders</h2>",
        _stacked_days_svg(outcomes, FEEDBACK_OUTCOMES, "fb", "Actions delivered, failed or bounced per day, "
                          "as senders reported") if outcomes else "<p>No delivered or failed reports.</p>",
        "<details><summary>Delivery data (every status)</summary>",
        _table(["day", "status", "actions"], [[day, st, f"{n:,}"] for day, st, n in d.feedback_per_day]),
        "</details>"]
    return "".join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>CDP report · {_e(d.generated_at)}</title><style>{_CSS}</style></head><body>",
        "<h1>Customer data report</h1>",
        f'<p class="meta">Generated {_e(d.generated_at)} · range: {_e(requested)}{_e(seen)}</p>',
        f'<p class="meta">{t.get("events", 0):,} events · {t.get("persons", 0):,} persons · '
        f'{t.get("actions", 0):,} actions</p>',
        f"<h2>Funnel · within {_e(d.window)} of the first step</h2>",
        _funnel_svg(d.funnel),
        "<details><summary>Funnel data</summary>",
        _table(["step", "persons", "of previous", "of first"], funnel_rows), "</details>",
        f"<h2>Retention by first-seen {_e(d.period)}</h2>",
        _retention_svg(matrix, d.periods, d.period) if matrix else "<p>No events yet.</p>",
        "<details><summary>Retention data</summary>",
        _table(["cohort", "persons", *[f"+{k}" for k in range(d.periods + 1)]], ret_rows), "</details>",
        "<h2>Actions per day</h2>",
        _stacked_days_svg(d.actions_per_day, CHANNEL_COLOURS, "act", "Actions emitted per day, by channel")
        if d.actions_per_day else "<p>No actions emitted.</p>",
        "<details><summary>Actions data</summary>", _table(["day", "channel", "actions"], act_rows), "</details>",
        *feedback,
        "</body></html>",
    ])
