"""The link writer (streams/identity.py) without a broker: envelopes of unresolved events in; events re-keyed to
their OneIDs, merge commands, directory records, profile changes, ClickHouse lines and graph records out."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from core.envelope import decode_envelope, encode_entry, encode_envelopes
from core.identifiers import event_identifiers
from core.identity_rows import IDENTITY_TABLES
from core.ids import identifier_hash, oneid_for_hash, partition_for
from core.person_merge import decode_command, is_command
from rules.loader import default_identity
from streams.identity import LinkWriter
from tests.core.helpers import RULES

T0 = 1_790_000_000_000
SALT = "test-salt"
PARTITIONS = 8
IDENTITY = default_identity()
TOPICS = {"topic": "t.internal.identity", "person_topic": "t.persons", "directory_topic": "t.directory",
          "profile_topic": "t.profile", "dlq_topic": "t.dlq"}


class TableStore:
    """The link writer's table as it sees it (``streams.state.TableState``): reads by partition and key, one write
    per batch."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.writes = 0

    def get(self, partition: int, key: bytes) -> bytes | None:
        assert partition == 0
        return self.data.get(key)

    async def write(self, partition: int, records: dict[bytes, bytes]) -> None:
        assert partition == 0
        self.writes += 1
        self.data.update(records)


class Crash(Exception):
    pass


