"""The link writer: the one place identity links are decided (docs/identity.md).

It reads envelopes of events the ingest could not resolve (``<prefix>.internal.identity``, one partition), resolves
each event with ``core.identity.IdentityGraph`` over its RocksDB table, and for each batch:

1. inserts the decisions into ClickHouse (identities, identity_merges, identity_links, identity_refusals), with
   tokens of the batch's offsets;
2. sends, all acknowledged: the events, now keyed by their OneID, in envelopes to the person stage's partitions;
   a ``merge`` command to the partition of every OneID merged away (``core.person_merge``); the directory records
   every ingest's replica reads; ``identity_merged`` on ``cdp.profile.changes``;
3. writes the graph records it changed (one write per record per batch), and only then lets the batch's offsets be
   committed.

A crash replays the batch from the state before it and makes the same decisions: ClickHouse's tables collapse the
rows again, the person stage drops the events as messageId duplicates and applies an ``absorb`` once, the
directory's records are the same puts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from core.clock import iso
from core.envelope import EncodedEntry, NewerEnvelopeError, decode_envelope, encode_envelopes
from core.identity import (
    IdentityGraph,
    IdRecord,
    PersonRecord,
    Resolution,
    SplitResult,
    decode_id,
    decode_person,
    encode_record,
)
from core.identity_rows import IDENTITY_TABLES, identity_lines, merge_lines, resolution_lines
from core.ids import partition_for
from core.person_merge import merge_command
from core.split import EventRecord, is_split_request, reassign, rebuild_states, split_command
from rules.loader import RuleSet
from schemas.bad_rows import BadRow, Stage
from sinks.clickhouse import ClickHouseSink
from streams import metrics
from streams.directory import directory_records
from streams.sink_writer import SinkWriter

log = logging.getLogger("cdp.identity")

# A split's persons' events, as the rebuild reads them (after the split's rows are in: each resolves to one of them).
SPLIT_EVENTS_SQL = (
    "SELECT message_id, oneid, id_hash, type, event, name, properties, toUnixTimestamp64Milli(ts), "
    "toUnixTimestamp64Milli(received_at), raw_partition, raw_offset "
    "FROM cdp.events_resolved WHERE oneid IN {parts:Array(String)}")

# Sends (topic, key, value, partition) and returns an awaitable acknowledgement.
Sender = Callable[[str, bytes | None, bytes, int | None], Awaitable[Awaitable[Any]]]


class RecordStore:
    """The graph's records over the link writer's table partition (``streams.state.TableState``):
    ``i:<hash>`` -> IdRecord, ``p:<oneid>`` -> PersonRecord, msgpack."""

    def __init__(self, table_state: Any, partition: int = 0):
        self.state = table_state
        self.partition = partition

    def get_id(self, id_hash: str) -> IdRecord | None:
        raw = self.state.get(self.partition, b"i:" + id_hash.encode())
        return decode_id(raw) if raw is not None else None

    def get_person(self, oneid: str) -> PersonRecord | None:
        raw = self.state.get(self.partition, b"p:" + oneid.encode())
        return decode_person(raw) if raw is not None else None

    @staticmethod
    def encode(ids: dict[str, IdRecord], persons: dict[str, PersonRecord]) -> dict[bytes, bytes]:
        out = {b"i:" + h.encode(): encode_record(r) for h, r in ids.items()}
        out.update({b"p:" + o.encode(): encode_record(r) for o, r in persons.items()})
        return out


@dataclass(slots=True)
class LinkEffects:
    token: str
    tables: dict[str, list[bytes]] = field(default_factory=dict)  # ClickHouse lines by table
    messages: list[tuple[str, bytes | None, bytes, int | None]] = field(default_factory=list)
    records: dict[bytes, bytes] = field(default_factory=dict)  # graph records to write
    bad_rows: list[tuple[bytes | None, BadRow]] = field(default_factory=list)
    events: int = 0
    links: int = 0
    merges: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)  # identifiers of each person a link changed
    splits: list[SplitResult] = field(default_factory=list)
    unknown_splits: list[str] = field(default_factory=list)  # hashes of identifiers a split named, unknown here


def directory_messages(topic: str, decided: Sequence[Resolution | Any]) -> list[
        tuple[str, bytes | None, bytes, int | None]]:
    """The directory records of a batch's resolutions (or a split), one per key, merge pointers first
    (``streams.directory.directory_records``)."""
    records = directory_records([r for res in decided for r in res.identities],
                                [m for res in decided for m in res.merges])
    return [(topic, key, value, 0) for key, value in records]


def merge_messages(person_topic: str, partitions: int, res: Resolution | Any) -> list[
        tuple[str, bytes | None, bytes, int | None]]:
    """A ``merge`` command to the partition of every OneID merged away (splits need none: their state is rebuilt)."""
    return [(person_topic, m.from_oneid.encode(), merge_command(m.from_oneid, m.into_oneid, m.at, m.message_id),
             partition_for(m.from_oneid, partitions)) for m in res.merges if m.op == "merge"]


def profile_change(m: Any, rule_version: int) -> bytes:
    kind = "identity_merged" if m.op == "merge" else "identity_split"
    return orjson.dumps({"type": kind, "from_oneid": m.from_oneid, "into_oneid": m.into_oneid, "at": iso(m.at),
                         "message_id": m.message_id, "reason": m.reason, "rule_version": rule_version})


class LinkWriter:
    def __init__(self, rules: RuleSet, store: Any, sink: ClickHouseSink | None, send: Sender, *, salt: str,
                 partitions: int, topic: str, person_topic: str, directory_topic: str, profile_topic: str,
                 dlq_topic: str):
        self.rules = rules
        self.graph = IdentityGraph(rules.identity, salt, RecordStore(store))
        self.store = store
        self.sink = sink
        self.writer = SinkWriter(sink) if sink is not None else None
        self.send = send
        self.partitions = partitions
        self.topic = topic
        self.person_topic = person_topic
        self.directory_topic = directory_topic
        self.profile_topic = profile_topic
        self.dlq_topic = dlq_topic
        self.version = rules.identity.version
        self.stats = {"events": 0, "links": 0, "merges": 0, "refusals": 0}

    def process(self, batch: Iterable[tuple[int, bytes]]) -> LinkEffects:
        """Resolve a batch of envelopes ``(offset, value)`` (no I/O but the table's reads)."""
        items = list(batch)
        now_ms = int(time.time() * 1000)
        first, last = (items[0][0], items[-1][0]) if items else (0, 0)
        fx = LinkEffects(f"{self.topic}:0:{first}-{last}")
        decided: list[Resolution] = []
        # The batch's events by (person partition, source): one envelope (or a few) each, so a backlog reaches the
        # person stage in envelopes as large as the ingest's. Never marked flush: the ingest's envelopes and
        # heartbeats close the person stage's sink batches (every CDP_SINK_FLUSH_MS while caught up, at most
        # CDP_HEARTBEAT_S), so a slow-path event waits at most that long for its insert, and the link writer's
        # own small batches never cut a backlog's inserts short.
        by_target: dict[tuple[int, str], list[EncodedEntry]] = {}
        watermarks: dict[str, int] = {}
        for offset, value in items:
            if is_split_request(value):
                self._split(value, fx)
                continue
            try:
                env = decode_envelope(value, self.graph.salt)
            except NewerEnvelopeError:
                raise  # left unacknowledged for an upgraded worker
            except Exception as exc:
                log.error("undecodable envelope at %s:0:%s: %r", self.topic, offset, exc)
                fx.bad_rows.append((None, BadRow.of(value, Stage.process, "bad_envelope",
                                                    [{"field": "$", "error": repr(exc)}], iso(now_ms),
                                                    source={"topic": self.topic, "partition": 0, "offset": offset})))
                continue
            watermarks[env.source] = max(env.watermark, watermarks.get(env.source, env.watermark))
            for en in env.entries:
                if not en.ids:
                    fx.bad_rows.append((None, BadRow.of(orjson.dumps({"message_id": en.message_id}), Stage.process,
                                                        "no_identifier", [], iso(now_ms),
                                                        source={"topic": self.topic, "partition": 0,
                                                                "offset": offset})))
                    continue
                res = self.graph.resolve(en.ids, en.ts, en.message_id)
                fx.events += 1
                target = (partition_for(res.oneid, self.partitions), env.source)
                by_target.setdefault(target, []).append(en.encoded(res.oneid))
                if res.links or res.merges or res.refusals or res.identities:
                    decided.append(res)
                    self._decided(res, fx)
        # Events first, then merge commands: a OneID's events of this batch are folded into its state before the
        # state moves to the survivor (else they reach a pointer and take one more hop).
        commands, fx.messages = fx.messages, []
        for (p, source), entries in by_target.items():
            for raw in encode_envelopes(source, watermarks[source], entries, False):
                fx.messages.append((self.person_topic, None, raw, p))
        fx.messages.extend(commands)
        ids, persons = self.graph.take_writes()
        fx.records = RecordStore.encode(ids, persons)
        self.graph.forget()
        fx.tables = {t: v for t, v in resolution_lines(decided, self.version).items() if v}
        if fx.splits:
            fx.tables.setdefault("identities", []).extend(identity_lines(r for sp in fx.splits for r in sp.identities))
            fx.tables.setdefault("identity_merges", []).extend(merge_lines(m for sp in fx.splits for m in sp.merges))
        fx.messages.extend(directory_messages(self.directory_topic, [*decided, *fx.splits]))
        return fx

    def _split(self, value: bytes, fx: LinkEffects) -> None:
        req = orjson.loads(value)
        sp = self.graph.split(req["hash"], int(req["at"]), other_hash=req.get("other"))
        if sp is None:
            log.warning("split of an identifier the graph does not know (%s…)", req["hash"][:12])
            fx.unknown_splits.append(req["hash"])
            return
        fx.splits.append(sp)
        for m in sp.merges:
            fx.messages.append((self.profile_topic, m.into_oneid.encode(), profile_change(m, self.version), None))

    async def _rebuild(self, sp: SplitResult, fx: LinkEffects, at: int) -> None:
        """A split's persons' states from their events (read back from ClickHouse, where the split's rows are in
        by now), the events reassigned, and the command that puts the states in place."""
        events: list[EventRecord] = []
        if self.sink is not None:
            rows = await asyncio.get_running_loop().run_in_executor(None, lambda: self.sink.rows(  # type: ignore
                SPLIT_EVENTS_SQL, {"parts": list(sp.persons)}))
            for mid, oneid, id_hash, typ, event, name, props, ts, rcv, rp, ro in rows:
                ev: dict[str, Any] = {"type": typ, "properties": orjson.loads(props) if props else {}}
                if typ == "track":
                    ev["event"] = event
                if name:
                    ev["name"] = name
                events.append(EventRecord(mid, oneid, id_hash, ev, int(ts), int(rcv), (int(rp), int(ro))))
        target = reassign(events, sp.persons)
        moved = [orjson.dumps([mid, o, at / 1000]) for mid, o in target.items()]
        if moved and self.writer is not None:
            await self.writer.insert("event_oneids", moved, ["message_id", "oneid", "at"],
                                     f"{fx.token}:split:{sp.previous_oneid}:event_oneids", compact=True)
        states = rebuild_states(events, target, sp.persons, self.rules)
        cmd = split_command(sp.previous_oneid, at, {o: (hs, states[o]) for o, hs in sp.persons.items()})
        fx.messages.append((self.person_topic, sp.previous_oneid.encode(), cmd,
                            partition_for(sp.previous_oneid, self.partitions)))

    def _decided(self, res: Resolution, fx: LinkEffects) -> None:
        fx.messages.extend(merge_messages(self.person_topic, self.partitions, res))
        for m in res.merges:
            fx.messages.append((self.profile_topic, m.into_oneid.encode(), profile_change(m, self.version), None))
        fx.links += len(res.links)
        fx.merges += len(res.merges)
        for r in res.refusals:
            fx.refusals[r.reason] = fx.refusals.get(r.reason, 0) + 1
        if res.links:
            rec = self.graph.record(res.oneid)
            if rec is not None:
                fx.sizes.append(len(rec.ids))

    async def complete(self, fx: LinkEffects) -> None:
        """(1) ClickHouse, (2) every message, acknowledged, (3) the graph's records."""
        if self.writer is not None:
            for table, rows in fx.tables.items():
                refused = await self.writer.insert(table, rows, IDENTITY_TABLES[table], f"{fx.token}:{table}",
                                                   compact=True)
                for r in refused:  # a row ClickHouse refuses is logged; the decision it records stands in the graph
                    log.error("%s row refused by ClickHouse: %s", table, r.error)
        for sp in fx.splits:
            await self._rebuild(sp, fx, max(m.at for m in sp.merges) if sp.merges else int(time.time() * 1000))
            metrics.identity_splits.inc()
        acks = [await self.send(topic, key, value, partition) for topic, key, value, partition in fx.messages]
        acks += [await self.send(self.dlq_topic, key, row.model_dump_json().encode(), None)
                 for key, row in fx.bad_rows]
        for ack in acks:
            await ack
        if fx.records:
            await self.store.write(0, fx.records)
        self.stats["events"] += fx.events
        self.stats["links"] += fx.links
        self.stats["merges"] += fx.merges
        self.stats["refusals"] += sum(fx.refusals.values())
        metrics.identity_events.inc(fx.events)
        metrics.identity_links.inc(fx.links)
        metrics.identity_merges.inc(fx.merges)
        for reason, n in fx.refusals.items():
            metrics.identity_refusals.labels(reason.split(":")[0]).inc(n)
        for n in fx.sizes:
            metrics.identifiers_per_person.observe(n)
        for _, row in fx.bad_rows:
            metrics.bad_rows.labels(row.stage.value, row.reason).inc()
