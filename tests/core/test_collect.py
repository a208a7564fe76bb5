import base64
import json

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from core.collect import (
    CORS_HEADERS,
    MAX_EVENT_BYTES,
    MAX_REQUEST_BYTES,
    PATHS,
    authorized,
    body_write_key,
    collect,
    cors_headers,
    kind_of,
    write_key_of,
)
from core.envelope import decode_entry
from core.ingest import RawRecord, ingest_records
from schemas.events import EventType
from tests.core.helpers import RULES


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def test_write_key_auth_like_segment_sdks():
    assert write_key_of(basic("wk1")) == "wk1"
    assert authorized(basic("wk1"), ["wk0", "wk1"])
    assert not authorized(basic("nope"), ["wk1"])
    assert not authorized(None, ["wk1"]) and not authorized("Basic !!!", ["wk1"])
    assert authorized(None, [])  # no keys configured: an open collector (local development)


def test_segments_one_letter_paths_are_the_same_endpoints_as_the_long_ones():
    # analytics-next posts to /v1/<first letter of the type>, and its batching strategy to /v1/b.
    assert {k: v for k, v in PATHS.items() if len(k) == 1} == {
        "t": "track", "i": "identify", "p": "page", "s": "screen", "a": "alias", "g": "group", "b": "batch"}
    assert set(PATHS.values()) == {t.value for t in EventType} | {"batch"}
    assert all(kind_of(k) == k for k in PATHS.values())
    assert kind_of("x") is None and kind_of("") is None and kind_of("Track") is None
    res = collect("p", orjson.dumps({"messageId": "m1", "name": "Home", "anonymousId": "a1"}))
    assert res.status == 200 and orjson.loads(res.records[0][1])["type"] == "page"
    res = collect("b", orjson.dumps({"batch": [{"type": "track", "messageId": "m2", "event": "e", "userId": "u"}]}))
    assert res.status == 200 and len(res.records) == 1
    assert collect("x", b"{}").status == 404


def test_the_write_key_in_the_body_admits_a_request_as_basic_auth_does_and_is_never_published():
    keys = ["wk0", "wk1"]
    # What analytics-next sends one by one (also as text/plain, or by sendBeacon, without an Authorization header).
    single = {"messageId": "m1", "type": "track", "event": "e", "userId": "u", "writeKey": "wk1"}
    res = collect("t", orjson.dumps(single), write_keys=keys)
    assert res.status == 200 and b"writeKey" not in res.records[0][1] and b"wk1" not in res.records[0][1]
    # Its batching strategy: the key atop the batch and in every event.
    batch = {"writeKey": "wk1", "batch": [{**single, "messageId": f"m{i}"} for i in range(3)],
             "sentAt": "2026-11-20T10:00:00Z"}
    res = collect("b", orjson.dumps(batch), write_keys=keys)
    assert res.status == 200 and len(res.records) == 3 and all(b"writeKey" not in v for _, v in res.records)
    assert body_write_key({"batch": [{"writeKey": "wk0"}]}) == "wk0"  # only in the events
    assert body_write_key({"writeKey": 5}) is None and body_write_key([1]) is None
    assert authorized(None, keys, "wk0") and not authorized(None, keys, "nope")
    # A wrong or missing key is refused, whatever else the request holds.
    assert collect("t", orjson.dumps({**single, "writeKey": "nope"}), write_keys=keys).status == 401
    keyless = {k: v for k, v in single.items() if k != "writeKey"}
    assert collect("t", orjson.dumps(keyless), write_keys=keys).status == 401
    assert collect("t", orjson.dumps(single), authorization=basic("nope"), write_keys=keys).status == 401
    assert collect("t", orjson.dumps({**single, "writeKey": "nope"}), authorization=basic("wk0"),
                   write_keys=keys).status == 200  # basic auth, when sent, is the key
    # A body with no key to be found is refused without telling what is wrong with it; with a key, it is told.
    assert collect("t", b"{nope", write_keys=keys).status == 401
    assert collect("t", b"{nope", authorization=basic("wk0"), write_keys=keys).status == 400
    assert collect("t", b"[]", write_keys=keys).status == 401
    # No keys configured: open, and a body's key is still not published.
    res = collect("t", orjson.dumps(single))
    assert res.status == 200 and b"writeKey" not in res.records[0][1]


def test_cors_echoes_the_origin_and_allows_every_header_segments_sdks_send():
    h = cors_headers("https://shop.example", "authorization, content-type, x-retry-count")
    assert h["Access-Control-Allow-Origin"] == "https://shop.example"
    allowed = {x.strip().lower() for x in h["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "content-encoding", "x-retry-count"} <= allowed
    assert {"Origin", "Access-Control-Request-Headers"} <= {x.strip() for x in h["Vary"].split(",")}
    assert "POST" in h["Access-Control-Allow-Methods"] and "OPTIONS" in h["Access-Control-Allow-Methods"]
    # Segment's own headers are allowed before any preflight asks; other names asked for are echoed once each.
    assert cors_headers(None)["Access-Control-Allow-Headers"] == ", ".join(CORS_HEADERS)
    assert cors_headers(None)["Access-Control-Allow-Origin"] == "*"
    echoed = cors_headers("https://a.example", "X-Custom, x-custom, Authorization, bad name, a\r\nb:c")
    assert echoed["Access-Control-Allow-Headers"] == ", ".join([*CORS_HEADERS, "X-Custom"])


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
@given(_bodies, st.sampled_from(sorted(PATHS)), st.binary(), st.sampled_from([None, "wk", "nope"]),
       st.one_of(st.none(), st.text(max_size=8), st.just(basic("wk"))))
def test_any_body_gets_an_answer_never_a_server_error(body, path, junk, body_key, authorization):
    if body_key is not None and isinstance(body, dict):
        body = {**body, "writeKey": body_key}
    # json, not orjson: it writes integers of any size (and Infinity), which clients may send too.
    for raw in (json.dumps(body).encode(), junk):
        assert collect(path, raw, "2026-11-23T00:00:00Z").status in (200, 400, 413)
        res = collect(path, raw, "2026-11-23T00:00:00Z", authorization, ["wk"])
        assert res.status in (200, 400, 401, 413)
        assert all(b'"writeKey"' not in value for _, value in res.records)
