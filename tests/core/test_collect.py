import base64
import json

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from core.collect import MAX_EVENT_BYTES, MAX_REQUEST_BYTES, authorized, collect, write_key_of
from core.envelope import decode_entry
from core.ingest import RawRecord, ingest_records
from tests.core.helpers import RULES


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def test_write_key_auth_like_segment_sdks():
    assert write_key_of(basic("wk1")) == "wk1"
    assert authorized(basic("wk1"), ["wk0", "wk1"])
    assert not authorized(basic("nope"), ["wk1"])
    assert not authorized(None, ["wk1"]) and not authorized("Basic !!!", ["wk1"])
    assert authorized(None, [])  # no keys configured: an open collector (local development)


def test_single_call_takes_its_type_from_the_endpoint():
    res = collect("track", orjson.dumps({"messageId": "m1", "event": "Signed Up", "userId": "u1"}))
    assert res.status == 200 and len(res.records) == 1
    key, value = res.records[0]
    assert key == b"u1" and orjson.loads(value)["type"] == "track"


def test_batch_accepts_the_good_and_reports_the_bad_with_fields():
    body = {"batch": [
        {"type": "identify", "messageId": "m1", "userId": "u1", "traits": {"email": "a@b.c"}},
        {"type": "track", "messageId": "m2", "userId": "u1"},  # no event name
        {"type": "page", "messageId": "m3", "anonymousId": "a1", "name": "Home"},
        "not an object",
    ], "context": {"library": {"name": "sdk"}}, "sentAt": "2026-11-20T10:00:00Z"}
    res = collect("batch", orjson.dumps(body))
    assert res.status == 200 and len(res.records) == 2
    assert [r["index"] for r in res.rejected] == [1, 3]
    assert res.rejected[0]["messageId"] == "m2"
    first = orjson.loads(res.records[0][1])
    assert first["context"]["library"]["name"] == "sdk" and first["sentAt"] == "2026-11-20T10:00:00Z"
    assert res.response()["accepted"] == 2


def test_a_batch_context_beside_an_event_context_that_is_not_an_object_is_a_field_error_not_a_server_error():
    body = {"batch": [{"type": "page", "messageId": "m1", "userId": "u1", "context": ["app"]},
                      {"type": "page", "messageId": "m2", "userId": "u1", "context": {"ip": "1.2.3.4"}}],
            "context": {"library": {"name": "sdk"}}}
    res = collect("batch", orjson.dumps(body))
    assert res.status == 200 and len(res.records) == 1
    assert res.rejected[0]["index"] == 0 and res.rejected[0]["errors"][0]["field"] == "context"
    assert orjson.loads(res.records[0][1])["context"] == {"library": {"name": "sdk"}, "ip": "1.2.3.4"}


def test_limits_answer_413():
    big = {"type": "track", "messageId": "m", "event": "x", "userId": "u", "properties": {"p": "x" * MAX_EVENT_BYTES}}
    assert collect("track", orjson.dumps(big)).status == 413
    assert collect("batch", b"x" * (MAX_REQUEST_BYTES + 1)).status == 413
    res = collect("batch", orjson.dumps({"batch": [big, {**big, "properties": {}}]}))
    assert res.status == 200 and len(res.records) == 1 and res.rejected[0]["index"] == 0


def test_bad_bodies_are_400_and_unknown_endpoints_404():
    assert collect("track", b"{nope").status == 400
    assert collect("batch", b'{"batch": 5}').status == 400
    assert collect("batch", orjson.dumps({"batch": [{"type": "track"}]})).status == 400
    assert collect("purchase", b"{}").status == 404


def test_an_event_nested_too_deep_to_carry_is_reported_not_a_server_error():
    deep = b'{"type":"track","messageId":"m1","event":"e","userId":"u","properties":{"a":' + b"[" * 300 + b"]" * 300
    ok = b'{"type":"track","messageId":"m2","event":"e","userId":"u"}'
    res = collect("batch", b'{"batch":[' + deep + b"}}," + ok + b"]}")
    assert res.status == 200 and len(res.records) == 1
    assert res.rejected[0]["index"] == 0 and res.rejected[0]["messageId"] == "m1"
    assert collect("track", deep + b"}}").status == 400


def test_accepted_events_are_stamped_with_their_receipt():
    res = collect("track", orjson.dumps({"messageId": "m1", "event": "x", "userId": "u"}), "2026-11-23T10:00:00Z")
    assert orjson.loads(res.records[0][1])["receivedAt"] == "2026-11-23T10:00:00Z"


def test_integers_past_64_bits_arrive_as_they_do_from_the_raw_topic_with_all_their_digits():
    # Sent through the collector or produced straight to the raw topic, the same event makes the same ClickHouse
    # row (read as a float, 123456789012345678901234 would become 1.2345678901234569e+23).
    event = (b'{"type":"track","messageId":"m1","event":"Order Completed","userId":98765432109876543210987,'
             b'"timestamp":"2026-11-23T09:59:00Z","receivedAt":"2026-11-23T10:00:00Z",'
             b'"properties":{"order_no":123456789012345678901234,"lines":[{"sku":-12345678901234567890123}]}}')
    res = collect("batch", b'{"batch":[' + event + b"]}", "2026-11-23T10:00:01Z")
    assert res.status == 200 and not res.rejected
    [(key, value)] = res.records
    assert key == b"98765432109876543210987"
    assert json.loads(value) == json.loads(event)
    rows = []
    for raw in (value, event):
        ingested = ingest_records([RawRecord("cdp.events.raw", 0, 0, 1_790_000_000_000, key, raw)], RULES, 4,
                                  1_790_000_000_000)
        [entries] = ingested.entries.values()
        rows.append(decode_entry(entries[0]).row)
    assert rows[0] == rows[1]
    assert b'"order_no":123456789012345678901234' in rows[0] and b'"sku":-12345678901234567890123' in rows[0]


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12))
_values = st.recursive(_scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                     st.dictionaries(st.text(max_size=6), c, max_size=3)),
                       max_leaves=10)
_items = st.dictionaries(st.sampled_from(["type", "messageId", "message_id", "event", "userId", "anonymousId",
                                          "context", "properties", "sentAt", "receivedAt", "timestamp", "traits",
                                          "identities"]), _values, max_size=8)
_bodies = st.one_of(_items, _values, st.fixed_dictionaries(
    {"batch": st.lists(st.one_of(_items, _values), max_size=5)}, optional={"context": _values, "sentAt": _values}))


@settings(max_examples=300)
@given(_bodies, st.sampled_from(["track", "batch", "identify", "page", "alias", "group", "screen"]), st.binary())
def test_any_body_gets_an_answer_never_a_server_error(body, kind, junk):
    # json, not orjson: it writes integers of any size (and Infinity), which clients may send too.
    for raw in (json.dumps(body).encode(), junk):
        assert collect(kind, raw, "2026-11-23T00:00:00Z").status in (200, 400, 413)
