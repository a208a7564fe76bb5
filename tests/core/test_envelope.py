"""Envelopes: rows as arrays in column order, metas with every identifier hashed and without the messageId digest,
entries re-keyed without decoding, and envelopes written by the previous layouts still read the same."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core import exact_json
from core.envelope import (
    ENVELOPE_VERSION,
    Entry,
    NewerEnvelopeError,
    decode_entry,
    decode_envelope,
    encode_entry,
    encode_envelopes,
    entry_event,
    message_digest,
)
from core.identifiers import event_identifiers, extract_identifiers
from core.ids import identifier_hash
from core.rows import EVENT_ROW_COLUMNS, event_row, row_dict
from tests.core.helpers import RULES
from tests.streams.test_accepted_events_never_stop_the_person_stage import events as odd_events

EVENTS = [
    ("user_id:u1", 1_790_000_000_000, {"type": "track", "event": "add_to_cart", "message_id": "m1", "user_id": "u1",
                                       "properties": {"sku": "A-1", "price": 9.5}}),
    ("user_id:u1", 1_790_000_001_000, {"type": "identify", "message_id": "m2", "user_id": "u1",
                                       "traits": {"phone": "13800138000"}, "identities": {"phone": "13800138000"}}),
    ("anonymous_id:a9", 1_790_000_002_000, {"type": "page", "name": "home", "message_id": "m3", "anonymous_id": "a9",
                                            "context": {"campaign": {"source": "baidu", "medium": "cpc"}}}),
]

# The same three events as the version-2 layout wrote them (rows as objects, empty columns left out): envelopes
# like this one are still on the topic when a person stage of this version first starts.
V2_ENVELOPE = b"\n".join([
    b'{"v":2,"src":"src","wm":1790000000500,"fl":true,"n":3}',
    b'[["user_id:u1",1790000000000,1790000000005,0,0,"m1","d11f79d4b490b654","add_to_cart",false,0],'
    b'["user_id:u1",1790000001000,1790000001005,0,1,"m2","c203129735019090","identify",true,0],'
    b'["anonymous_id:a9",1790000002000,1790000002005,0,2,"m3","f8a1742d4a6d5b64","page",false,0]]',
    b"",
    b'{"message_id":"m1","type":"track","event":"add_to_cart","ts":1790000000.0,"received_at":1790000000.005,'
    b'"properties":{"sku":"A-1","price":9.5},"raw_partition":0,"raw_offset":0,"identities":{"user_id":"u***"}}',
    b'{"type":"identify","message_id":"m2","user_id":"u1","traits":{"phone":"13800138000"},'
    b'"identities":{"phone":"13800138000"}}',
    b'{"message_id":"m2","type":"identify","event":"identify","ts":1790000001.0,"received_at":1790000001.005,'
    b'"properties":{},"raw_partition":0,"raw_offset":1,"identities":{"phone":"138****8000","user_id":"u***"}}',
    b"",
    b'{"message_id":"m3","type":"page","event":"page","ts":1790000002.0,"received_at":1790000002.005,'
    b'"properties":{},"raw_partition":0,"raw_offset":2,"identities":{"anonymous_id":"a***"},"name":"home",'
    b'"campaign_source":"baidu","campaign_medium":"cpc"}',
])


# The same three events as version 3 wrote them (rows as arrays; every meta with the messageId's digest).
V3_ENVELOPE = b"\n".join([
    b'{"v":3,"src":"src","wm":1790000000500,"fl":true,"n":3}',
    b'[["user_id:u1",1790000000000,1790000000005,0,0,"m1","d11f79d4b490b654","add_to_cart",false,0],'
    b'["user_id:u1",1790000001000,1790000001005,0,1,"m2","c203129735019090","identify",true,0],'
    b'["anonymous_id:a9",1790000002000,1790000002005,0,2,"m3","f8a1742d4a6d5b64","page",false,0]]',
    b"",
    b'["m1","track","add_to_cart","",1790000000.0,1790000000.005,{"sku":"A-1","price":9.5},{"user_id":"u***"},0,0,'
    b'"","",""]',
    b'{"type":"identify","message_id":"m2","user_id":"u1","traits":{"phone":"13800138000"},'
    b'"identities":{"phone":"13800138000"}}',
    b'["m2","identify","identify","",1790000001.0,1790000001.005,{},{"phone":"138****8000","user_id":"u***"},0,1,'
    b'"","",""]',
    b"",
    b'["m3","page","page","home",1790000002.0,1790000002.005,{},{"anonymous_id":"a***"},0,2,"baidu","cpc",""]',
])


# The same three events as version 4 wrote them (metas without the digest, nor the anonymousId beside a userId).
V4_ENVELOPE = b"\n".join([
    b'{"v":4,"src":"src","wm":1790000000500,"fl":true,"n":3}',
    b'[["user_id:u1",1790000000000,1790000000005,0,0,"m1","add_to_cart",false,0],'
    b'["user_id:u1",1790000001000,1790000001005,0,1,"m2","identify",true,0],'
    b'["anonymous_id:a9",1790000002000,1790000002005,0,2,"m3","page",false,0]]',
    *V3_ENVELOPE.split(b"\n")[2:],
])

# ... and as version 5 wrote them (with the anonymousId beside a userId: none of these has one).
V5_ENVELOPE = b"\n".join([
    b'{"v":5,"src":"src","wm":1790000000500,"fl":true,"n":3}',
    b'[["user_id:u1",1790000000000,1790000000005,0,0,"m1","add_to_cart",false,0,0],'
    b'["user_id:u1",1790000001000,1790000001005,0,1,"m2","identify",true,0,0],'
    b'["anonymous_id:a9",1790000002000,1790000002005,0,2,"m3","page",false,0,0]]',
    *V3_ENVELOPE.split(b"\n")[2:],
])


def current(salt: str = "") -> bytes:
    """The three events as this version writes them, keyed as the old layouts were (a pk is opaque here)."""
    entries = []
    for i, (pk, ts, ev) in enumerate(EVENTS):
        ids, more = event_identifiers(ev, RULES.identity, salt)
        entries.append(encode_entry(pk, ts, ts + 5, 0, i, ev, None, ids, more))
    return encode_envelopes("src", 1_790_000_000_500, entries)[0]


def _metas(entries) -> list[tuple]:
    return [(en.pk, en.ts, en.rcv, en.src, en.message_id, en.digest, en.name, en.needs_body, en.flags, en.ids,
             en.user_id, en.anonymous_id) for en in entries]


def test_rows_are_arrays_of_every_column_with_the_pii_masked():
    env = decode_envelope(current())
    assert orjson.loads(current().split(b"\n")[0])["v"] == ENVELOPE_VERSION
    rows = [row_dict(event_row(en, "o_1")) for en in env.entries]
    assert [len(orjson.loads(event_row(en, "o_1"))) for en in env.entries] == [len(EVENT_ROW_COLUMNS)] * 3
    assert rows[1]["identities"] == {"phone": "138****8000", "user_id": "u***"}
    assert rows[2] == {"oneid": "o_1", "message_id": "m3", "type": "page", "event": "page", "name": "home",
                       "ts": 1_790_000_002.0, "received_at": 1_790_000_002.005, "properties": {},
                       "identities": {"anonymous_id": "a***"}, "raw_partition": 0, "raw_offset": 2,
                       "campaign_source": "baidu", "campaign_medium": "cpc", "campaign_name": "",
                       "id_hash": identifier_hash("", "anonymous_id", "a9")}
    # Each row names its primary identifier (the first of the event's, by priority), as a hash.
    assert [r["id_hash"] for r in rows] == [en.ids[0][1] for en in env.entries]


@pytest.mark.parametrize("old_envelope", [V2_ENVELOPE, V3_ENVELOPE, V4_ENVELOPE, V5_ENVELOPE],
                         ids=["v2", "v3", "v4", "v5"])
@pytest.mark.parametrize("salt", ["", "s3cret"])
def test_an_envelope_of_a_previous_layout_gives_the_same_rows_events_and_metas(old_envelope, salt):
    """Ids included: an old layout's identifiers, hashed with the salt the reader passes, are the ones the ingest
    now extracts from the same events, in the same order."""
    old, new = decode_envelope(old_envelope, salt), decode_envelope(current(salt))
    assert (old.source, old.watermark, old.flush) == (new.source, new.watermark, new.flush)
    assert [event_row(en, "o_1") for en in old.entries] == [event_row(en, "o_1") for en in new.entries]
    assert [en.event for en in old.entries] == [en.event for en in new.entries]
    assert _metas(old.entries) == _metas(new.entries)
    assert [entry_event(en) for en in old.entries] == [entry_event(en) for en in new.entries]
    assert [[t for t, _, _ in en.ids] for en in old.entries] == [["user_id"], ["user_id", "phone"], ["anonymous_id"]]


def test_a_version_5_anonymous_id_beside_a_user_id_is_an_identifier_and_rebuilt():
    env = decode_envelope(V5_ENVELOPE.replace(b'"add_to_cart",false,0,0]', b'"add_to_cart",false,0,"a7"]'), "s")
    en = env.entries[0]
    assert (en.pk, en.user_id, en.anonymous_id) == ("user_id:u1", "u1", "a7")
    assert en.ids == (("user_id", identifier_hash("s", "user_id", "u1"), "u***"),
                      ("anonymous_id", identifier_hash("s", "anonymous_id", "a7"), "a***"))
    assert entry_event(en)["user_id"] == "u1" and entry_event(en)["anonymous_id"] == "a7"


def test_an_envelope_of_a_newer_layout_is_left_for_an_upgraded_worker():
    newer = current().replace(b'"v":%d' % ENVELOPE_VERSION, b'"v":%d' % (ENVELOPE_VERSION + 1), 1)
    with pytest.raises(NewerEnvelopeError):
        decode_envelope(newer)


def test_every_meta_carries_the_events_identifiers_hashed_and_masked_and_no_raw_value_beyond_its_top_ids():
    metas = orjson.loads(current("salt").split(b"\n")[1])
    assert metas[1][9] == [["user_id", identifier_hash("salt", "user_id", "u1"), "u***"],
                           ["phone", identifier_hash("salt", "phone", "13800138000"), "138****8000"]]
    assert b"13800138000" not in current("salt").split(b"\n")[1]
    # The bodiless events carry their raw userId / anonymousId (their only identifiers); the identify's travel in
    # its body.
    assert [m[10:] for m in metas] == [["u1", 0], [0, 0], [0, "a9"]]


def test_the_person_stage_computes_the_digest_the_ingest_no_longer_carries():
    metas = orjson.loads(current().split(b"\n")[1])
    assert [len(m) for m in metas] == [12, 12, 12]
    assert "d11f79d4b490b654" not in current().decode()
    # The digest the previous layout carried, the one person states already hold: duplicates stay duplicates
    # across the upgrade.
    assert [en.digest for en in decode_envelope(current()).entries] == \
        ["d11f79d4b490b654", "c203129735019090", "f8a1742d4a6d5b64"]
    assert [en.digest for en in decode_envelope(current()).entries] == [message_digest(m) for m in ("m1", "m2", "m3")]


def test_an_event_is_rebuilt_from_its_row_when_the_row_tells_it_all():
    env = decode_envelope(current())
    assert env.entries[0].event == {"type": "track", "message_id": "m1", "event": "add_to_cart",
                                    "properties": {"sku": "A-1", "price": 9.5}}
    assert env.entries[2].event == {"type": "page", "message_id": "m3", "name": "home",
                                    "context": {"campaign": {"source": "baidu", "medium": "cpc"}}}


def test_an_event_with_a_user_id_and_an_anonymous_id_keeps_both_without_carrying_its_body():
    ev = {"type": "track", "event": "product_view", "message_id": "m4", "user_id": "u1", "anonymous_id": "a9"}
    ids, more = event_identifiers(ev, RULES.identity, "")
    meta, body, row = encode_entry("o_1", 1_790_000_003_000, 1_790_000_003_005, 0, 3, ev, None, ids, more)
    assert body == b""  # the row and the meta tell it all: not encoded twice, never decoded by the person stage
    en = decode_entry((meta, body, row))
    assert (en.pk, en.user_id, en.anonymous_id, en.needs_body) == ("o_1", "u1", "a9", False)
    assert [t for t, _, _ in en.ids] == ["user_id", "anonymous_id"]
    assert entry_event(en)["user_id"] == "u1" and entry_event(en)["anonymous_id"] == "a9"
    assert row_dict(event_row(en, "o_1"))["identities"] == {"user_id": "u***", "anonymous_id": "a***"}
    alone = decode_entry(encode_entry("", 1, 1, 0, 0, {"type": "page", "message_id": "m5", "anonymous_id": "a9"}))
    assert (alone.pk, alone.user_id, alone.anonymous_id) == ("", "", "a9")
    assert entry_event(alone)["anonymous_id"] == "a9" and "user_id" not in entry_event(alone)


def test_an_identifier_read_from_the_context_makes_the_body_travel():
    """The row keeps no context but the campaign: a device id read from ``context.device`` is rebuilt only from
    the body, so the body travels (and the meta carries no raw value)."""
    ev = {"type": "track", "event": "x", "message_id": "m6", "anonymous_id": "a9", "context": {"device": {"id": "d1"}}}
    ids, more = event_identifiers(ev, RULES.identity, "")
    assert more and [t for t, _, _ in ids] == ["device_id", "anonymous_id"]
    en = decode_entry(encode_entry("", 1, 1, 0, 0, ev, None, ids, more))
    assert en.needs_body and en._body and (en.user_id, en.anonymous_id) == ("", "")
    assert entry_event(en)["context"] == {"device": {"id": "d1"}}
    assert extract_identifiers(entry_event(en), RULES.identity, "") == list(en.ids)


def test_an_entry_re_keyed_gives_the_same_lines_but_its_pk_without_decoding_its_body():
    env = decode_envelope(current())
    for en in env.entries:
        again = decode_entry(en.encoded("o_abc"))
        assert en._event is None  # neither the body nor the row was decoded to re-key it
        assert again.pk == "o_abc" and _metas([again])[0][1:] == _metas([en])[0][1:]
        assert (again._body, again.row) == (en._body, en.row)
    # An entry made from a dict is encoded as the ingest would encode it.
    ev = EVENTS[1][2]
    ids, more = event_identifiers(ev, RULES.identity, "")
    made = Entry.of_event("", 5, 6, (0, 1), ev, (), tuple(ids), more)
    assert made.encoded("o_x") == encode_entry("o_x", 5, 6, 0, 1, ev, None, ids, more)


def _reingested(raw: bytes, taken: int, now: int):
    from core.ingest import RawRecord, ingest_records

    res = ingest_records([RawRecord("raw", 2, 7, taken, None, raw)], RULES, 1, now, salt="s")
    return [decode_entry(e) for part in res.entries.values() for e in part]


def _comparable(en) -> tuple:
    row = dict(zip(EVENT_ROW_COLUMNS[1:], orjson.loads(en.row), strict=True))
    return en.pk, en.ts, en.rcv, en.message_id, en.name, en.flags, en.ids, en.user_id, en.anonymous_id, row


@settings(max_examples=300, suppress_health_check=list(HealthCheck))
@given(odd_events, st.integers(1, 10**12))
def test_an_event_the_person_stage_dead_letters_makes_the_same_entry_when_replayed(doc, shift):
    """``cdp dlq replay`` of a person-stage bad row: the event, as ``entry_event`` writes it, goes through the
    ingest again, later and as another record, and must come out as the same entry: the same person, times, name,
    flags, identifiers and ClickHouse row (whose masked identifiers are every one the event held)."""
    now = 1_795_400_000_000
    first = _reingested(json.dumps(doc).encode(), now - 5_000, now)
    assume(first)  # refused by the ingest: a bad row already, never an entry
    [en] = first
    again_at = now + shift if not en.flags else now - 5_000  # a flagged event is timed at receipt again
    [again] = _reingested(exact_json.dumps(entry_event(en)), again_at, again_at + 5_000)  # as the worker writes it
    assert _comparable(again) == _comparable(en)
