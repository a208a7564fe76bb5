"""Kafka operations of the CLI and tools: publish a file of events as an app would, read a topic, wait until the
pipeline has processed and sunk everything on the raw topic."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from config.settings import Settings
from core import exact_json
from core.collect import record_key
from streams.kafka import admin_client, client_kwargs, ensure_topics, topic_partitions


def _key_of(line: bytes) -> bytes | None:
    try:
        return record_key(exact_json.loads(line))
    except ValueError:  # not JSON: published as it is, for the DLQ to report
        return None


async def publish_lines(s: Settings, lines: list[bytes], topic: str | None = None) -> int:
    """Publish raw lines as they are (bad ones too: that is what the DLQ is for), keyed by the person's id."""
    await ensure_topics(s)
    producer = AIOKafkaProducer(**client_kwargs(s), acks="all", linger_ms=20, max_batch_size=512 * 1024,
                                enable_idempotence=True)
    await producer.start()
    try:
        pending = []
        for line in lines:
            pending.append(await producer.send(topic or s.raw_topic, line, key=_key_of(line)))
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(lines)


def read_lines(path: str) -> list[bytes]:
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    return [ln for ln in data.splitlines() if ln.strip()]


async def end_offsets(s: Settings, topic: str) -> dict[int, int]:
    c = AIOKafkaConsumer(**client_kwargs(s))
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(c, topic)]
        ends = await c.end_offsets(tps) if tps else {}
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await c.stop()


async def committed_offsets(s: Settings, group: str, topic: str) -> dict[int, int]:
    async with admin_client(s) as admin:
        got = await admin.list_consumer_group_offsets(group)
        return {tp.partition: meta.offset for tp, meta in got.items() if tp.topic == topic and meta.offset >= 0}


async def _caught_up(s: Settings, group: str, topic: str, target: dict[int, int]) -> bool:
    done = await committed_offsets(s, group, topic)
    return all(done.get(p, 0) >= off for p, off in target.items() if off > 0)


async def wait_processed(s: Settings, timeout_s: float = 600.0, poll_s: float = 0.25) -> None:
    """Return when everything on the raw topic now has been ingested, and every envelope that came of it (and
    the heartbeats after it, which fire due timers) has been processed, sunk and committed."""
    deadline = time.monotonic() + timeout_s
    raw_end = await end_offsets(s, s.raw_topic)
    while not await _caught_up(s, s.ingest_group, s.raw_topic, raw_end):
        if time.monotonic() > deadline:
            raise TimeoutError("ingest did not catch up with the raw topic")
        await asyncio.sleep(poll_s)
    # Two heartbeats after catching up carry a watermark that has moved past everything read.
    await asyncio.sleep(2 * s.heartbeat_s + 0.2)
    # The link writer's input (events the ingest could not resolve), then the person stage's: the link writer
    # writes to it, and so does the person stage itself (a merge's absorb, events of a merged-away OneID sent on
    # to the survivor): three rounds cover a merge's two hops after the link writer's.
    id_end = await end_offsets(s, s.identity_topic)
    while not await _caught_up(s, s.app_id, s.identity_topic, id_end):
        if time.monotonic() > deadline:
            raise TimeoutError("the link writer did not catch up")
        await asyncio.sleep(poll_s)
    for _ in range(3):
        env_end = await end_offsets(s, s.person_events_topic)
        while not await _caught_up(s, s.app_id, s.person_events_topic, env_end):
            if time.monotonic() > deadline:
                raise TimeoutError("the person stage did not catch up")
            await asyncio.sleep(poll_s)


async def read_topic(s: Settings, topic: str) -> list[Any]:
    """Every record on a topic now, from the beginning (no consumer group: nothing is committed), all in memory:
    for small topics (tests); ``topic_batches`` reads one of any size."""
    c = AIOKafkaConsumer(**client_kwargs(s), enable_auto_commit=False)
    await c.start()
    out: list[Any] = []
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(c, topic)]
        if not tps:
            return out
        ends = await c.end_offsets(tps)
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        todo = {tp for tp in tps if ends[tp] > 0}
        while todo:
            for tp, msgs in (await c.getmany(*todo, timeout_ms=1000)).items():
                out.extend(m for m in msgs if m.offset < ends[tp])
                if await c.position(tp) >= ends[tp]:
                    todo.discard(tp)
        return out
    finally:
        await c.stop()



@dataclass
class ReadPosition:
    """How far a ``topic_batches`` reader got: per partition, the offset after the last record yielded."""

    topic: str
    ends: dict[int, int] = field(default_factory=dict)  # the end offsets taken when reading started
    next_offsets: dict[int, int] = field(default_factory=dict)

    def where(self, partition: int, offset: int) -> str:
        return f"{self.topic}:{partition}:{offset}"


async def topic_batches(s: Settings, topic: str, position: ReadPosition | None = None, *, max_records: int = 500,
                        max_fetch_bytes: int = 1_048_576, idle_timeout_s: float = 30.0
                        ) -> AsyncGenerator[list[Any], None]:
    """A topic's records from the beginning up to its end offsets when reading starts, one fetched batch at a
    time (at most ``max_records``), partition after partition: the caller handles a batch before the next one is
    fetched, so a topic of any size is read in the memory of one fetch (``max_fetch_bytes``, or one record batch
    if larger; aiokafka does not prefetch a partition whose records are still held). No consumer group: nothing
    is committed. ``position``, when given, is kept up to date (for saying how far a failed run got). Raises
    ``TimeoutError`` naming the partition and offset when a partition gives nothing for ``idle_timeout_s``."""
    pos = position if position is not None else ReadPosition(topic)
    c = AIOKafkaConsumer(**client_kwargs(s), enable_auto_commit=False, auto_offset_reset="earliest",
                         max_partition_fetch_bytes=max_fetch_bytes, fetch_max_bytes=max_fetch_bytes)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(c, topic)]
        if not tps:
            return
        ends = await c.end_offsets(tps)
        starts = await c.beginning_offsets(tps)
        pos.ends = {tp.partition: ends[tp] for tp in tps}
        pos.next_offsets = {tp.partition: starts[tp] for tp in tps}
        for tp in tps:
            end = ends[tp]
            if starts[tp] >= end:
                continue
            c.assign([tp])
            c.seek(tp, starts[tp])
            idle_since = time.monotonic()
            while pos.next_offsets[tp.partition] < end:
                got = (await c.getmany(tp, timeout_ms=1000, max_records=max_records)).get(tp, [])
                msgs = [m for m in got if m.offset < end]
                # The position also moves past what is no record (transaction markers, compacted gaps).
                now_at = min(await c.position(tp), end)
                if now_at > pos.next_offsets[tp.partition]:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > idle_timeout_s:
                    raise TimeoutError(f"nothing read from {pos.where(tp.partition, now_at)} in {idle_timeout_s:g} s"
                                       f" (the partition ends at {end})")
                if msgs:
                    yield msgs
                pos.next_offsets[tp.partition] = now_at
    finally:
        await c.stop()
