"""Envelopes: many validated events in one Kafka message on the internal person-partitioned topic.

Faust's cost is per Kafka message delivered through a stream (docs/performance.md); carrying a whole batch of a
partition's events in one message pays it once per batch instead of once per event. An envelope also carries the
ingest's event-time watermark, so timers downstream fire at their deadlines even when no event arrives.

The person stage is the narrowest point for scaling (one process per partition), so the ingest does for it
nearly all that needs no person state; the messageId's digest is left to the person stage, because on one
machine the ingest is the stage that sets the pace (docs/performance.md). The envelope is laid out so the person
stage decodes only what it reads:

    {"v":6,"src":...,"wm":...,"fl":true,"n":N}      header line
    [[pk, ts, rcv, raw_partition, raw_offset, message_id, name, needs_body, flags, ids, user_id, anonymous_id],
     ...]                                             every meta
    then per event:
    {...}                                             the validated event (decoded only when read), or an
                                                      empty line when the row says all the stage needs
    [...]                                             its ClickHouse row, PII masked, all but the OneID
                                                      (core.rows.EVENT_ROW_COLUMNS after the first)

``pk`` is the person's OneID, or "" when the ingest could not resolve it (the link writer resolves it and sends
the entry on, re-keyed by ``Entry.encoded`` without decoding its body). ``ids`` is every identifier of the event
as ``[type, hash, masked]`` (``core.identifiers``), in priority order: no raw identifier in the meta but the two
below.

The whole event travels only when it holds what the row does not: identifiers other than its userId and
anonymousId (``identities``, or read from ``traits``, ``context``, ...), traits (the person stage keeps contacts
from them), an alias call's previousId, or a flag about it (an untrusted timestamp, kept as the app sent it). For
any other event the row has it all (type, name, properties, campaign), so ``Entry.event`` is rebuilt from the
row: most events are then never encoded twice, nor carried twice, nor decoded in the person stage at all. Such an
event's only identifiers are its userId and anonymousId, which the row holds masked only: the meta carries them
raw (``user_id``, ``anonymous_id``; 0 when the body travels), so ``entry_event`` rebuilds the event an app sent.

Older layouts are still read, as the envelopes written before an upgrade are on the topic when the new person
stage starts: their ``pk`` is the ``type:value`` person key they carry (an opaque key here, as before), and their
``ids`` are derived from the identifiers they hold (the key's, version 5's anonymousId, and the userId,
anonymousId and ``identities`` of an event whose body travels), hashed with the salt the reader passes
(``decode_envelope(raw, salt)``: the deployment's ``CDP_PII_SALT``; "" if not given), ordered by the default
types' priorities (``_PRE_V6_PRIORITY``).

Lines are JSON as orjson writes it, which never contains a raw newline, so splitting on newlines is exact.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import orjson

from core import exact_json
from core.clock import iso
from core.identifiers import Ident
from core.ids import identifier_hash, mask
from core.rows import EVENT_ROW_COLUMNS, event_row_body

# 6: metas with every identifier hashed, the OneID (or "") as pk, and a bodiless event's raw userId and
# anonymousId (5: a type:value person key and the anonymousId it does not name; 4: without that anonymousId; 3:
# with the messageId digest, which the person stage computes; 2: rows as objects with named fields: ``_rows_v2``;
# 1: one JSON document; all still read).
ENVELOPE_VERSION = 6
# Identifier types in the order the layouts before 6 named a person by (their ids are sorted by it, then by hash).
_PRE_V6_PRIORITY = {t: i for i, t in enumerate(("user_id", "crm_id", "phone", "email", "wechat_unionid",
                                                 "miniapp_openid", "wechat_openid", "device_id", "anonymous_id"))}
# Stay well under Kafka's default 1 MB message limit.
MAX_ENVELOPE_BYTES = 700_000


def event_name(ev: dict[str, Any]) -> str:
    """What rules and funnels call an event: a track call's name, else its type (page, identify, ...)."""
    t = ev.get("type", "track")
    return (ev.get("event") or t) if t == "track" else t


