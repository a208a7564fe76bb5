"""Ingest stage (pure): raw Kafka records in, envelopes per person partition and bad rows out.

Every record ends as exactly one of: an entry in an envelope (ok) or a bad row (dead-lettered). Nothing raises.
Each event's identifiers are read by the identity rules and hashed (``core.identifiers``); ``resolve`` (the
directory replica's lookup) names the person when it knows every one of them: the entry goes to that OneID's
partition. Any other entry is unresolved (key ``UNRESOLVED``), for the link writer (docs/identity.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from core.clock import iso
from core.envelope import EncodedEntry, encode_entry
from core.exact_json import with_exact_integers
from core.identifiers import event_identifiers
from core.ids import partition_for
from core.normalize import clean_event
from rules.loader import RuleSet
from schemas.bad_rows import BadRow, Stage
from schemas.events import event_dict_from_json, field_errors


class RecordLike(Protocol):
    """What the stage reads of a Kafka record, whose topic and partition its batch is keyed by (aiokafka's record
    batches' records have these, as do its ConsumerRecord and ``RawRecord``)."""

    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...


class RawRecordLike(RecordLike, Protocol):
    """A record that names its topic and partition (aiokafka's ConsumerRecord; ``RawRecord``)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    timestamp: int  # Kafka's record timestamp (ms): when the producer or broker received it
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()


# The key of ``IngestResult.entries`` of the entries whose person is not known yet (the link writer's input).
UNRESOLVED = -1
# The hashes of an event's identifiers -> the OneID of the one person they all belong to, or None.
Resolve = Callable[[Sequence[str]], str | None]


@dataclass(slots=True)
class IngestResult:
    # target partition (UNRESOLVED: to the link writer) -> encoded entries, in input order
    entries: dict[int, list[EncodedEntry]] = field(default_factory=dict)
    bad_rows: list[tuple[bytes | None, BadRow]] = field(default_factory=list)
    ok: int = 0
    # Greatest event time seen per raw partition, never later than now (a device clock in the future must not
    # move event time on).
    max_event_ts: dict[int, int] = field(default_factory=dict)
    # Identifiers dropped as empty, placeholder, malformed or blocked, by type (the events were kept).
    dropped_identifiers: Counter[str] = field(default_factory=Counter)
    # Events whose own time was not trusted, by flag: future_timestamp (too far ahead), past_timestamp (before 1970:
    # a sentAt far ahead of their timestamp).
    flagged: Counter[str] = field(default_factory=Counter)


def _bad(topic: str, partition: int, rec: RecordLike, stage: Stage, reason: str, errors: list[dict],
         now_ms: int) -> tuple[bytes | None, BadRow]:
    try:
        key = rec.key.decode("utf-8", "replace") if rec.key is not None else None
        headers = {k: v.decode("utf-8", "replace") if v is not None else None for k, v in (rec.headers or ())}
    except Exception:  # a key or headers not as Kafka's client gives them: the bad row without, never a stop
        key, headers = None, {}
    return rec.key, BadRow.of(rec.value or b"", stage, reason, errors, iso(now_ms), key=key, headers=headers,
                              source={"topic": topic, "partition": partition, "offset": rec.offset})


def epoch_ms(t: datetime) -> int:
    """An aware time as whole milliseconds since the epoch, rounded down, exactly (1970 to 2200 checked against
    integer arithmetic). ``int(t.timestamp() * 1000)`` was a millisecond short for about 1 time in 100,000 (the
    product a hair under the integer), and truncated toward zero before 1970."""
    return round(t.timestamp() * 1e6) // 1000


def event_time(timestamp: datetime | None, sent_at: datetime | None, received_ms: int) -> int:
    """Event time in ms. With ``sentAt``, the device clock's skew is removed as Segment does:
    ``timestamp + (receivedAt - sentAt)``; without a timestamp, the receive time. ``receivedAt`` is the event's
    own (set by the collector that first took it) or else the Kafka record's time."""
    if timestamp is None:
        return received_ms
    ts = epoch_ms(timestamp)
    if sent_at is not None:
        ts += received_ms - epoch_ms(sent_at)
    return ts


def ingest_records(records: Sequence[RawRecordLike], rules: RuleSet, partitions: int, now_ms: int,
                   max_future_ms: int = 86_400_000, resolve: Resolve | None = None, salt: str = "") -> IngestResult:
    """``ingest_batches`` of records that name their own topic and partition (each partition's in order)."""
    batches: dict[tuple[str, int], list[RawRecordLike]] = {}
    for rec in records:
        tp = (rec.topic, rec.partition)
        got = batches.get(tp)
        if got is None:
            batches[tp] = [rec]
        else:
            got.append(rec)
    return ingest_batches(batches, rules, partitions, now_ms, max_future_ms, resolve, salt)


def ingest_batches(batches: Mapping[tuple[str, int], Sequence[RecordLike]], rules: RuleSet, partitions: int,
                   now_ms: int, max_future_ms: int = 86_400_000, resolve: Resolve | None = None,
                   salt: str = "") -> IngestResult:
    """Records read from Kafka, per (topic, partition) in offset order (as ``getmany`` returns them), validated and
    encoded into envelope entries per person partition, or dead-lettered. ``resolve(hashes)`` gives the OneID of
    an event's identifiers when they are all known and one person (else None: the entry is ``UNRESOLVED``, as
    every entry is without ``resolve``); ``salt`` is ``CDP_PII_SALT``, which identifiers are hashed with."""
    res = IngestResult()
    for (topic, partition), records in batches.items():
        _ingest_partition(res, topic, partition, records, rules, partitions, now_ms, max_future_ms, resolve, salt)
    return res


def _ingest_partition(res: IngestResult, topic: str, raw_partition: int, records: Sequence[RecordLike],
                      rules: RuleSet, partitions: int, now_ms: int, max_future_ms: int, resolve: Resolve | None,
                      salt: str) -> None:
    aliases = rules.aliases
    identity = rules.identity
    dropped = res.dropped_identifiers
    by_partition = res.entries
    max_event_ts = res.max_event_ts
    horizon = now_ms + max_future_ms
    ok = 0
    wm_max = max_event_ts.get(raw_partition, 0)
    for rec in records:
        if not rec.value:
            res.bad_rows.append(_bad(topic, raw_partition, rec, Stage.decode, "empty", [], now_ms))
            continue
        d = _validate(topic, raw_partition, rec, now_ms, res)
        if d is None:
            continue
        try:
            name = d.get("event")
            if name is not None and name in aliases:
                d["event"] = aliases[name]
            clean_event(d, identity, dropped)
            ids, more_ids = event_identifiers(d, identity, salt, dropped)
            # Also one the schema requires (a userId, anonymousId or identities) must be left: the event is then
            # still one an app may send, as a dead-letter replay sends it again.
            if not (ids and ("user_id" in d or "anonymous_id" in d or "identities" in d)):
                res.bad_rows.append(_bad(topic, raw_partition, rec, Stage.validate, "no_identifier", [
                    {"field": "userId", "error": "no usable identifier: every id was empty, a placeholder or blocked"}
                ], now_ms))
                continue
            if "previous_id" not in d and d.get("type") == "alias":
                # Valid as sent, but its previousId was a placeholder or blocked: nothing is left to alias.
                res.bad_rows.append(_bad(topic, raw_partition, rec, Stage.validate, "no_identifier", [
                    {"field": "previousId", "error": "an alias call's previousId was empty, a placeholder or blocked"}
                ], now_ms))
                continue
            received = d.get("received_at")
            taken = rec.timestamp or 0  # when the producer or broker stamped the record (producers set it)
            rcv = epoch_ms(received) if received is not None else taken
            if not 0 < rcv <= horizon:
                # The event's receivedAt (or the record's time) is not believable: the record's time, or now.
                rcv = taken if 0 < taken <= horizon else now_ms
            ts = event_time(d.get("timestamp"), d.get("sent_at"), rcv)
            # Not trusted, and kept at receive time: a device clock far ahead would fire timers and skew funnels; one
            # before 1970 (a sentAt far ahead of the timestamp makes one) can be neither stored nor written as a date.
            flags = None
            if ts > horizon:
                flags, ts = ["future_timestamp"], rcv
            elif ts < 0:
                flags, ts = ["past_timestamp"], rcv
            oneid = resolve([i[1] for i in ids]) if resolve is not None else None
            if oneid:
                pk, target = oneid, partition_for(oneid, partitions)
            else:
                pk, target = "", UNRESOLVED
            try:
                entry = encode_entry(pk, ts, rcv, raw_partition, rec.offset, d, flags, ids, more_ids)
            except TypeError:
                # An integer past 64 bits, which JSON allows and orjson does not write: carried with its digits.
                entry = encode_entry(pk, ts, rcv, raw_partition, rec.offset, with_exact_integers(d), flags, ids,
                                     more_ids)
        except Exception as exc:
            # Valid by the schema, but a step after it failed (nothing known does): dead-lettered, never a stopped
            # partition.
            res.bad_rows.append(_bad(topic, raw_partition, rec, Stage.process, "unprocessable",
                                     [{"field": "$", "error": repr(exc)}], now_ms))
            continue
        if flags:
            res.flagged[flags[0]] += 1
        part_entries = by_partition.get(target)
        if part_entries is None:
            by_partition[target] = [entry]
        else:
            part_entries.append(entry)
        ok += 1
        wm_ts = ts if ts < now_ms else now_ms
        if wm_ts > wm_max:
            wm_max = wm_ts
    if wm_max:
        max_event_ts[raw_partition] = wm_max
    res.ok += ok


def _validate(topic: str, partition: int, rec: RecordLike, now_ms: int, res: IngestResult) -> dict[str, Any] | None:
    """The event as the pipeline carries it (``pipeline_dict``), or None when rejected: then it is a bad row."""
    try:
        return event_dict_from_json(rec.value or b"")
    except ValidationError as exc:
        errs = field_errors(exc)
        if any(e["type"] in ("json_invalid", "model_type") for e in errs):
            res.bad_rows.append(_bad(topic, partition, rec, Stage.decode, "invalid_json", errs, now_ms))
        else:
            res.bad_rows.append(_bad(topic, partition, rec, Stage.validate, "schema", errs, now_ms))
        return None
    except Exception as exc:  # one bad event never stops a partition
        res.bad_rows.append(_bad(topic, partition, rec, Stage.validate, "unexpected",
                                 [{"field": "$", "error": repr(exc)}], now_ms))
        return None


def watermark(max_event_ts: int | None, caught_up: bool, now_ms: int, lateness_ms: int) -> int:
    """Event time before which this partition will (within the allowed lateness) deliver nothing more.

    While a backlog is read, time moves with the events read; once caught up, with the clock.
    """
    base = now_ms if caught_up else (max_event_ts if max_event_ts is not None else 0)
    return max(0, base - lateness_ms)
