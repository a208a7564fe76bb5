"""`cdp report`: the page shows the same numbers as the funnel and retention queries and a brute-force count of
actions, and is self-contained (nothing fetched from anywhere)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html.parser import HTMLParser

import orjson

from analytics.funnels import funnel_sql, funnel_table, retention_sql
from analytics.report import ReportData, gather, render_report, retention_matrix
from core.envelope import decode_envelope, encode_envelopes
from core.ingest import RawRecord, ingest_records
from core.rows import event_row
from sinks.clickhouse import ACTION_COLUMNS, EVENT_COLUMNS, FEEDBACK_COLUMNS
from tests.core.helpers import RULES, every_identifier_known
from traffic.shop import generate

NOW = 1_790_000_000_000
# The generated traffic ends at the ingest's clock: events from after it would be timed at receipt.
END = datetime.fromtimestamp(NOW / 1000, UTC)
STEPS = ["product_view", "add_to_cart", "checkout_start", "order_paid"]
SCOPE = "message_id LIKE 'gen-33-%'"
ACTION_DAYS = {"2026-09-20": {"sms": 3, "email": 1}, "2026-09-21": {"sms": 5}}
ACTIONS_SCOPE = "action_id LIKE 'act_report_%'"
# (action number on 2026-09-20 sms, status, reported day): one action reported delivered twice (counted once),
# one delivered then opened, one failed.
FEEDBACK = [(0, "delivered", "2026-09-20"), (0, "delivered", "2026-09-21"), (1, "delivered", "2026-09-21"),
            (1, "opened", "2026-09-21"), (2, "failed", "2026-09-21")]


class Page(HTMLParser):
    """Collects every cell of every table, every <text> of the SVGs, and every attribute that could fetch."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.texts: list[str] = []
        self.urls: list[str] = []
        self._cell: list[str] | None = None
        self._in_text = False
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in ("meta", "rect", "line", "br"):
            self.stack.append(tag)
        for k, v in attrs:
            if k in ("src", "href") or (v and re.search(r"url\(|https?://", v) and k != "xmlns"):
                self.urls.append(v)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "text":
            self._in_text = True

    def handle_endtag(self, tag):
        if tag not in ("meta", "rect", "line", "br"):
            assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
            self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "text":
            self._in_text = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_text:
            self.texts.append(data)


def load(sink):
    raw = [orjson.dumps(e) for e in generate(400, 20, seed=33, end=END)]
    res = ingest_records([RawRecord("raw", 0, i, NOW, None, v) for i, v in enumerate(raw)], RULES, 1, NOW,
                         resolve=every_identifier_known())
    entries = [en for env in encode_envelopes("s", 0, res.entries[0]) for en in decode_envelope(env).entries]
    sink.insert_json("events", [event_row(en, en.pk) for en in entries], EVENT_COLUMNS,
                     token="report-test-events", compact=True)
    actions = []
    for day, by_channel in ACTION_DAYS.items():
        for channel, n in by_channel.items():
            for i in range(n):
                t = f"{day}T10:00:{i:02d}.000Z"
                actions.append(orjson.dumps({
                    "action_id": f"act_report_{day}_{channel}_{i}", "oneid": f"o_report{i}", "rule_id": "r",
                    "rule_version": 1, "channel": channel, "template": "t", "created_at": t, "not_before": t,
                    "expires_at": t, "reason": "{}"}))
    sink.insert_json("actions", actions, ACTION_COLUMNS, token="report-test-actions")
    feedback = [orjson.dumps({"action_id": f"act_report_2026-09-20_sms_{i}", "status": status,
                              "at": f"{day}T12:00:0{n}.000Z", "detail": "", "received_at": f"{day}T12:00:0{n}.000Z"})
                for n, (i, status, day) in enumerate(FEEDBACK)]
    sink.insert_json("action_feedback", feedback, FEEDBACK_COLUMNS, token="report-test-feedback")