_blake2b = hashlib.blake2b


def message_digest(message_id: str) -> str:
    """Short, fixed-size form of a messageId for the per-person de-duplication set."""
    return _blake2b(message_id.encode(), digest_size=8).hexdigest()


def _meta_fields(ev: dict[str, Any], more_ids: bool) -> tuple[str, str, bool]:
    """What an envelope's meta says of an event: messageId, the event name, and whether the event holds what its
    row does not (identifiers beyond its userId and anonymousId, traits, an alias call's previousId)."""
    return ev["message_id"], event_name(ev), more_ids or bool(ev.get("identities") or ev.get("traits")
                                                               or ev.get("previous_id"))


class Entry:
    """One validated event as it travels: its person's OneID ("" while unresolved), event time, receive time,
    where it came from, what the person stage reads without decoding the event (id, digest, name, identifiers),
    the event itself (decoded on first read) and its ClickHouse row less the OneID (built on first read when the
    entry was made from a dict)."""

    __slots__ = ("_body", "_event", "_ids", "_row", "anonymous_id", "digest", "flags", "message_id", "name",
                 "needs_body", "pk", "rcv", "src", "ts", "user_id")

    def __init__(self, pk: str, ts: int, rcv: int, src: tuple[int, int], message_id: str, digest: str, name: str,
                 needs_body: bool, flags: tuple[str, ...], ids: Any, user_id: str, anonymous_id: str,
                 event: dict[str, Any] | None, body: bytes | None, row: bytes | None):
        # Every field given: this runs for every event the person stage reads (``of_event`` builds one from a dict).
        self.pk = pk
        self.ts = ts
        self.rcv = rcv
        self.src = src
        self.message_id = message_id
        self.digest = digest
        self.name = name
        self.needs_body = needs_body
        self.flags = flags  # e.g. future_timestamp: the event's own time was not trusted
        # As decoded (lists) or given (tuples); ``ids`` makes them tuples when first read.
        self._ids = ids
        # The raw userId and anonymousId of an event whose body does not travel (the row holds them masked only):
        # read where the event is rebuilt from the row. "" if none, and in an entry whose body travels (it has them).
        self.user_id = user_id
        self.anonymous_id = anonymous_id
        self._event = event
        self._body = body
        self._row = row

    @staticmethod
    def of_event(pk: str, ts: int, rcv: int, src: tuple[int, int], event: dict[str, Any],
                 flags: tuple[str, ...] = (), ids: tuple[Ident, ...] = (), more_ids: bool = False) -> Entry:
        """An entry made from a validated event's dict (tests, tools, first-layout envelopes); ``more_ids``: some
        of ``ids`` were read from outside its userId and anonymousId (``core.identifiers.event_identifiers``)."""
        mid, name, needs_body = _meta_fields(event, more_ids)
        uid, anon = ("", "") if needs_body or flags else _top_ids(event)
        return Entry(pk, ts, rcv, src, mid, message_digest(mid), name, needs_body, flags, ids, uid, anon, event,
                     None, None)

    @property
    def ids(self) -> tuple[Ident, ...]:
        """Every identifier of the event, ``(type, hash, masked)``, in priority order."""
        ids = self._ids
        if not isinstance(ids, tuple):
            ids = self._ids = tuple([(i[0], i[1], i[2]) for i in ids])
        return ids

    def encoded(self, pk: str) -> EncodedEntry:
        """The entry's three lines again, keyed by ``pk`` (the link writer re-keys resolved entries): its body and
        row as they came, never decoded."""
        body = self._body
        if body is None:  # made from a dict
            body = orjson.dumps(self._event) if self.needs_body or self.flags else b""
        meta = orjson.dumps([pk, self.ts, self.rcv, self.src[0], self.src[1], self.message_id, self.name,
                             self.needs_body, self.flags or 0, self._ids, self.user_id or 0, self.anonymous_id or 0])
        return meta, body, self.row

    @property
    def event(self) -> dict[str, Any]:
        if self._event is None:
            self._event = orjson.loads(self._body) if self._body else _event_from_row(self.row)
        return self._event

    @property
    def row(self) -> bytes:
        """The ClickHouse row without its OneID (``core.rows.with_oneid`` completes it)."""
        if self._row is None:
            ids = self.ids
            self._row = event_row_body(self.event, self.ts, self.rcv, *self.src, ids[0][1] if ids else "")
        return self._row

    def __repr__(self) -> str:
        return f"Entry({self.pk!r}, ts={self.ts}, message_id={self.message_id!r}, name={self.name!r})"


