"""The DLQ tools on the real broker: counted by header, replayed row by row (a malformed row is skipped and
reported by its place, a record of a failure is left), read one fetched batch at a time, and a replay that the
broker stops says how far it got."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic

from config.settings import Settings
from ops.dlq import dlq_replay, dlq_stats
from ops.topics import ReadPosition, read_topic, topic_batches
from schemas.bad_rows import BadRow, Stage
from streams.kafka import admin_client, client_kwargs, delete_topics, ensure_topics

pytestmark = pytest.mark.integration

RECEIVED = "2026-01-02T03:04:05.000Z"


@pytest.fixture()
def s(tmp_path):
    settings = Settings(topic_prefix=f"tdlq{uuid.uuid4().hex[:10]}", data_dir=tmp_path, partitions=2)
    yield settings
    asyncio.run(delete_topics(settings, settings.topic_prefix))


def event(i: int) -> bytes:
    return orjson.dumps({"type": "track", "messageId": f"m-{i}", "event": "store_purchase",
                         "identities": {"phone": "139-1111-2222"}})


def bad_row(raw: bytes, stage: Stage = Stage.validate, reason: str = "no_identifier", **where) -> BadRow:
    return BadRow.of(raw, stage, reason, [{"msg": "no usable identifier"}], RECEIVED, **where)


async def publish(s: Settings, rows: list[tuple[int, bytes | None, bytes, list[tuple[str, bytes]] | None]]
                  ) -> list[str]:
    """(partition, key, value, headers) each sent and acknowledged alone (a record batch of its own); returns
    each one's topic:partition:offset."""
    await ensure_topics(s, [s.dlq_topic, s.raw_topic])
    producer = AIOKafkaProducer(**client_kwargs(s), acks="all")
    await producer.start()
    try:
        places = []
        for partition, key, value, headers in rows:
            md = await producer.send_and_wait(s.dlq_topic, value, key=key, partition=partition, headers=headers)
            places.append(f"{s.dlq_topic}:{md.partition}:{md.offset}")
        return places
    finally:
        await producer.stop()


def as_published(row: BadRow, partition: int, key: bytes | None = None):
    return (partition, key, row.model_dump_json().encode(), row.kafka_headers())


@pytest.fixture()
def mixed_dlq(s):
    """Good rows on both partitions (one of them bytes that are not UTF-8), a row that is not JSON, one that is
    JSON but not a bad row (without headers), and a record of a failed envelope (NOT_EVENTS)."""
    good = [bad_row(event(0), key="u0", headers={"x-app": "shop", "x-null": None}),
            bad_row(event(1)),
            bad_row(b"\xff\xfe not utf-8", Stage.decode, "invalid_json"),
            bad_row(event(3))]
    rows = [as_published(good[0], 0, b"u0"), as_published(good[1], 1, b"u1"),
            (0, None, b"this is {not json", [("cdp-error-stage", b"decode"), ("cdp-error-reason", b"invalid_json")]),
            as_published(good[2], 0),
            (1, None, b'{"hello": "world"}', None),
            as_published(bad_row(b"envelope bytes", Stage.process, "bad_envelope"), 1),
            as_published(good[3], 1, b"u3")]
    places = asyncio.run(publish(s, rows))
    return good, places


def test_stats_count_every_row_by_its_headers(s, mixed_dlq):
    assert asyncio.run(dlq_stats(s)) == {("validate", "no_identifier"): 3, ("decode", "invalid_json"): 2,
                                         ("process", "bad_envelope"): 1, ("?", "?"): 1}


def test_replay_republishes_every_good_row_skips_the_malformed_and_leaves_records(s, mixed_dlq):
    good, places = mixed_dlq
    r = asyncio.run(dlq_replay(s))
    assert (r.replayed, r.seen, r.skipped, r.records, r.error, r.stopped_at) == (4, 7, 2, 1, None, None)
    assert [(x.where, x.why) for x in r.skipped_rows] == [
        (places[2], "not JSON"),
        (places[4], "not a bad row (stage: Field required)"),
    ]
    raw = asyncio.run(read_topic(s, s.raw_topic))
    assert sorted(m.value for m in raw) == sorted(g.original_bytes() for g in good)
    by_source = {dict(m.headers)["cdp-replayed-from"].decode(): m for m in raw}
    assert sorted(by_source) == sorted([places[0], places[1], places[3], places[6]])
    first = by_source[places[0]]
    assert first.key == b"u0" and first.value == event(0)
    assert dict(first.headers)["x-app"] == b"shop" and dict(first.headers)["x-null"] is None
    assert by_source[places[3]].value == b"\xff\xfe not utf-8"


