import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.bad_rows import BadRow, Stage
from schemas.events import Event, EventType, field_errors


def test_segment_camel_case_is_accepted_and_dumped_snake_case():
    ev = Event.model_validate({"type": "track", "messageId": "m1", "event": "Order Completed", "userId": 42,
                               "anonymousId": "a1", "timestamp": "2026-11-20T10:00:00Z", "sentAt": 1763632800000,
                               "properties": {"amount": 9.9}})
    assert ev.message_id == "m1" and ev.user_id == "42" and ev.anonymous_id == "a1"
    assert ev.timestamp is not None and ev.timestamp.tzinfo is not None
    dumped = ev.model_dump(exclude_defaults=True)
    assert "message_id" in dumped and "messageId" not in dumped


def test_snake_case_spellings_are_accepted():
    ev = Event.model_validate({"type": "identify", "message_id": "m2", "user_id": "u1",
                               "identities": {"phone": 13800138000}, "traits": {"timezone": "Asia/Shanghai"}})
    assert ev.type is EventType.identify and ev.identities == {"phone": "13800138000"}


def test_naive_timestamps_are_utc():
    ev = Event.model_validate({"type": "page", "messageId": "m", "anonymousId": "a",
                               "timestamp": "2026-01-01T08:00:00"})
    assert ev.timestamp.utcoffset().total_seconds() == 0


@pytest.mark.parametrize("payload, field", [
    ({"type": "track", "event": "x", "userId": "u"}, "messageId"),
    ({"type": "track", "messageId": "", "event": "x", "userId": "u"}, "messageId"),
    ({"type": "track", "messageId": "m" * 101, "event": "x", "userId": "u"}, "messageId"),
    ({"type": "bogus", "messageId": "m", "userId": "u"}, "type"),
    ({"type": "track", "messageId": "m", "userId": "u"}, "$"),  # a track call without its event name
    ({"type": "alias", "messageId": "m", "userId": "u"}, "$"),  # alias without previousId
    ({"type": "track", "messageId": "m", "event": "x"}, "$"),  # nobody to attribute it to
    ({"type": "track", "messageId": "m", "event": "x", "userId": True}, "userId"),
    ({"type": "track", "messageId": "m", "event": "x", "userId": "u", "timestamp": "yesterday"}, "timestamp"),
    ({"type": "track", "messageId": "m", "event": "x", "userId": "u", "properties": [1, 2]}, "properties"),
])
def test_rejected_inputs_name_the_field(payload, field):
    with pytest.raises(ValidationError) as exc:
        Event.model_validate(payload)
    fields = [e["field"] for e in field_errors(exc.value)]
    assert any(f == field or f.startswith(field) for f in fields), fields


@given(st.binary(max_size=200))
def test_bad_row_keeps_any_payload_recoverably(raw):
    payload, enc = BadRow.encode_payload(raw)
    row = BadRow(stage=Stage.decode, reason="invalid_json", payload=payload, payload_encoding=enc,
                 received_at="2026-01-01T00:00:00Z")
    again = BadRow.model_validate_json(row.model_dump_json())
    assert again.original_bytes() == raw
    assert dict(again.kafka_headers())["cdp-error-stage"] == b"decode"


def test_timestamps_as_iso_or_epoch_milliseconds():
    iso = Event.model_validate({"type": "track", "messageId": "a", "event": "x", "userId": "u",
                                "timestamp": "2025-11-20T10:00:00.000Z"})
    epoch = Event.model_validate({"type": "track", "messageId": "b", "event": "x", "userId": "u",
                                  "timestamp": 1763632800000})
    assert iso.timestamp == epoch.timestamp