@dataclass(frozen=True, slots=True)
class Envelope:
    source: str  # which ingest instance sent it (watermarks are tracked per source)
    watermark: int  # event time (ms) before which this source will send nothing more
    entries: tuple[Entry, ...]
    # The sender had caught up with its input (or this is a heartbeat): the receiver should not hold these
    # events back to batch them with later ones (core.batching).
    flush: bool = True


# An entry as the ingest encodes it: its meta, its body (b"" when the row says all the person stage needs) and its
# row, kept apart until the envelope is written (no split and no second copy of every event).
EncodedEntry = tuple[bytes, bytes, bytes]


def _top_ids(ev: dict[str, Any]) -> tuple[str, str]:
    return ev.get("user_id") or "", ev.get("anonymous_id") or ""


def encode_entry(pk: str, ts: int, rcv: int, raw_partition: int, raw_offset: int,
                 event: dict[str, Any] | bytes, flags: list[str] | None = None, ids: list[Ident] | None = None,
                 more_ids: bool = False) -> EncodedEntry:
    """One entry's three lines; ``event`` is the validated event's dict (or its JSON), ``ids`` its identifiers
    and ``more_ids`` whether some were read from outside its userId and anonymousId
    (``core.identifiers.event_identifiers``)."""
    ev: dict[str, Any] = orjson.loads(event) if isinstance(event, bytes) else event
    # No digest of the messageId: the person stage computes it (0.5 µs per event taken off the ingest, the stage
    # that sets the pipeline's pace: +5-11 % pipeline rate in alternating runs).
    mid, name, needs_body = _meta_fields(ev, more_ids)
    primary = ids[0][1] if ids else ""
    if needs_body or flags:
        meta = orjson.dumps([pk, ts, rcv, raw_partition, raw_offset, mid, name, needs_body, flags or 0, ids or [],
                             0, 0])
        return meta, orjson.dumps(ev), event_row_body(ev, ts, rcv, raw_partition, raw_offset, primary)
    # The body does not travel: its only identifiers, its userId and anonymousId, do in the meta.
    meta = orjson.dumps([pk, ts, rcv, raw_partition, raw_offset, mid, name, False, 0, ids or [],
                         ev.get("user_id") or 0, ev.get("anonymous_id") or 0])
    return meta, b"", event_row_body(ev, ts, rcv, raw_partition, raw_offset, primary)


_ROW_BODY_COLUMNS = EVENT_ROW_COLUMNS[1:]


def entry_event(en: Entry) -> dict[str, Any]:
    """The event an entry carries, as an app could send it again (a dead-lettered event replayed by ``cdp dlq
    replay``): with every identifier it holds and, unless its own time was not trusted, its event time
    and receive time, so the ingest makes the same entry of it again."""
    # Read again from its bytes with every integer whole: ``Entry.event`` reads one past 64 bits as a float, which
    # does for rules, but this event is written out again.
    if en._body:
        ev: dict[str, Any] = exact_json.loads(en._body)
    elif en._event is not None:
        ev = dict(en._event)
    else:
        ev = _event_from_row(en.row, exact_json.loads)
    # Perhaps rebuilt from the row, which keeps no raw identifier: the meta names them (where the event is whole,
    # they are the ones it holds).
    if en.user_id:
        ev["user_id"] = en.user_id
    if en.anonymous_id:
        ev["anonymous_id"] = en.anonymous_id
    if not en.flags:  # a flagged event keeps the times the app sent: the ingest flags it again
        ev.pop("sent_at", None)
        ev["timestamp"] = iso(en.ts)
        ev["received_at"] = iso(en.rcv)
    return ev


