"""Kafka operations of the CLI and tools: publish a file of events as an app would, read a topic, wait until the
pipeline has processed and sunk everything on the raw topic."""

from __future__ import annotations

import asyncio
import sys
import time
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
    env_end = await end_offsets(s, s.person_events_topic)
    while not await _caught_up(s, s.app_id, s.person_events_topic, env_end):
        if time.monotonic() > deadline:
            raise TimeoutError("the person stage did not catch up")
        await asyncio.sleep(poll_s)


async def read_topic(s: Settings, topic: str) -> list[Any]:
    """Every record on a topic now, from the beginning (no consumer group: nothing is committed)."""
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

