from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest

from core.envelope import decode_entry
from core.ids import identifier_hash
from core.ingest import RawRecord, event_time, ingest_records
from core.normalize import clean_event, normalize_email, normalize_identifier, normalize_phone
from tests.core.helpers import RULES, every_identifier_known

KNOWN = every_identifier_known()

NOW = 1_790_000_000_000


@pytest.mark.parametrize("raw, want", [
    ("13800138000", "13800138000"), ("+86 138-0013-8000", "13800138000"), ("0086 13800138000", "13800138000"),
    ("8613800138000", "13800138000"), ("(138) 0013 8000", "13800138000"), ("+44 20 7946 0958", "+442079460958"),
    ("12345", None), ("phone", None), ("+86 10 1234 5678", "+861012345678"),  # a Beijing landline: E.164
])
def test_phones(raw, want):
    assert normalize_phone(raw) == want


def test_emails_and_openids():
    assert normalize_email("  Alice@Example.COM ") == "alice@example.com"
    assert normalize_email("not-an-email") is None
    assert normalize_identifier("wechat_openid", " oAbc ", "wx123") == "wx123:oAbc"
    assert normalize_identifier("wechat_unionid", " uX ") == "uX"


@pytest.mark.parametrize("placeholder", ["null", "undefined", "0", "", "  ", "anonymousId", "NULL", "[object Object]"])
def test_placeholders_are_never_identifiers(placeholder):
    ev = {"user_id": placeholder, "anonymous_id": "a-1", "identities": {"phone": placeholder, "email": "x@y.io"}}
    dropped: Counter[str] = Counter()
    clean_event(ev, RULES.identity, dropped)
    assert "user_id" not in ev and ev["identities"] == {"email": "x@y.io"}
    assert dropped["user_id"] == 1 and dropped["phone"] == 1


def test_blocked_test_numbers_are_dropped_and_an_event_left_with_no_id_is_a_bad_row():
    raw = orjson.dumps({"type": "track", "messageId": "m1", "event": "x", "userId": "null",
                        "identities": {"phone": "138-0000-0000"}})
    res = ingest_records([RawRecord("raw", 0, 0, NOW, None, raw)], RULES, 4, NOW)
    assert res.ok == 0 and res.bad_rows[0][1].reason == "no_identifier"
    assert res.dropped_identifiers == Counter({"user_id": 1, "phone": 1})


def test_kept_event_carries_normalised_identifiers():
    raw = orjson.dumps({"type": "identify", "messageId": "m1", "userId": " u1 ",
                        "identities": {"phone": "+86 138 0013 8000", "email": "A@B.CN", "device_id": "undefined"}})
    res = ingest_records([RawRecord("raw", 0, 0, NOW, None, raw)], RULES, 1, NOW, resolve=KNOWN)
    e = decode_entry(res.entries[0][0])
    assert [(t, h) for t, h, _ in e.ids] == [("user_id", identifier_hash("", "user_id", "u1")),
                                             ("phone", identifier_hash("", "phone", "13800138000")),
                                             ("email", identifier_hash("", "email", "a@b.cn"))]
    assert e.event["identities"] == {"phone": "13800138000", "email": "a@b.cn"}
    assert res.dropped_identifiers == Counter({"device_id": 1})


def test_clock_skew_is_corrected_from_sent_at():
    ts = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    sent = datetime(2026, 1, 1, 10, 5, tzinfo=UTC)  # device clock 5 minutes ahead of the server's
    received = int(datetime(2026, 1, 1, 10, 0, 1, tzinfo=UTC).timestamp() * 1000)
    assert event_time(ts, sent, received) == int(datetime(2026, 1, 1, 9, 55, 1, tzinfo=UTC).timestamp() * 1000)
    assert event_time(ts, None, received) == int(ts.timestamp() * 1000)
    assert event_time(None, None, received) == received


def test_far_future_events_are_flagged_and_timed_at_receipt():
    raw = orjson.dumps({"type": "track", "messageId": "m1", "event": "x", "userId": "u",
                        "timestamp": "2099-01-01T00:00:00Z"})
    res = ingest_records([RawRecord("raw", 0, 0, NOW, None, raw)], RULES, 1, NOW, resolve=KNOWN)
    e = decode_entry(res.entries[0][0])
    assert e.flags == ("future_timestamp",) and e.ts == NOW and res.flagged["future_timestamp"] == 1
    assert e.event["timestamp"].startswith("2099")  # what the app said is kept


def test_a_replayed_archive_keeps_its_event_times():
    """Skew correction uses the event's own receivedAt: replaying last week's events does not move them to now."""
    raw = orjson.dumps({"type": "track", "messageId": "m1", "event": "x", "userId": "u",
                        "timestamp": "2026-01-01T10:00:00.000Z", "sentAt": "2026-01-01T10:00:02.000Z",
                        "receivedAt": "2026-01-01T10:00:01.000Z"})  # the device clock was 1 s ahead
    res = ingest_records([RawRecord("raw", 0, 0, NOW, None, raw)], RULES, 1, NOW, resolve=KNOWN)
    e = decode_entry(res.entries[0][0])
    assert e.ts == int(datetime(2026, 1, 1, 9, 59, 59, tzinfo=UTC).timestamp() * 1000)
    assert e.rcv == int(datetime(2026, 1, 1, 10, 0, 1, tzinfo=UTC).timestamp() * 1000)


def test_an_alias_whose_previous_id_is_a_placeholder_is_a_bad_row_and_a_real_one_travels_whole():
    # Nothing is left to alias once the placeholder is dropped; a real previousId is not in the row, so the event
    # travels whole (the person stage, and a replay of it from the dead-letter topic, have it).
    docs = [{"type": "alias", "messageId": "m1", "userId": "u1", "previousId": "undefined"},
            {"type": "alias", "messageId": "m2", "userId": "u1", "previousId": "anon-7"}]
    res = ingest_records([RawRecord("raw", 0, i, NOW, None, orjson.dumps(d)) for i, d in enumerate(docs)], RULES, 1,
                         NOW, resolve=KNOWN)
    [(_, bad)] = res.bad_rows
    assert (bad.reason, bad.errors[0]["field"], bad.source["offset"]) == ("no_identifier", "previousId", 0)
    [alias] = [decode_entry(e) for e in res.entries[0]]
    assert alias.needs_body and alias.event["previous_id"] == "anon-7"


def test_an_openid_is_scoped_by_a_real_app_id_never_by_a_placeholder():
    # The placeholder wechat_appid is dropped with the other placeholders; scoping by it gave "0:o-1", which read
    # again (a replay from the dead-letter topic) became "wx9:0:o-1": another person.
    raw = orjson.dumps({"type": "track", "messageId": "m1", "event": "x", "context": {"wechat": {"appid": "wx9"}},
                        "identities": {"wechat_appid": "0", "wechat_openid": "o-1"}})
    res = ingest_records([RawRecord("raw", 0, 0, NOW, None, raw)], RULES, 1, NOW, resolve=KNOWN)
    e = decode_entry(res.entries[0][0])
    assert e.event["identities"] == {"wechat_openid": "wx9:o-1"}
    again = ingest_records([RawRecord("raw", 0, 1, NOW, None, orjson.dumps(e.event))], RULES, 1, NOW, resolve=KNOWN)
    assert decode_entry(again.entries[0][0]).ids == e.ids
    assert [(t, h) for t, h, _ in e.ids] == [("wechat_openid", identifier_hash("", "wechat_openid", "wx9:o-1"))]
