"""Whatever the ingest accepts, the person stage carries without raising: an exception there would stop the
partition on every restart (the envelope is read again). Found by this test: a ``sentAt`` far ahead of the
``timestamp`` made an event time before year 1, and firing its trigger raised."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.envelope import decode_entry, encode_envelopes
from core.ingest import RawRecord, ingest_records
from rules.loader import load_rules
from streams.persons import PersonStage
from tests.core.helpers import every_identifier_known
from tests.streams.test_person_cache import MemoryStore

NOW = 1_795_400_000_000
RULES = load_rules("rules")
KNOWN = every_identifier_known()


async def send(channel: str, key: bytes, value: bytes):
    return asyncio.sleep(0)


# Integers past 64 bits too: the ingest carries them (core.exact_json).
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                   st.dictionaries(st.text(max_size=6), c, max_size=3)),
                      max_leaves=8)
ids = st.one_of(st.none(), st.text(max_size=12), st.integers(-10, 10**12),
                st.sampled_from(["null", "0", " u1 ", "+86 138 0013 8000", "A@B.COM"]))
times = st.one_of(st.none(), st.integers(0, 2**40), st.sampled_from([
    "2026-11-20T10:00:00Z", "2026-11-23T10:00:00.123+08:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-11-20T10:00:00", "1969-12-31T23:59:59Z"]))
events = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "identify", "page", "alias", "group", "screen"]),
     "messageId": st.text(min_size=1, max_size=8)},
    optional={"event": st.sampled_from(["add_to_cart", "order_paid", "Product Added", "x", "", "页面"]),
              "userId": ids, "anonymousId": ids, "previousId": ids,
              "identities": st.dictionaries(st.sampled_from(["phone", "email", "wechat_openid", "wechat_appid",
                                                             "crm_id", "x"]), ids, max_size=4),
              "traits": st.dictionaries(st.sampled_from(["phone", "email", "name"]), st.one_of(ids, values),
                                        max_size=3),
              "properties": st.dictionaries(st.text(max_size=5), values, max_size=4),
              "context": st.dictionaries(st.sampled_from(["campaign", "wechat", "channel"]),
                                         st.one_of(values, st.dictionaries(st.sampled_from(["source", "name",
                                                                                            "appid"]),
                                                                           st.one_of(ids, values), max_size=3)),
                                         max_size=3),
              "timestamp": times, "sentAt": times, "receivedAt": times})


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(events, min_size=1, max_size=12), st.sampled_from([-10**10, 0, 10**10, 10**13]))
def test_whatever_the_ingest_accepts_the_person_stage_carries(docs, watermark_shift):
    raw = [json.dumps(d).encode() for d in docs]
    res = ingest_records([RawRecord("raw", 0, i, NOW, None, v) for i, v in enumerate(raw)], RULES, 2, NOW,
                         resolve=KNOWN)
    assert res.ok + len(res.bad_rows) == len(raw)
    stage = PersonStage(RULES, MemoryStore(), None, send, 2, "t", batch_rows=5, batch_envelopes=3)
    offset = 0
    for part, entries in res.entries.items():
        for e in entries:
            assert 0 <= decode_entry(e).ts <= NOW + 86_400_000  # storable, and writable as a date
        # The watermark passes every deadline (when shifted far ahead), so armed triggers fire.
        for env in encode_envelopes("s", NOW + watermark_shift, entries, flush=True):
            done = stage.take(part, offset, env, None)
            offset += 1
            for _, _, action in (done[0].actions if done else []):
                for k in ("created_at", "not_before", "expires_at"):
                    datetime.fromisoformat(action[k].replace("Z", "+00:00"))


def test_a_sent_at_far_ahead_of_the_timestamp_is_timed_at_receipt_and_flagged():
    doc = {"type": "track", "messageId": "m", "event": "add_to_cart", "userId": "u",
           "timestamp": "2026-11-20T10:00:00Z", "sentAt": "9999-12-31T23:59:59Z"}
    res = ingest_records([RawRecord("raw", 0, 0, NOW, None, json.dumps(doc).encode())], RULES, 1, NOW, resolve=KNOWN)
    [entry] = res.entries[0]
    e = decode_entry(entry)
    assert (e.ts, e.rcv, e.flags, res.flagged["past_timestamp"]) == (NOW, NOW, ("past_timestamp",), 1)


def test_a_received_at_that_cannot_be_is_replaced_by_the_record_time():
    doc = {"type": "page", "messageId": "m", "userId": "u", "timestamp": "2026-11-20T10:00:00Z",
           "receivedAt": "9999-12-31T23:59:59Z"}
    res = ingest_records([RawRecord("raw", 0, 0, NOW - 5, None, json.dumps(doc).encode())], RULES, 1, NOW,
                         resolve=KNOWN)
    e = decode_entry(res.entries[0][0])
    assert e.rcv == NOW - 5 and e.ts == 1_795_168_800_000 and not e.flags
