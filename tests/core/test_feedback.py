"""Senders' delivery reports: a row for ``cdp.action_feedback``, or a bad row; never an exception, which would stop
the feedback partition on every restart."""

from __future__ import annotations

import json

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from core.feedback import feedback_row
from schemas.bad_rows import BadRow

NOW = 1_795_400_000_000


def test_a_report_becomes_a_row():
    row = feedback_row(b'{"action_id":"act_1","status":"delivered","at":"2026-11-20T10:00:00Z",'
                       b'"detail":{"provider":"x"}}', NOW)
    assert isinstance(row, bytes)
    d = orjson.loads(row)
    assert (d["action_id"], d["status"], d["at"], d["detail"]) == ("act_1", "delivered", 1795168800.0,
                                                                    '{"provider":"x"}')


def test_a_report_no_row_can_carry_is_a_bad_row():
    raw = (b'{"action_id":"a","status":"failed","at":"2026-11-20T10:00:00Z",'
           b'"detail":{"n":123456789012345678901234567890}}')
    bad = feedback_row(raw, NOW)
    assert isinstance(bad, BadRow) and (bad.stage.value, bad.reason) == ("process", "unprocessable")
    assert bad.original_bytes() == raw


_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                 st.text(max_size=8)),
                       lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=5), c,
                                                                                     max_size=3)), max_leaves=8)


@settings(max_examples=300)
@given(st.fixed_dictionaries({}, optional={
    "action_id": st.one_of(st.text(max_size=8), _values), "status": st.sampled_from(["delivered", "failed", "x"]),
    "at": st.one_of(st.sampled_from(["2026-11-20T10:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59Z"]),
                    _values),
    "detail": _values}), st.binary(max_size=40))
def test_any_message_is_a_row_or_a_bad_row(doc, junk):
    # json, not orjson: it writes integers of any size (and Infinity), which senders may send too.
    for raw in (json.dumps(doc).encode(), junk):
        assert isinstance(feedback_row(raw, NOW), bytes | BadRow)
