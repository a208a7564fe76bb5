"""The ingest's validator (``event_dict_from_json``, msgspec for the wire form) and the schema of record (``Event``)
agree: the same events accepted, the same pipeline dict for each (keys in the same order: the envelope's bytes
depend on it), the same errors for the rest."""

from __future__ import annotations

import json
from datetime import datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.events import Event, event_dict_from_json, field_errors, pipeline_dict
from traffic.shop import generate

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                    st.text(max_size=8))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                   st.dictionaries(st.text(max_size=5), c, max_size=3)),
                      max_leaves=5)
texts = st.one_of(st.sampled_from(["u1", " u1 ", "", "x" * 101, "x" * 257, "\u2003u", "u\x1f", "42"]),
                  st.text(max_size=10), st.integers(-10, 10**6), st.none(), st.booleans(), st.floats(0, 9))
# RFC 3339 times with 0-9 digits of a second (msgspec rounds past six, pydantic truncates), either separator and
# case, with and without an offset.
rfc3339 = st.builds(
    lambda dt, digits, sep, zone: dt.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    + (("." + f"{dt.microsecond:06d}999"[:digits]) if digits else "") + zone,
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)), st.integers(0, 9),
    st.sampled_from(["T", "t", " "]), st.sampled_from(["Z", "z", "", "+08:00", "-00:00", "+0530", "+24:00", " "]))
times = st.one_of(
    st.sampled_from(["2026-11-20T10:00:00Z", "2026-11-20T10:00:00.5+08:00", "2026-11-20T10:00:00",
                     "2026-11-20 10:00:00", "2026-02-30T10:00:00Z", "now", "", "2026-11-20",
                     "2026-11-20T10:00:00.1234567Z", "2026-11-20T10:00:59.9999996Z", "2026-11-20T10:00Z",
                     "2026-11-20T10:00:00,5Z", "2026-11-20T10:00:60Z"]),
    rfc3339, st.integers(-10, 2 * 10**12), st.floats(0, 2e9), st.none(), st.booleans())
# Mostly valid events with a few fields changed, so both outcomes are common.
base = {"type": "track", "messageId": "m1", "event": "add_to_cart", "userId": "u1",
        "timestamp": "2026-11-20T10:00:00Z", "properties": {"sku": "S-1"}}
changes = st.dictionaries(
    st.sampled_from(["type", "messageId", "message_id", "event", "name", "userId", "user_id", "anonymousId",
                     "previousId", "groupId", "identities", "traits", "properties", "context", "timestamp",
                     "sentAt", "receivedAt", "received_at", "anonymous_id", "previous_id", "group_id", "sent_at",
                     "extra", "integrations"]),
    st.one_of(texts, times, values,
              st.dictionaries(st.sampled_from(["phone", "email", " phone", ""]), texts, max_size=3),
              st.sampled_from(["track", "identify", "page", "screen", "alias", "group", " page", "Track"])),
    max_size=4)
drops = st.lists(st.sampled_from(list(base)), max_size=3)


def same_outcome(raw: bytes) -> bool:
    try:
        want = pipeline_dict(Event.model_validate_json(raw))
    except ValidationError as exc:
        with pytest.raises(ValidationError) as got:
            event_dict_from_json(raw)
        assert field_errors(got.value) == field_errors(exc), raw
        return False
    got = event_dict_from_json(raw)
    assert got == want, raw
    assert list(got) == list(want), raw
    return True


@settings(max_examples=1500)
@given(changes, drops)
def test_the_ingest_validator_agrees_with_the_schema(change, drop):
    doc = {k: v for k, v in {**base, **change}.items() if k not in drop or k in change}
    same_outcome(json.dumps(doc).encode())


def test_both_outcomes_are_exercised():
    docs = [{**base}, {**base, "userId": 42}, {**base, "messageId": " m "}, {**base, "event": None},
            {**base, "type": "alias"}, {**base, "type": "alias", "previousId": "p"}, {**base, "timestamp": "x"},
            {**base, "identities": {"phone": None, "email": ""}, "userId": None},
            {**base, "timestamp": "2026-11-20T10:00:00"}, {**base, "type": " page"},
            {**base, "properties": {" sku": "S-1"}}, {**base, "properties": None}, {**base, "user_id": "u2"},
            {**base, "timestamp": "2026-11-20T10:00:00.1234567Z"}, {**base, "identities": {"email ": "a@b.c"}}]
    outcomes = [same_outcome(json.dumps(d).encode()) for d in docs]
    assert any(outcomes) and not all(outcomes)
    for raw in (b"{nope", b"[1]", b""):
        assert same_outcome(raw) is False


def test_what_apps_send_takes_the_same_path():
    assert all(same_outcome(orjson.dumps(e)) for e in generate(200, 2, seed=8))


def test_what_apps_send_is_decoded_without_the_schema_model():
    # The fast path is the point of this validator: events as SDKs write them must not fall back to ``Event``.
    from schemas.events import _wire_dict

    assert all(_wire_dict(orjson.dumps(e)) is not None for e in generate(200, 2, seed=8))


@pytest.mark.parametrize("raw", [
    b'{"type":"track","messageId":"m","event":"e","userId":"a","userId":"b"}',
    b'{"type":"track","messageId":"m","event":"e","userId":"a","user_id":"b"}',
    b'{"type":"track","messageId":"m","event":"e","user_id":"b","userId":"a"}',
    b'{"type":"track","messageId":"m","event":"e","userId":"a","properties":{"k":1,"k":2}}',
    b'{"type":"track","messageId":"m","event":"e","userId":"a","properties":{"x":1e400}}',
    b'{"type":"track","messageId":"m","event":"e","userId":"a\\u2003"}',
    b'{"type":"track","messageId":"m","event":"e","userId":"a\\u001f"}',
    b'{"type":"track","messageId":"m","event":"e","userId":"a\\ud800"}',
    b'{"type":"track","messageId":"m","event":"e","anonymousId":"x","identities":{"phone":null}}',
    b'{"type":"track","messageId":"m","event":"e","identities":{"phone":""}}',
    b'{"type":"identify","messageId":"m","userId":"u","traits":null}',
    b'{"type":"track","messageId":"m","event":"e","userId":"a","timestamp":null,"sentAt":"2026-11-20T10:00:00Z"}',
    b'  {"type":"page","messageId":"m","userId":"a"}\n',
])
def test_edge_cases_of_the_wire_form_agree(raw):
    same_outcome(raw)


def test_only_times_with_more_than_six_second_digits_leave_the_fast_path():
    from schemas.events import _wire_dict

    geo = {**base, "properties": {"lat": 31.2304167, "lng": 121.4737010, "note": "x.12345678"}}
    assert _wire_dict(orjson.dumps(geo)) is not None and same_outcome(orjson.dumps(geo))
    for ts in ("2026-11-20T10:00:00.1234567Z", "2026-11-20T10:00:59.9999996+08:00"):
        raw = json.dumps({**base, "timestamp": ts}).encode()
        assert _wire_dict(raw) is None and same_outcome(raw)
    escaped = b'{"type":"page","messageId":"m","userId":"u","timestamp":"2026-11-20T10:00:00.123456\\u0037Z"}'
    assert _wire_dict(escaped) is None and same_outcome(escaped)


@pytest.mark.parametrize("depth", [150, 250, 1000, 5000])
def test_deep_nesting_agrees_and_never_raises_anything_else(depth):
    raw = (b'{"type":"page","messageId":"m","userId":"u","properties":{"a":' + b"[" * depth + b"]" * depth
           + b"}}")
    assert same_outcome(raw) is (depth < 190)