def _event_from_row(body: bytes, loads: Callable[[bytes], Any] = orjson.loads) -> dict[str, Any]:
    """The event as far as its row tells it (events that carried no identifiers, traits or flags)."""
    row = dict(zip(_ROW_BODY_COLUMNS, loads(body), strict=True))
    ev: dict[str, Any] = {"type": row["type"], "message_id": row["message_id"]}
    if row["type"] == "track":
        ev["event"] = row["event"]
    if row["name"]:
        ev["name"] = row["name"]
    props = row["properties"]
    if isinstance(props, str):  # rows of the first envelope layouts carried the text
        props = loads(props.encode())
    if props:
        ev["properties"] = props
    campaign = {k: row[f"campaign_{k}"] for k in ("source", "medium", "name") if row[f"campaign_{k}"]}
    if campaign:
        ev["context"] = {"campaign": campaign}
    return ev


def _rows_v2(lines: list[bytes]) -> None:
    """Rows of a version-2 envelope (objects with named fields, empty columns left out) as version 3 writes them,
    in place: envelopes written before an upgrade are still on the topic when the new person stage reads it."""
    defaults: dict[str, Any] = {"name": "", "identities": {}, "properties": {}, "campaign_source": "",
                                "campaign_medium": "", "campaign_name": ""}
    for i in range(3, len(lines), 2):
        row = orjson.loads(lines[i])
        lines[i] = orjson.dumps([row.get(c, defaults.get(c)) for c in _ROW_BODY_COLUMNS[:-1]])  # no id_hash yet


def encode_envelopes(source: str, watermark: int, entries: list[EncodedEntry], flush: bool = True) -> list[bytes]:
    """Pack encoded entries into as few envelopes as fit the size limit (an empty list gives one heartbeat).
    Only the last envelope carries ``flush``: the ones before it are followed at once by the rest."""
    out: list[bytes] = []

    def close(chunk: list[EncodedEntry], fl: bool) -> None:
        head = orjson.dumps({"v": ENVELOPE_VERSION, "src": source, "wm": watermark, "fl": fl, "n": len(chunk)})
        lines: list[bytes] = [b""] * (2 + 2 * len(chunk))
        lines[0] = head
        # Every meta in one line: one decode call for all of them on the other side.
        lines[1] = b"[" + b",".join([e[0] for e in chunk]) + b"]"
        lines[2::2] = [e[1] for e in chunk]
        lines[3::2] = [e[2] for e in chunk]
        out.append(b"\n".join(lines))

    start = size = 0
    for i, (meta, body, row) in enumerate(entries):
        n = len(meta) + len(body) + len(row) + 3
        if i > start and size + n > MAX_ENVELOPE_BYTES:
            close(entries[start:i], False)
            start, size = i, 0
        size += n
    if start < len(entries) or not out:
        close(entries[start:], flush)
    return out


def decode_entry(raw: EncodedEntry) -> Entry:
    """One entry as ``encode_entry`` wrote it, read as the person stage reads it (tests and tools)."""
    return decode_envelope(encode_envelopes("", 0, [raw])[0]).entries[0]


class NewerEnvelopeError(Exception):
    """An envelope written by a newer ingest than this reader: not a bad envelope, an upgrade in progress. The
    reader must not skip it (its events would be lost) but leave it unacknowledged for an upgraded worker."""


_intern = sys.intern


