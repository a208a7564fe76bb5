"""The dead-letter topic's tools: bad rows counted by stage and reason, and replayed to the raw topic after a fix.

Both read the topic one fetched batch at a time (``ops.topics.topic_batches``), up to its end when they start, so
a DLQ of any size fits in the memory of one fetch; a replay sends a batch and waits for its acknowledgements
before reading the next."""

from __future__ import annotations

import asyncio
import binascii
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from config.settings import Settings
from ops.topics import ReadPosition, topic_batches
from schemas.bad_rows import NOT_EVENTS, REASON_HEADER, STAGE_HEADER, BadRow
from streams.kafka import client_kwargs

SKIPPED_LISTED = 100  # unreadable rows reported by place; past that only counted (a DLQ can be all junk)


def _header(headers: Any, name: str) -> str | None:
    """A header's value as text; None when absent, null or not text (a row someone else wrote)."""
    for k, v in headers or ():
        if k == name:
            try:
                return v.decode() if v is not None else None
            except UnicodeDecodeError:
                return None
    return None


async def dlq_stats(s: Settings, *, max_records: int = 500, max_fetch_bytes: int = 1_048_576
                    ) -> dict[tuple[str, str], int]:
    """Bad rows on the DLQ counted by (stage, reason), read from the headers without decoding the rows; a row
    without them counts under ``?``."""
    counts: dict[tuple[str, str], int] = {}
    async with aclosing(topic_batches(s, s.dlq_topic, max_records=max_records,
                                      max_fetch_bytes=max_fetch_bytes)) as batches:
        async for batch in batches:
            for m in batch:
                k = (_header(m.headers, STAGE_HEADER) or "?", _header(m.headers, REASON_HEADER) or "?")
                counts[k] = counts.get(k, 0) + 1
    return counts


@dataclass
class Skipped:
    """A row on the DLQ that could not be read as a bad row: where it is (topic:partition:offset) and why."""

    where: str
    why: str


@dataclass
class ReplayResult:
    replayed: int = 0  # sent to the raw topic and acknowledged
    seen: int = 0  # rows read from the DLQ
    skipped: int = 0  # matching rows that could not be read as bad rows
    skipped_rows: list[Skipped] = field(default_factory=list)  # the first SKIPPED_LISTED of them
    records: int = 0  # matching rows that record a failure (NOT_EVENTS), left where they are
    error: str | None = None  # why the replay stopped before the end
    stopped_at: str | None = None  # topic:partition:offset from which rows were not (or not surely) replayed


def _utc(d: datetime) -> datetime:
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def _why_unreadable(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        errs = exc.errors()
        if errs and errs[0]["type"] == "json_invalid":
            return "not JSON"
        loc = ".".join(str(x) for x in errs[0]["loc"]) if errs and errs[0]["loc"] else "row"
        return f"not a bad row ({loc}: {errs[0]['msg'] if errs else exc})"
    return f"not a bad row ({exc})"


async def dlq_replay(s: Settings, since: datetime | None = None, reason: str | None = None,
                     stage: str | None = None, *, max_records: int = 500,
                     max_fetch_bytes: int = 1_048_576) -> ReplayResult:
    """Publish the original bytes of matching bad rows to the raw topic again (after a rule or schema fix); rows
    that record an envelope or timers that failed (``NOT_EVENTS``) are not events and stay where they are, and a
    row that cannot be read as a bad row is skipped and reported by its place, the rest replayed.

    Replaying twice duplicates nothing downstream: the events keep their messageId. A broker failure ends the
    replay with ``error`` and ``stopped_at`` set: everything before that place was replayed and acknowledged;
    running the replay again is safe."""
    res = _Replay(ReplayResult())
    pos = ReadPosition(s.dlq_topic)
    producer = AIOKafkaProducer(**client_kwargs(s), acks="all", enable_idempotence=True, linger_ms=10)
    try:
        await producer.start()
        async with aclosing(topic_batches(s, s.dlq_topic, pos, max_records=max_records,
                                          max_fetch_bytes=max_fetch_bytes)) as batches:
            async for batch in batches:
                res.at = pos.where(batch[0].partition, batch[0].offset)
                futures = [await producer.send(s.raw_topic, value, key=key, headers=headers)
                           for key, value, headers in res.matching(batch, since, reason, stage)]
                await asyncio.gather(*futures)
                res.result.replayed += len(futures)
                res.at = None
    except (KafkaError, OSError, TimeoutError) as exc:  # the broker, or the way to it
        text, kind = str(exc), type(exc).__name__
        res.result.error = text if kind in text else f"{kind}: {text}" if text else kind
        res.result.stopped_at = res.at or _first_unread(pos)
    finally:
        await producer.stop()
    return res.result


def _first_unread(pos: ReadPosition) -> str | None:
    """Where reading stopped, when it stopped between batches (None: before reading anything)."""
    for p, end in sorted(pos.ends.items()):
        at = pos.next_offsets.get(p, 0)
        if at < end:
            return pos.where(p, at)
    return None


class _Replay:
    """The replay's decisions per row (pure of I/O), and where it is."""

    def __init__(self, result: ReplayResult):
        self.result = result
        self.at: str | None = None

    def matching(self, batch: list[Any], since: datetime | None, reason: str | None, stage: str | None
                 ) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes | None]]]]:
        """(key, value, headers) to publish for each row of the batch that matches and is an event."""
        out = []
        for m in batch:
            self.result.seen += 1
            if reason and _header(m.headers, REASON_HEADER) != reason:
                continue
            if stage and _header(m.headers, STAGE_HEADER) != stage:
                continue
            where = f"{m.topic}:{m.partition}:{m.offset}"
            try:
                row = BadRow.model_validate_json(m.value if m.value is not None else b"")
                if row.reason in NOT_EVENTS:  # a record of what failed, not an event
                    self.result.records += 1
                    continue
                if since and _utc(datetime.fromisoformat(row.received_at.replace("Z", "+00:00"))) < _utc(since):
                    continue
                value = row.original_bytes()
            except (ValueError, binascii.Error) as exc:  # ValidationError is a ValueError
                self.result.skipped += 1
                if len(self.result.skipped_rows) < SKIPPED_LISTED:
                    self.result.skipped_rows.append(Skipped(where, _why_unreadable(exc)))
                continue
            headers = [(k, v.encode() if v is not None else None) for k, v in row.headers.items()
                       if not k.startswith("cdp-replayed")]
            headers.append(("cdp-replayed-from", where.encode()))
            out.append((m.key, value, headers))
        return out
