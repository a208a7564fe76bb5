"""The dead-letter topic's tools: bad rows counted by stage and reason, and replayed to the raw topic after a fix."""

from __future__ import annotations

import asyncio
from datetime import datetime

from aiokafka import AIOKafkaProducer

from config.settings import Settings
from ops.topics import read_topic
from streams.kafka import client_kwargs


async def dlq_stats(s: Settings) -> dict[tuple[str, str], int]:
    """Bad rows on the DLQ counted by (stage, reason), read from the headers without decoding the rows."""
    counts: dict[tuple[str, str], int] = {}
    for m in await read_topic(s, s.dlq_topic):
        h = dict(m.headers or ())
        k = (h.get("cdp-error-stage", b"?").decode(), h.get("cdp-error-reason", b"?").decode())
        counts[k] = counts.get(k, 0) + 1
    return counts


async def dlq_replay(s: Settings, since: datetime | None = None, reason: str | None = None,
                     stage: str | None = None) -> tuple[int, int]:
    """Publish the original bytes of matching bad rows to the raw topic again (after a rule or schema fix); rows
    that record an envelope or timers that failed (``NOT_EVENTS``) are not events and stay where they are.

    Replaying twice duplicates nothing downstream: the events keep their messageId. Returns (replayed, seen)."""
    from schemas.bad_rows import NOT_EVENTS, BadRow

    records = await read_topic(s, s.dlq_topic)
    producer = AIOKafkaProducer(**client_kwargs(s), acks="all", enable_idempotence=True, linger_ms=10)
    await producer.start()
    replayed = 0
    try:
        futures = []
        for m in records:
            h = dict(m.headers or ())
            if reason and h.get("cdp-error-reason", b"").decode() != reason:
                continue
            if stage and h.get("cdp-error-stage", b"").decode() != stage:
                continue
            row = BadRow.model_validate_json(m.value)
            if row.reason in NOT_EVENTS:  # a record of what failed, not an event
                continue
            if since and datetime.fromisoformat(row.received_at.replace("Z", "+00:00")) < since:
                continue
            headers = [(k, v.encode() if v is not None else None) for k, v in row.headers.items()
                       if not k.startswith("cdp-replayed")]
            headers.append(("cdp-replayed-from", f"{m.topic}:{m.partition}:{m.offset}".encode()))
            futures.append(await producer.send(s.raw_topic, row.original_bytes(), key=m.key, headers=headers))
            replayed += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return replayed, len(records)
