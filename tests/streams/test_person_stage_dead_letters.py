"""What the person stage cannot process goes to the dead-letter topic and the partition goes on: an undecodable
envelope, the events of a person whose processing raises (a bug, or a stored state that cannot be read), a person
whose timers raise. Before, any of these raised out of the agent and stopped the partition on every restart."""

from __future__ import annotations

import asyncio

import msgspec
import orjson
import pytest

import streams.persons
from core.envelope import decode_entry, encode_envelopes
from core.ingest import RawRecord, ingest_records
from core.person import PersonState
from schemas.bad_rows import NOT_EVENTS, BadRow
from streams.persons import PersonStage
from tests.core.helpers import keyed_by_user_id
from tests.streams.test_person_cache import RULES, T0, MemoryStore

PERSONS = keyed_by_user_id("ann", "bob", "cy")

SENT: list[tuple[bytes | None, BadRow]] = []


async def send_bad_row(key: bytes | None, row: BadRow):
    SENT.append((key, row))
    return asyncio.sleep(0)


async def send_action(channel: str, key: bytes, value: bytes):
    return asyncio.sleep(0)


@pytest.fixture(autouse=True)
def _clear() -> None:
    SENT.clear()


def stage(store: MemoryStore | None = None) -> PersonStage:
    return PersonStage(RULES, store or MemoryStore(), None, send_action, 1, "cdp.person.events", batch_rows=10_000,
                       batch_envelopes=1, send_bad_row=send_bad_row, raw_topic="cdp.events.raw")


def envelope(docs: list[dict], wm: int = T0) -> bytes:
    raw = [RawRecord("cdp.events.raw", 3, 100 + i, T0, None, orjson.dumps(d)) for i, d in enumerate(docs)]
    res = ingest_records(raw, RULES, 1, T0 + 60_000, resolve=PERSONS)
    assert not res.bad_rows
    return encode_envelopes("test", wm, res.entries[0], flush=True)[0]


def track(i: int, user: str, name: str = "product_view", **kw) -> dict:
    return {"type": "track", "messageId": f"m{i}", "event": name, "userId": user,
            "timestamp": "2026-09-21T12:00:00Z", **kw}


def state_that_breaks_the_fold(pk: str) -> PersonState:
    """A state whose fold raises (a count set to text, as a bug could leave it). Held by the stage as its newest
    state of the person: read from the table, a state of the wrong types is refused (the next test)."""
    st = PersonState.new(pk)
    st.counts["product_view"] = "three"  # type: ignore[assignment]
    return st


