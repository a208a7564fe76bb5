import json
from datetime import datetime

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from core.clock import iso
from core.envelope import decode_entry, decode_envelope, encode_envelopes
from core.identifiers import extract_identifiers
from core.ids import identifier_hash, oneid_for_hash, partition_for
from core.ingest import UNRESOLVED, RawRecord, epoch_ms, ingest_records, watermark
from schemas.bad_rows import BadRow, Stage
from tests.core.helpers import RULES, every_identifier_known

KNOWN = every_identifier_known()

NOW = 1_790_000_000_000


def rec(value: bytes | None, offset: int = 0, partition: int = 0) -> RawRecord:
    return RawRecord("cdp.events.raw", partition, offset, NOW, b"k", value)


def good(i: int, **kw) -> bytes:
    return orjson.dumps({"type": "track", "messageId": f"m{i}", "event": "Product Added", "userId": f"u{i % 7}",
                         "timestamp": "2026-09-21T10:00:00Z", **kw})


@settings(max_examples=300)
@given(st.lists(st.one_of(st.binary(max_size=300), st.builds(good, st.integers(0, 100)), st.none()), max_size=30))
def test_every_record_ends_as_an_event_or_a_bad_row(values):
    """Any bytes on the raw topic: processed or dead-lettered, never a crash, nothing lost."""
    res = ingest_records([rec(v, i) for i, v in enumerate(values)], RULES, 4, NOW)
    entries = [e for part in res.entries.values() for e in part]
    assert res.ok == len(entries)
    assert res.ok + len(res.bad_rows) == len(values)
    for _key, row in res.bad_rows:
        assert row.stage in (Stage.decode, Stage.validate, Stage.process) and row.reason
        assert row.source["offset"] < len(values)


def test_good_events_are_aliased_routed_by_person_and_timed_by_event_time():
    res = ingest_records([rec(good(i), i) for i in range(20)], RULES, 4, NOW, resolve=KNOWN)
    assert not res.bad_rows and res.ok == 20
    for part, entries in res.entries.items():
        for raw in entries:
            e = decode_entry(raw)
            assert e.pk == oneid_for_hash("", identifier_hash("", "user_id", e.user_id))  # its userId's person
            assert partition_for(e.pk, 4) == part
            assert e.event["event"] == "add_to_cart"  # Segment's name mapped onto the standard one
            assert e.ts == 1_789_984_800_000 and e.rcv == NOW


def test_bad_rows_say_why():
    res = ingest_records([rec(b"{nope", 0), rec(b'{"type":"track","event":"x"}', 1), rec(b"", 2)], RULES, 4, NOW)
    reasons = [(r.stage.value, r.reason) for _, r in res.bad_rows]
    assert reasons == [("decode", "invalid_json"), ("validate", "schema"), ("decode", "empty")]
    assert any(e["field"] == "messageId" for e in res.bad_rows[1][1].errors)


def test_a_bad_row_keeps_the_records_headers_a_null_valued_one_too():
    """Kafka allows a header without a value: the bad row keeps it as null, and the events around it go on."""
    headers = [("trace", b"t-1"), ("empty", None)]
    res = ingest_records([rec(good(0), 0), RawRecord("cdp.events.raw", 0, 1, NOW, b"k", b"{nope", headers),
                          rec(good(2), 2)], RULES, 4, NOW)
    assert res.ok == 2
    [(key, row)] = res.bad_rows
    assert key == b"k" and row.reason == "invalid_json"
    assert row.headers == {"trace": "t-1", "empty": None}
    assert BadRow.model_validate_json(row.model_dump_json()).headers == row.headers


class _UnreadableHeaders:
    """A record whose headers cannot be read (what a null-valued header was to the bad row before)."""

    topic, partition, offset, timestamp, key, value = "cdp.events.raw", 0, 1, NOW, b"k", b"{nope"

    @property
    def headers(self):
        raise ValueError("unreadable")


def test_a_bad_row_whose_headers_cannot_be_read_is_still_written_without_them():
    res = ingest_records([rec(good(0), 0), _UnreadableHeaders(), rec(good(2), 2)], RULES, 4, NOW)
    assert res.ok == 2
    [(key, row)] = res.bad_rows
    assert key == b"k"  # still the message's Kafka key
    assert row.reason == "invalid_json" and row.payload == "{nope" and row.headers == {}
    assert row.source == {"topic": "cdp.events.raw", "partition": 0, "offset": 1}


def test_an_event_nested_too_deep_is_a_bad_row_and_the_events_around_it_go_on():
    deep = good(1, properties={"a": 0})[:-1].replace(b'"a":0}', b'"a":' + b"[" * 300 + b"]" * 300 + b"}") + b"}"
    assert json.loads(deep)  # valid JSON, nested 300 levels
    res = ingest_records([rec(good(0), 0), rec(deep, 1), rec(good(2), 2)], RULES, 4, NOW)
    assert res.ok == 2
    assert [(r.stage.value, r.reason, r.source["offset"]) for _, r in res.bad_rows] == [("decode", "invalid_json", 1)]