def test_replay_filters_by_header_before_reading_rows(s, mixed_dlq):
    _, places = mixed_dlq
    r = asyncio.run(dlq_replay(s, reason="invalid_json"))
    # The row that is not JSON matches and is skipped; the headerless one does not match.
    assert (r.replayed, r.seen, r.skipped, r.records) == (1, 7, 1, 0)
    assert [x.where for x in r.skipped_rows] == [places[2]]
    r = asyncio.run(dlq_replay(s, stage="validate", reason="no_identifier"))
    assert (r.replayed, r.seen, r.skipped, r.records) == (3, 7, 0, 0)


def test_the_reader_holds_one_fetch_at_a_time_and_stops_at_the_ends_it_started_with(s):
    rows = [as_published(bad_row(event(i) + b" " * 200), i % 2) for i in range(40)]
    asyncio.run(publish(s, rows))
    size = len(rows[0][2])

    async def read(max_records: int, max_fetch_bytes: int, write_while_reading: bool = False) -> list[list]:
        batches = []
        pos = ReadPosition(s.dlq_topic)
        async for batch in topic_batches(s, s.dlq_topic, pos, max_records=max_records,
                                         max_fetch_bytes=max_fetch_bytes):
            batches.append([(m.partition, m.offset) for m in batch])
            if write_while_reading and len(batches) == 1:  # rows written after reading began are not read
                await publish(s, [as_published(bad_row(event(99)), 0), as_published(bad_row(event(98)), 1)])
        assert pos.ends == pos.next_offsets == {0: 20, 1: 20}
        return batches

    # One fetch holds at most what its size allows (every record here is a record batch of its own).
    by_bytes = asyncio.run(read(max_records=1000, max_fetch_bytes=3 * size + 300))
    assert max(len(b) for b in by_bytes) <= 3 and len(by_bytes) >= 14
    by_count = asyncio.run(read(max_records=3, max_fetch_bytes=1_048_576, write_while_reading=True))
    assert max(len(b) for b in by_count) == 3 and len(by_count) == 14  # 20 per partition, in threes
    for batches in (by_count, by_bytes):
        read_rows = [r for b in batches for r in b]
        assert read_rows == [(0, o) for o in range(20)] + [(1, o) for o in range(20)]  # partition after partition


def test_replay_goes_batch_by_batch(s):
    asyncio.run(publish(s, [as_published(bad_row(event(i)), i % 2) for i in range(11)]))
    r = asyncio.run(dlq_replay(s, max_records=2))
    assert (r.replayed, r.seen, r.skipped, r.error) == (11, 11, 0, None)
    assert sorted(m.value for m in asyncio.run(read_topic(s, s.raw_topic))) == sorted(event(i) for i in range(11))


async def _raw_topic_refusing_large_messages(s: Settings) -> None:
    async with admin_client(s) as admin:
        await admin.create_topics([NewTopic(s.raw_topic, 1, 1, topic_configs={"max.message.bytes": "2000"})])


def test_a_replay_the_broker_stops_says_how_far_it_got(s):
    asyncio.run(_raw_topic_refusing_large_messages(s))
    rows = [as_published(bad_row(event(i)), 0) for i in range(4)]
    rows.append(as_published(bad_row(b'{"big": "' + b"x" * 5000 + b'"}'), 0))  # more than the raw topic takes
    rows += [as_published(bad_row(event(i)), 0) for i in range(5, 7)]
    places = asyncio.run(publish(s, rows))
    r = asyncio.run(dlq_replay(s, max_records=2))
    assert r.error is not None and "MessageSizeTooLarge" in r.error
    assert r.stopped_at == places[4]  # its batch (offsets 4 and 5) is where it stopped
    assert r.replayed == 4
    replayed = asyncio.run(read_topic(s, s.raw_topic))
    assert [m.value for m in replayed][:4] == [event(i) for i in range(4)]
