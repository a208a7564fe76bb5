"""Envelopes: many validated events in one Kafka message on the internal person-partitioned topic.

Faust's cost is per Kafka message delivered through a stream (docs/performance.md); carrying a whole batch of a
partition's events in one message pays it once per batch instead of once per event. An envelope also carries the
ingest's event-time watermark, so timers downstream fire at their deadlines even when no event arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

ENVELOPE_VERSION = 1
# Stay well under Kafka's default 1 MB message limit.
MAX_ENVELOPE_BYTES = 700_000


@dataclass(frozen=True, slots=True)
class Entry:
    """One validated event as it travels: person key, event time, receive time, where it came from, the event."""

    pk: str
    ts: int
    rcv: int
    src: tuple[int, int]  # raw partition, raw offset
    event: dict[str, Any]
    flags: tuple[str, ...] = ()  # e.g. future_timestamp: the event's own time was not trusted


@dataclass(frozen=True, slots=True)
class Envelope:
    source: str  # which ingest instance sent it (watermarks are tracked per source)
    watermark: int  # event time (ms) before which this source will send nothing more
    entries: tuple[Entry, ...]
    # The sender had caught up with its input (or this is a heartbeat): the receiver should not hold these
    # events back to batch them with later ones (core.batching). Envelopes without the field flush.
    flush: bool = True


def encode_entry(pk: str, ts: int, rcv: int, raw_partition: int, raw_offset: int,
                 event: dict[str, Any] | bytes, flags: list[str] | None = None) -> bytes:
    """One entry; ``event`` is the event's dict, or its JSON already encoded."""
    e = orjson.Fragment(event) if isinstance(event, bytes) else event
    d = {"pk": pk, "ts": ts, "rcv": rcv, "src": (raw_partition, raw_offset), "e": e}
    if flags:
        d["flags"] = flags
    return orjson.dumps(d)


def encode_envelopes(source: str, watermark: int, entries: list[bytes], flush: bool = True) -> list[bytes]:
    """Pack encoded entries into as few envelopes as fit the size limit (an empty list gives one heartbeat).
    Only the last envelope carries ``flush``: the ones before it are followed at once by the rest."""
    head = orjson.dumps({"v": ENVELOPE_VERSION, "src": source, "wm": watermark})[:-1]
    held, last = head + b',"fl":false,"events":[', head + (b',"fl":true,"events":[' if flush
                                                         else b',"fl":false,"events":[')
    out: list[bytes] = []
    chunk: list[bytes] = []
    size = len(held)
    for e in entries:
        if chunk and size + len(e) + 1 > MAX_ENVELOPE_BYTES:
            out.append(held + b",".join(chunk) + b"]}")
            chunk, size = [], len(held)
        chunk.append(e)
        size += len(e) + 1
    if chunk or not out:
        out.append(last + b",".join(chunk) + b"]}")
    return out


def decode_envelope(raw: bytes) -> Envelope:
    d = orjson.loads(raw)
    if d.get("v") != ENVELOPE_VERSION:
        raise ValueError(f"unknown envelope version {d.get('v')!r}")
    return Envelope(
        source=d["src"],
        watermark=int(d["wm"]),
        entries=tuple(Entry(e["pk"], e["ts"], e["rcv"], tuple(e["src"]), e["e"], tuple(e.get("flags", ())))
                      for e in d["events"]),
        flush=d.get("fl", True),
    )