def test_an_integer_past_64_bits_is_carried_with_all_its_digits():
    # JSON allows integers of any size and so does the schema; orjson alone writes none past 64 bits (such an
    # event must be carried, not dead-lettered, nor turned into a float).
    big = good(1, properties={"n": 1})[:-1].replace(b'"n":1}', b'"n":123456789012345678901234567890}') + b"}"
    traits = good(3, traits={"t": 1})[:-1].replace(b'"t":1}', b'"t":[-98765432109876543210]}') + b"}"
    res = ingest_records([rec(good(0), 0), rec(big, 1), rec(good(2), 2), rec(traits, 3)], RULES, 4, NOW)
    assert res.ok == 4 and not res.bad_rows
    entries = {e.message_id: e for part in res.entries.values() for e in decode_envelope(
        encode_envelopes("s", 0, part)[0]).entries}
    # The ClickHouse row (its properties are stored as the JSON text) and the event the person stage reads.
    assert b'"n":123456789012345678901234567890' in entries["m1"].row
    assert json.loads(entries["m1"].row)[6] == {"n": 123456789012345678901234567890}
    assert entries["m3"].needs_body and b'"t":[-98765432109876543210]' in entries["m3"]._body


def test_future_event_time_does_not_move_the_watermark():
    res = ingest_records([rec(good(1, timestamp="2099-01-01T00:00:00Z"))], RULES, 4, NOW)
    assert res.max_event_ts[0] == NOW


def test_watermark_follows_events_in_a_backlog_and_the_clock_when_caught_up():
    assert watermark(NOW - 3_600_000, caught_up=False, now_ms=NOW, lateness_ms=5000) == NOW - 3_605_000
    assert watermark(NOW - 3_600_000, caught_up=True, now_ms=NOW, lateness_ms=5000) == NOW - 5000
    assert watermark(None, caught_up=False, now_ms=NOW, lateness_ms=5000) == 0


def test_envelopes_round_trip_and_split_by_size():
    res = ingest_records([rec(good(i, properties={"pad": "x" * 2000}), i) for i in range(600)], RULES, 1, NOW,
                         resolve=KNOWN)
    envs = encode_envelopes("src-1", 123, res.entries[0])
    assert len(envs) > 1 and all(len(e) < 1_000_000 for e in envs)
    decoded = [decode_envelope(e) for e in envs]
    assert sum(len(d.entries) for d in decoded) == 600
    assert {d.source for d in decoded} == {"src-1"} and {d.watermark for d in decoded} == {123}
    assert decode_envelope(encode_envelopes("s", 5, [])[0]).entries == ()


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                             st.dictionaries(st.text(max_size=8), c, max_size=3)),
                           max_leaves=6)
event_like = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["track", "identify", "page", "screen", "alias", "group", "nope", ""]),
    "messageId": st.one_of(st.text(max_size=120), st.integers()),
    "event": json_values, "userId": json_values, "anonymousId": json_values, "previousId": json_values,
    "identities": st.one_of(json_values, st.dictionaries(st.sampled_from(["phone", "email", "wechat_openid"]),
                                                         json_scalars)),
    "traits": json_values, "properties": json_values, "timestamp": json_values, "sentAt": json_values,
})


@settings(max_examples=400)
@given(st.lists(event_like, max_size=10))
def test_event_shaped_junk_also_ends_as_an_event_or_a_bad_row(docs):
    # json, not orjson: it writes integers of any size (and Infinity), which apps may send too.
    values = [json.dumps(d).encode() for d in docs]
    res = ingest_records([rec(v, i) for i, v in enumerate(values)], RULES, 4, NOW)
    assert res.ok + len(res.bad_rows) == len(values)
    assert set(res.entries) <= {UNRESOLVED}  # no resolver: every entry is the link writer's
    for part in res.entries.values():
        for raw in part:
            e = decode_entry(raw)
            assert e.pk == "" and e.ids and e.event["message_id"]


def test_envelopes_carry_the_whole_event_only_where_the_row_does_not_tell_it():
    ident = good(1, type="identify", identities={"phone": "13800138000"})
    res = ingest_records([rec(good(0, properties={"sku": "S-1"}, context={"campaign": {"source": "sms"}}), 0),
                          rec(ident, 1)], RULES, 1, NOW, resolve=KNOWN)
    envs = encode_envelopes("s", 1, res.entries[0], flush=False)
    assert len(envs) == 1 and decode_envelope(envs[0]).flush is False
    track, identify = decode_envelope(envs[0]).entries
    assert track.needs_body is False and track.event == {
        "type": "track", "message_id": "m0", "event": "add_to_cart", "properties": {"sku": "S-1"},
        "context": {"campaign": {"source": "sms"}}}
    assert identify.needs_body is True and identify.event["identities"] == {"phone": "13800138000"}
    assert b"13800138000" not in identify.row  # the row is masked; only the event body has the number