async def test_a_person_whose_processing_raises_is_dead_lettered_and_the_others_go_on():
    store = MemoryStore()
    s = stage(store)
    s._cache["user_id:bob"] = (0, state_that_breaks_the_fold("user_id:bob"))
    docs = [track(0, "ann"), track(1, "bob", properties={"sku": "S-1"}),
            track(2, "bob", "identify", identities={"phone": "138 0013 8000"}), track(3, "cy")]
    fx, acks = s.take(0, 0, envelope(docs), "h0")
    assert acks == ["h0"]  # the envelope is acknowledged with its batch: the partition goes on
    assert sorted(orjson.loads(line)[1] for line in fx.event_lines) == ["m0", "m3"]
    await s.complete(fx)
    assert [(k, row.stage.value, row.reason) for k, row in SENT] == [(b"user_id:bob", "process", "unprocessable")] * 2
    assert "TypeError" in SENT[0][1].errors[0]["error"]
    assert SENT[0][1].source == {"topic": "cdp.events.raw", "partition": 3, "offset": 101,
                                 "envelope": "cdp.person.events:0:0"}
    assert s.stats.bad_rows == 2
    # Each payload is the event as an app could send it again: after the fix, `cdp dlq replay` makes the same
    # entries of them (the same person, event time and row).
    def entry(raw: bytes, offset: int, at: int):
        [e] = ingest_records([RawRecord("cdp.events.raw", 3, offset, at, None, raw)], RULES, 1, at,
                              resolve=PERSONS).entries[0]
        en = decode_entry(e)
        return en.pk, en.ts, en.rcv, en.row

    for (_, row), offset in zip(SENT, (101, 102), strict=True):
        sent = orjson.dumps(docs[offset - 100])
        assert entry(row.original_bytes(), offset, T0 + 99_000) == entry(sent, offset, T0)
    # The next envelope for the same partition is processed as usual.
    fx, _ = s.take(0, 1, envelope([track(4, "ann")]), "h1")
    assert [orjson.loads(line)[1] for line in fx.event_lines] == ["m4"]
    await s.complete(fx)
    # Once bob's state is mended, the replayed events are taken, not dropped as duplicates: the failed fold left
    # none of them recorded as seen, in the state the stage holds or in the one it wrote.
    assert "seen" not in msgspec.msgpack.decode(store.data[b"user_id:bob"])
    s._cache["user_id:bob"][1].counts["product_view"] = 3
    replay = [RawRecord("cdp.events.raw", 3, 200 + i, T0 + 99_000, None, row.original_bytes())
              for i, (_, row) in enumerate(SENT)]
    fx, _ = s.take(0, 2, encode_envelopes("test", T0, ingest_records(replay, RULES, 1, T0 + 99_000,
                                                                     resolve=PERSONS).entries[0])[0],
                   "h2")
    assert sorted(orjson.loads(line)[1] for line in fx.event_lines) == ["m1", "m2"] and s.stats.duplicates == 0


async def test_a_stored_state_that_cannot_be_read_dead_letters_that_person_s_events_only():
    store = MemoryStore()
    store.data[b"user_id:bob"] = b"\x00 not a state"
    s = stage(store)
    fx, _ = s.take(0, 0, envelope([track(0, "bob"), track(1, "ann")]), "h0")
    await s.complete(fx)
    assert [orjson.loads(line)[1] for line in fx.event_lines] == ["m1"]
    assert [(row.reason, row.source["offset"]) for _, row in SENT] == [("unprocessable", 100)]


async def test_an_undecodable_envelope_is_dead_lettered_as_it_was_read():
    s = stage()
    fx, acks = s.take(0, 7, b"\xff\xfe not an envelope", "h7")
    await s.complete(fx)
    [(key, row)] = SENT
    assert (key, row.reason, row.payload_encoding, row.original_bytes()) == (
        None, "bad_envelope", "base64", b"\xff\xfe not an envelope")
    assert row.source == {"topic": "cdp.person.events", "partition": 0, "offset": 7} and acks == ["h7"]
    assert row.reason in NOT_EVENTS  # `cdp dlq replay` leaves it: it is not an event


async def test_a_person_whose_timers_raise_is_recorded_and_the_other_persons_timers_fire(monkeypatch):
    real = streams.persons.fire_due

    def fire_due(st, *args):
        if st.oneid == "user_id:bob":
            raise RuntimeError("a bug in a trigger")
        return real(st, *args)

    monkeypatch.setattr(streams.persons, "fire_due", fire_due)
    s = stage()
    phone = {"identities": {"phone": "138 0013 8000"}}
    carts = [track(0, "bob", "add_to_cart", **phone), track(1, "ann", "add_to_cart", **phone)]
    fx, _ = s.take(0, 0, envelope(carts, wm=0), "h0")
    await s.complete(fx)
    assert not SENT and not fx.actions  # armed, not due yet
    # A watermark thirty days on passes every cart's deadline.
    fx, _ = s.take(0, 1, encode_envelopes("test", T0 + 86_400_000 * 30, [], flush=True)[0], "h1")
    await s.complete(fx)
    assert [a[1] for a in fx.actions] == ["user_id:ann"]  # a person is keyed by their OneID
    [(key, row)] = SENT
    assert (key, row.reason, row.reason in NOT_EVENTS) == (b"user_id:bob", "timer_failed", True)
    assert orjson.loads(row.original_bytes())["person_key"] == "user_id:bob"