class Sender:
    """Records every message sent; ``fail_at``: the n-th send (0-based) raises, as a process dying mid-batch."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, int | None]] = []
        self.fail_at = fail_at

    async def __call__(self, topic: str, key: bytes | None, value: bytes, partition: int | None) -> Any:
        if self.fail_at is not None and len(self.sent) == self.fail_at:
            raise Crash
        self.sent.append((topic, key, value, partition))
        ack = asyncio.get_running_loop().create_future()  # acknowledged at once (never awaited after a crash)
        ack.set_result(None)
        return ack


def writer(store: TableStore, send: Sender) -> LinkWriter:
    return LinkWriter(RULES, store, None, send, salt=SALT, partitions=PARTITIONS, **TOPICS)


def oneid(id_type: str, value: str) -> str:
    return oneid_for_hash(SALT, identifier_hash(SALT, id_type, value))


def envelope(*events: dict[str, Any], first_offset: int = 0) -> bytes:
    """One envelope of events the ingest could not resolve (pk ""), with their identifiers as the ingest reads
    them."""
    entries = []
    for i, ev in enumerate(events):
        ids, more = event_identifiers(ev, IDENTITY, SALT)
        entries.append(encode_entry("", ev["_ts"], ev["_ts"], 0, first_offset + i,
                                    {k: v for k, v in ev.items() if k != "_ts"}, ids=ids, more_ids=more))
    return encode_envelopes("ingest-1", T0, entries)[0]


def track(mid: str, ts: int, event: str = "product_view", **ids: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"type": "track", "message_id": mid, "event": event, "_ts": ts}
    identities = {k: v for k, v in ids.items() if k not in ("user_id", "anonymous_id")}
    ev.update({k: v for k, v in ids.items() if k in ("user_id", "anonymous_id")})
    if identities:
        ev["identities"] = identities
    return ev


def person_events(messages: list[tuple[str, bytes | None, bytes, int | None]]) -> dict[str, tuple[str, int]]:
    """messageId -> (the OneID its entry is keyed by, the partition it was sent to), from the envelopes sent to
    the person topic (each entry on its OneID's partition)."""
    out = {}
    for topic, _, value, partition in messages:
        if topic != TOPICS["person_topic"] or is_command(value):
            continue
        assert partition is not None
        for en in decode_envelope(value).entries:
            assert partition == partition_for(en.pk, PARTITIONS)
            assert en.message_id not in out
            out[en.message_id] = (en.pk, partition)
    return out


def commands(messages: list[tuple[str, bytes | None, bytes, int | None]]) -> list[tuple[str, str, str, int | None]]:
    return [(c.cmd, c.from_oneid, c.into_oneid, p) for t, _, v, p in messages
            if t == TOPICS["person_topic"] and is_command(v) for c in [decode_command(v)]]


def on(topic: str, messages: list[tuple[str, bytes | None, bytes, int | None]]) -> list[tuple[bytes | None, bytes]]:
    return [(k, v) for t, k, v, _ in messages if t == TOPICS[topic]]


ANON, LOGIN, AFTER = (track("m-anon", T0, anonymous_id="anon-7f3c"),
                      track("m-login", T0 + 1000, "login", user_id="shopper-42", anonymous_id="anon-7f3c"),
                      track("m-after", T0 + 2000, anonymous_id="anon-7f3c"))
O_ANON, O_USER = oneid("anonymous_id", "anon-7f3c"), oneid("user_id", "shopper-42")


async def test_anonymous_then_login_re_keys_the_events_and_merges_the_anonymous_oneid_into_the_users():
    store, send = TableStore(), Sender()
    lw = writer(store, send)
    fx1 = lw.process([(0, envelope(ANON))])
    await lw.complete(fx1)
    assert person_events(send.sent) == {"m-anon": (O_ANON, partition_for(O_ANON, PARTITIONS))}
    assert commands(send.sent) == [] and fx1.merges == 0

    send.sent.clear()
    fx2 = lw.process([(1, envelope(LOGIN, AFTER, first_offset=1))])
    await lw.complete(fx2)
    sent = send.sent
    # Both events now the user's: the login's, and the anonymous one after it (its anonymousId is the user's now).
    user_p = partition_for(O_USER, PARTITIONS)
    assert person_events(sent) == {"m-login": (O_USER, user_p), "m-after": (O_USER, user_p)}
    # The anonymous OneID is merged into the user's: a merge command to the merged-away OneID's partition.
    assert commands(sent) == [("merge", O_ANON, O_USER, partition_for(O_ANON, PARTITIONS))]
    (merge_cmd,) = [decode_command(v) for t, _, v, _ in sent if is_command(v)]
    assert (merge_cmd.at, merge_cmd.message_id) == (T0 + 1000, "m-login")
    # Directory: the merge pointer before the identifiers' records, every ingest replica reads them.
    directory = on("directory_topic", sent)
    assert directory[0] == (f"m:{O_ANON}".encode(), O_USER.encode())
    assert dict(directory) == {f"m:{O_ANON}".encode(): O_USER.encode(),
                               f"i:{identifier_hash(SALT, 'user_id', 'shopper-42')}".encode(): O_USER.encode(),
                               f"i:{identifier_hash(SALT, 'anonymous_id', 'anon-7f3c')}".encode(): O_USER.encode()}
    assert all(p == 0 for t, _, _, p in sent if t == TOPICS["directory_topic"])
    # identity_merged on the profile topic, keyed by the survivor.
    ((key, change),) = on("profile_topic", sent)
    change = orjson.loads(change)
    assert key == O_USER.encode()
    assert {k: change[k] for k in ("type", "from_oneid", "into_oneid", "message_id", "reason")} == {
        "type": "identity_merged", "from_oneid": O_ANON, "into_oneid": O_USER, "message_id": "m-login",
        "reason": "link"}
    assert on("dlq_topic", sent) == []
    # ClickHouse lines per table (no sink here: the effects hold them), each in its table's column order.
    tables = {t: [dict(zip(IDENTITY_TABLES[t], orjson.loads(ln), strict=True)) for ln in lines]
              for t, lines in fx2.tables.items()}
    assert set(tables) == {"identities", "identity_merges", "identity_links"}
    assert [(m["from_oneid"], m["into_oneid"], m["op"]) for m in tables["identity_merges"]] == [
        (O_ANON, O_USER, "merge")]
    assert {(r["identifier_type"], r["oneid"]) for r in tables["identities"]} == {
        ("user_id", O_USER), ("anonymous_id", O_USER)}
    assert [(r["id_type"], r["other_type"], r["oneid"], r["message_id"]) for r in tables["identity_links"]] == [
        ("anonymous_id", "user_id", O_USER, "m-login")]
    assert "anon-7f3c" not in str(fx2.tables) and "shopper-42" not in str(fx2.tables)  # hashed and masked only
    assert (fx2.events, fx2.links, fx2.merges, fx2.refusals) == (2, 1, 1, {})
    # The graph's records were written once, after every message.
    assert store.writes == 2 and lw.graph.survivor(O_ANON) == O_USER


async def test_a_refused_link_is_recorded_and_the_event_goes_to_its_user_ids_person():
    """Two user_ids on one shared device: they are never one person. The second user's link through the device is
    refused (unique:user_id), the device stays the first user's, and the event is the second user's."""
    store, send = TableStore(), Sender()
    lw = writer(store, send)
    first = track("m-u1", T0, user_id="u1", device_id="tablet-7")
    second = track("m-u2", T0 + 1000, user_id="u2", device_id="tablet-7")
    fx = lw.process([(0, envelope(first, second))])
    await lw.complete(fx)
    o1, o2 = oneid("user_id", "u1"), oneid("user_id", "u2")
    assert person_events(send.sent) == {"m-u1": (o1, partition_for(o1, PARTITIONS)),
                                        "m-u2": (o2, partition_for(o2, PARTITIONS))}
    assert commands(send.sent) == [] and on("profile_topic", send.sent) == [] and fx.merges == 0
    assert fx.refusals == {"unique:user_id": 1}
    (refusal,) = [dict(zip(IDENTITY_TABLES["identity_refusals"], orjson.loads(ln), strict=True))
                  for ln in fx.tables["identity_refusals"]]
    assert {k: refusal[k] for k in ("reason", "id_type", "oneid", "other_oneid", "message_id")} == {
        "reason": "unique:user_id", "id_type": "device_id", "oneid": o2, "other_oneid": o1, "message_id": "m-u2"}
    assert refusal["id_hash"] == identifier_hash(SALT, "device_id", "tablet-7")
    assert "tablet-7" not in refusal["id_masked"]
    assert lw.graph.person_of(identifier_hash(SALT, "device_id", "tablet-7")) == o1


async def test_a_batch_replayed_after_its_records_were_written_changes_nothing():
    store, send = TableStore(), Sender()
    lw = writer(store, send)
    await lw.complete(lw.process([(0, envelope(ANON))]))
    batch = [(1, envelope(LOGIN, AFTER, first_offset=1))]
    await lw.complete(lw.process(batch))
    routed, records = person_events(send.sent), dict(store.data)
    send.sent.clear()

    fx = lw.process(batch)  # read again (the offsets were not committed), its records already written
    await lw.complete(fx)
    assert (fx.links, fx.merges, fx.refusals) == (0, 0, {})
    assert commands(send.sent) == [] and on("profile_topic", send.sent) == []
    assert on("directory_topic", send.sent) == [] and fx.tables == {} and fx.records == {}
    assert person_events(send.sent) == {m: routed[m] for m in ("m-login", "m-after")}
    assert store.data == records
    # The batch before the merge, read again: its event goes to the person its identifier is now, the survivor
    # (whose state holds its messageId once the absorb has arrived), and nothing else changes.
    send.sent.clear()
    fx = lw.process([(0, envelope(ANON))])
    await lw.complete(fx)
    assert person_events(send.sent) == {"m-anon": routed["m-login"]}
    assert (fx.links, fx.merges, fx.tables, fx.records) == (0, 0, {}, {}) and commands(send.sent) == []


@pytest.mark.parametrize("crash_at", [0, 1, 4, None])
async def test_a_batch_replayed_before_its_records_were_written_sends_the_same_messages(crash_at):
    """A crash after some (or all) of a batch's messages were sent but before its records were written (step 3):
    the batch is read again from the state before it and makes the same decisions, so the same messages go out
    again (duplicates the person stage and the directory absorb) and the same rows (the same insert tokens)."""
    store = TableStore()
    await writer(store, Sender()).complete(writer(store, Sender()).process([(0, envelope(ANON))]))
    before = dict(store.data)
    batch = [(1, envelope(LOGIN, AFTER, first_offset=1))]

    crashing = Sender(fail_at=crash_at)
    lw = writer(store, crashing)
    fx1 = lw.process(batch)
    if crash_at is None:  # every message acknowledged, then the process died before the write
        for topic, key, value, partition in fx1.messages:
            await crashing(topic, key, value, partition)
    else:
        with pytest.raises(Crash):
            await lw.complete(fx1)
    assert store.data == before  # nothing of the batch written

    replay = Sender()
    lw2 = writer(store, replay)  # a new process (or the same one) reads the batch again
    fx2 = lw2.process(batch)
    await lw2.complete(fx2)
    assert replay.sent == fx1.messages and crashing.sent == fx1.messages[:len(crashing.sent)]
    assert (fx2.token, fx2.tables, fx2.records) == (fx1.token, fx1.tables, fx1.records)
    assert commands(replay.sent) == [("merge", O_ANON, O_USER, partition_for(O_ANON, PARTITIONS))]
    assert lw2.graph.survivor(O_ANON) == O_USER


async def test_an_undecodable_envelope_is_a_bad_row_and_the_rest_of_the_batch_goes_on():
    store, send = TableStore(), Sender()
    lw = writer(store, send)
    fx = lw.process([(0, b"\x00 not an envelope"), (1, envelope(ANON, first_offset=1))])
    await lw.complete(fx)
    ((key, row),) = fx.bad_rows
    assert (key, row.reason, row.original_bytes()) == (None, "bad_envelope", b"\x00 not an envelope")
    assert row.source == {"topic": TOPICS["topic"], "partition": 0, "offset": 0}
    assert [orjson.loads(v)["reason"] for _, v in on("dlq_topic", send.sent)] == ["bad_envelope"]
    assert person_events(send.sent) == {"m-anon": (O_ANON, partition_for(O_ANON, PARTITIONS))}
    assert fx.token == f"{TOPICS['topic']}:0:0-1"