def test_report_shows_the_queries_numbers_and_is_self_contained(chdb_sink):
    chdb_sink.migrate()
    load(chdb_sink)

    def run(sql: str, parameters: dict) -> bytes:
        return chdb_sink.query(sql, "JSONEachRow", parameters)

    # Other tests share the database: the report is scoped to this test's events and actions.
    data = gather(run, STEPS, "1d", "week", 3, where=SCOPE, actions_where=ACTIONS_SCOPE)
    page_html = render_report(data)
    page = Page()
    page.feed(page_html)
    page.close()
    assert page.stack == ["html"] or page.stack == []  # every element closed (html may be left to the end)
    assert page.urls == []

    levels = {int(lvl): int(n) for lvl, n in chdb_sink.rows(*funnel_sql(STEPS, "1d", where=SCOPE))}
    want_funnel = funnel_table(STEPS, levels)
    assert want_funnel[0][1] > want_funnel[-1][1] > 0
    funnel_cells, ret_cells, act_cells, feedback_cells = page.tables
    assert [row[:2] for row in funnel_cells[1:]] == [[s, f"{n:,}"] for s, n, _, _ in want_funnel]
    for s, n, _, _ in want_funnel:
        assert any(t.startswith(f"{n:,}") for t in page.texts), s  # the bar's label

    ret = [(str(c)[:10], int(k), int(n)) for c, k, n in chdb_sink.rows(*retention_sql("week", 3, where=SCOPE))]
    matrix = retention_matrix(ret, 3)
    assert len(ret_cells) - 1 == len(matrix) >= 3  # one heatmap row per cohort
    for (cohort, size, cells), row in zip(matrix, ret_cells[1:], strict=True):
        assert row[0] == cohort and row[1] == f"{size:,}"
        assert row[2:] == ["" if p is None else f"{p:.1f}%" for p in cells]
        assert cells[0] == 100.0  # everyone is active in the week they were first seen
    assert sum(size for _, size, _ in matrix) == data.totals["persons"]  # each person is in one cohort

    want_actions = sorted([day, ch, f"{n:,}"] for day, by in ACTION_DAYS.items() for ch, n in by.items())
    assert sorted(act_cells[1:]) == want_actions
    assert data.totals["actions"] == sum(sum(by.values()) for by in ACTION_DAYS.values())
    want_feedback: dict[tuple[str, str], set[int]] = {}
    for i, status, day in FEEDBACK:
        want_feedback.setdefault((day, status), set()).add(i)
    assert sorted(feedback_cells[1:]) == sorted([d, st, str(len(ids))] for (d, st), ids in want_feedback.items())
    assert "Delivery reported by senders" in page_html

    # The header counts what the figures count.
    want_events = sum(1 for _ in generate(400, 20, seed=33, end=END))
    assert f"{want_events:,} events" in page_html and f"{data.totals['persons']:,} persons" in page_html


def test_report_escapes_text_and_shows_empty_sections():
    data = ReportData(steps=["<script>alert(1)</script>", "b&c"], window="1d\"><x",
                      funnel=[("<script>alert(1)</script>", 5, None, None), ("b&c", 2, 40.0, 40.0)], period="week",
                      periods=2, retention=[], actions_per_day=[], totals={"events": 7, "persons": 5, "actions": 0},
                      generated_at="2026-01-01 00:00 UTC")
    page_html = render_report(data)
    page = Page()
    page.feed(page_html)
    page.close()
    assert "<script" not in page_html and "<x" not in page_html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page_html and "b&amp;c" in page_html
    funnel_cells, ret_cells, act_cells = page.tables
    assert funnel_cells[1:] == [["<script>alert(1)</script>", "5", "", ""], ["b&c", "2", "40.0%", "40.0%"]]
    assert len(ret_cells) == 1 and len(act_cells) == 1  # header rows only
    assert "No events yet." in page_html and "No actions emitted." in page_html
    assert "Delivery reported by senders" not in page_html  # no feedback, no section
    assert page.urls == []