def decode_envelope(raw: bytes, salt: str = "") -> Envelope:
    """An envelope's entries, decoded as far as the person stage reads every one; ``salt`` (``CDP_PII_SALT``)
    hashes the identifiers of layouts before 6, which carried them raw."""
    lines = raw.split(b"\n")
    head = orjson.loads(lines[0])
    version = head.get("v")
    if version == 1:
        return _decode_v1(head)
    if isinstance(version, int) and version > ENVELOPE_VERSION:
        raise NewerEnvelopeError(f"envelope version {version} is newer than this worker's {ENVELOPE_VERSION}")
    if version not in (2, 3, 4, 5, ENVELOPE_VERSION):
        raise ValueError(f"unknown envelope version {version!r}")
    n = head["n"]
    if len(lines) != 2 + 2 * n:
        raise ValueError(f"envelope says {n} events but holds {len(lines) - 2} lines")
    if version == 2:
        _rows_v2(lines)
    metas = orjson.loads(lines[1])
    if len(metas) != n:
        raise ValueError(f"envelope says {n} events but holds {len(metas)} metas")
    if version != ENVELOPE_VERSION:
        return Envelope(source=head["src"], watermark=int(head["wm"]), entries=_pre_v6_entries(version, metas, lines,
                                                                                                salt),
                        flush=head["fl"])
    entries = []
    i = 2
    for pk, ts, rcv, rp, ro, mid, name, needs_body, flags, ids, uid, anon in metas:
        entries.append(Entry(pk, ts, rcv, (rp, ro), mid, message_digest(mid), _intern(name), needs_body,
                             tuple(flags) if flags else (), ids, uid or "", anon or "", None, lines[i], lines[i + 1]))
        i += 2
    return Envelope(source=head["src"], watermark=int(head["wm"]), entries=tuple(entries), flush=head["fl"])


def _pre_v6_entries(version: int, metas: list[list[Any]], lines: list[bytes], salt: str) -> tuple[Entry, ...]:
    """Entries of layouts 2 to 5: the person key as pk, ids derived from the identifiers they hold."""
    entries = []
    i = 2
    for m in metas:
        if version < 4:
            del m[6]  # the digest the ingest used to carry: the same as computed here
        pk, ts, rcv, rp, ro, mid, name, needs_body, flags = m[:9]
        anon = (m[9] or "") if version == 5 else ""  # the anonymousId beside the key's userId (5 only)
        kind, _, value = pk.partition(":")
        held: list[tuple[str, Any]] = [(kind, value)]
        event = None
        body = lines[i]
        if body:  # the event travels: every identifier it holds is in it, cleaned by the ingest that wrote it
            uid = anon = ""
            with suppress(orjson.JSONDecodeError):
                event = orjson.loads(body)
            if isinstance(event, dict):
                held += [("user_id", event.get("user_id")), ("anonymous_id", event.get("anonymous_id"))]
                identities = event.get("identities")
                if isinstance(identities, dict):
                    held += identities.items()
            else:
                event = None
        else:  # only its key and version 5's anonymousId: a bodiless event held no others
            uid = value if kind == "user_id" else ""
            if kind == "anonymous_id":
                anon = value
            held.append(("anonymous_id", anon))
        ranked: dict[tuple[str, str], tuple[int, str]] = {}
        for t, v in held:
            if t and v and isinstance(v, str) and (t, v) not in ranked:
                ranked[(t, v)] = (_PRE_V6_PRIORITY.get(t, len(_PRE_V6_PRIORITY)), identifier_hash(salt, t, v))
        ids = tuple([(t, h, mask(t, v)) for (t, v), (_, h) in sorted(ranked.items(), key=lambda kv: kv[1])])
        # Their rows end before the id_hash column: the primary identifier's hash completes them.
        row = lines[i + 1]
        row = row[:-1] + b',"' + (ids[0][1].encode() if ids else b"") + b'"]'
        entries.append(Entry(pk, ts, rcv, (rp, ro), mid, message_digest(mid), _intern(name), needs_body,
                             tuple(flags) if flags else (), ids, uid, anon, event, body, row))
        i += 2
    return tuple(entries)


def _decode_v1(d: dict[str, Any]) -> Envelope:
    """Envelopes of the first layout (one JSON document), still on the topic while workers are upgraded."""
    return Envelope(
        source=d["src"],
        watermark=int(d["wm"]),
        entries=tuple(Entry.of_event(e["pk"], e["ts"], e["rcv"], tuple(e["src"]), e["e"], tuple(e.get("flags", ())))
                      for e in d["events"]),
        flush=d.get("fl", True),
    )