@given(st.integers(0, 7_258_118_400_000), st.integers(0, 999))
def test_event_times_are_exact_to_the_millisecond_both_ways(ms, micros):
    """A time written by ``iso`` (actions, bad rows, a dead-lettered event sent again) reads back as the same
    millisecond, and a time with microseconds is rounded down to its millisecond: no float a hair under the
    integer (1970 to 2200)."""
    written = iso(ms)
    assert epoch_ms(datetime.fromisoformat(written.replace("Z", "+00:00"))) == ms
    finer = datetime.fromisoformat(written.replace("Z", f"{micros:03d}+00:00"))
    assert epoch_ms(finer) == ms


class _Directory:
    """A replica that knows some identifiers: an event resolves when it knows every one and they are one person."""

    def __init__(self, persons: dict[str, str]):
        self.persons = persons
        self.asked: list[list[str]] = []

    def resolve(self, hashes):
        self.asked.append(list(hashes))
        got = {self.persons.get(h) for h in hashes}
        return got.pop() if len(got) == 1 and None not in got else None


def _h(t: str, v: str, salt: str = "pepper") -> str:
    return identifier_hash(salt, t, v)


def test_events_of_known_persons_go_to_their_partition_and_the_others_to_the_link_writer():
    d = _Directory({_h("user_id", "u1"): "o_ann", _h("anonymous_id", "a1"): "o_ann", _h("user_id", "u2"): "o_bob",
                    _h("anonymous_id", "a2"): "o_bob"})
    docs = [{"userId": "u1"}, {"userId": "u1", "anonymousId": "a1"}, {"userId": "u2"},
            {"userId": "u1", "anonymousId": "a2"},  # two known persons: the link writer decides
            {"userId": "u1", "traits": {"email": "ann@shop.cn"}},  # an identifier not known yet
            {"anonymousId": "a9"}]  # nobody
    res = ingest_records([rec(good(i, **doc), i) for i, doc in enumerate(docs)], RULES, 4, NOW, resolve=d.resolve,
                         salt="pepper")
    assert not res.bad_rows and res.ok == 6
    where = {decode_entry(e).message_id: (part, decode_entry(e).pk) for part, es in res.entries.items() for e in es}
    assert where == {"m0": (partition_for("o_ann", 4), "o_ann"), "m1": (partition_for("o_ann", 4), "o_ann"),
                     "m2": (partition_for("o_bob", 4), "o_bob"), "m3": (UNRESOLVED, ""), "m4": (UNRESOLVED, ""),
                     "m5": (UNRESOLVED, "")}
    # The resolver is asked with every identifier's salted hash, strongest first.
    assert d.asked[1] == [_h("user_id", "u1"), _h("anonymous_id", "a1")]
    assert d.asked[4] == [_h("user_id", "u1"), _h("email", "ann@shop.cn")]


def test_every_entry_carries_its_events_identifiers_as_the_rules_extract_them():
    doc = {"type": "identify", "messageId": "m1", "userId": "u1", "anonymousId": "a1",
           "traits": {"phone": "+86 138 0013 8000", "email": "Ann@Shop.CN"},
           "context": {"device": {"id": "d-1"}, "externalIds": [{"id": "C7", "type": "crm_id", "collection": "users",
                                                                 "encoding": "none"}]}}
    res = ingest_records([rec(orjson.dumps(doc))], RULES, 4, NOW, salt="pepper")
    [[raw]] = res.entries.values()
    en = decode_entry(raw)
    assert [(t, h) for t, h, _ in en.ids] == [
        ("user_id", _h("user_id", "u1")), ("crm_id", _h("crm_id", "C7")), ("phone", _h("phone", "13800138000")),
        ("email", _h("email", "ann@shop.cn")), ("device_id", _h("device_id", "d-1")),
        ("anonymous_id", _h("anonymous_id", "a1"))]
    assert list(en.ids) == extract_identifiers(en.event, RULES.identity, "pepper")
    assert [m for _, _, m in en.ids] == ["u***", "C***", "138****8000", "a***@shop.cn", "d***", "a***"]
    assert b"13800138000" not in raw[0] and b"ann@shop.cn" not in raw[0]  # the meta holds no raw phone or email


def test_an_event_whose_identifiers_are_all_refused_is_a_bad_row_and_a_traits_email_alone_is_not_enough():
    docs = [{"userId": "null", "anonymousId": "undefined"},
            {"userId": "null", "traits": {"email": "ann@shop.cn"}},  # the schema's identifiers all refused
            {"userId": "null", "anonymousId": "a1", "context": {"device": {"id": "0000-0000"}}}]  # blocked: a1 stays
    res = ingest_records([rec(good(i, **doc), i) for i, doc in enumerate(docs)], RULES, 4, NOW)
    assert [(r.reason, r.source["offset"]) for _, r in res.bad_rows] == [("no_identifier", 0), ("no_identifier", 1)]
    [[raw]] = res.entries.values()
    assert [t for t, _, _ in decode_entry(raw).ids] == ["anonymous_id"]
    assert res.dropped_identifiers["device_id"] == 1
