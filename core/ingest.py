"""Ingest stage (pure): raw Kafka records in, envelopes per person partition and bad rows out.

Every record ends as exactly one of: an entry in an envelope (ok) or a bad row (dead-lettered). Nothing raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from pydantic import ValidationError

from core.envelope import encode_entry
from core.ids import partition_for, person_key
from rules.loader import RuleSet
from schemas.bad_rows import BadRow, Stage
from schemas.events import Event, field_errors, pipeline_dict


class RawRecordLike(Protocol):
    """What the stage reads of a Kafka record (aiokafka's ConsumerRecord has these; so does ``RawRecord``)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    timestamp: int  # Kafka's record timestamp (ms): when the producer or broker received it
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class IngestResult:
    # target partition -> encoded entries, in input order
    entries: dict[int, list[bytes]] = field(default_factory=dict)
    bad_rows: list[tuple[bytes | None, BadRow]] = field(default_factory=list)
    ok: int = 0
    # Greatest event time seen per raw partition, never later than now (a device clock in the future must not
    # move event time on).
    max_event_ts: dict[int, int] = field(default_factory=dict)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _bad(rec: RawRecordLike, stage: Stage, reason: str, errors: list[dict], now_ms: int) -> tuple[bytes | None, BadRow]:
    payload, enc = BadRow.encode_payload(rec.value or b"")
    key = rec.key.decode("utf-8", "replace") if rec.key is not None else None
    row = BadRow(stage=stage, reason=reason, errors=errors, payload=payload, payload_encoding=enc, key=key,
                 source={"topic": rec.topic, "partition": rec.partition, "offset": rec.offset},
                 received_at=_iso(now_ms))
    return rec.key, row


def ingest_records(records: Sequence[RawRecordLike], rules: RuleSet, partitions: int, now_ms: int) -> IngestResult:
    res = IngestResult()
    aliases = rules.aliases
    for rec in records:
        if not rec.value:
            res.bad_rows.append(_bad(rec, Stage.decode, "empty", [], now_ms))
            continue
        try:
            ev = Event.model_validate_json(rec.value)
        except ValidationError as exc:
            errs = field_errors(exc)
            if any(e["type"] in ("json_invalid", "model_type") for e in errs):
                res.bad_rows.append(_bad(rec, Stage.decode, "invalid_json", errs, now_ms))
            else:
                res.bad_rows.append(_bad(rec, Stage.validate, "schema", errs, now_ms))
            continue
        except Exception as exc:
            res.bad_rows.append(_bad(rec, Stage.validate, "unexpected", [{"field": "$", "error": repr(exc)}], now_ms))
            continue
        if ev.event is not None and ev.event in aliases:
            ev.event = aliases[ev.event]
        pk = person_key(ev.user_id, ev.anonymous_id, ev.identities)
        if pk is None:  # the model guarantees one; kept as a guard
            res.bad_rows.append(_bad(rec, Stage.validate, "no_identifier", [], now_ms))
            continue
        rcv = rec.timestamp or now_ms
        ts = int(ev.timestamp.timestamp() * 1000) if ev.timestamp is not None else rcv
        target = partition_for(pk, partitions)
        res.entries.setdefault(target, []).append(
            encode_entry(pk, ts, rcv, rec.partition, rec.offset, pipeline_dict(ev))
        )
        res.ok += 1
        wm_ts = min(ts, now_ms)
        if wm_ts > res.max_event_ts.get(rec.partition, 0):
            res.max_event_ts[rec.partition] = wm_ts
    return res


def watermark(max_event_ts: int | None, caught_up: bool, now_ms: int, lateness_ms: int) -> int:
    """Event time before which this partition will (within the allowed lateness) deliver nothing more.

    While a backlog is read, time moves with the events read; once caught up, with the clock.
    """
    base = now_ms if caught_up else (max_event_ts if max_event_ts is not None else 0)
    return max(0, base - lateness_ms)
