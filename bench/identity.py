"""The identity figures of ``cdp bench`` (docs/performance.md, docs/identity.md).

- ``known_directory``: the directory the link writer would have built from a run's events (every identifier's
  person after all of them), as ``i:``/``m:`` records; the pipeline bench publishes it before its workers start, so
  the ingest's replica (RocksDB behind its LRU) resolves the events itself: the fast path.
- ``link_writer_rate``: ``LinkWriter.process`` + ``complete`` over envelopes as the ingest sends them to the link
  writer, every event of a new person (an anonymous visit, then a login that merges it into the user), over a
  RocksDB table opened with Faust's own options; no ClickHouse, messages to a sender that acknowledges at once.
- ``storage_bytes``: at least a million identifiers through ``IdentityGraph`` in batches (``take_writes`` and
  ``forget`` as the link writer does) into the link writer's records and, beside them, the directory's records in
  a replica-format database; bytes on disk after a flush and a full compaction, per million identifiers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
from rocksdict import Options, Rdict, WriteBatch

from config.settings import Settings
from core.envelope import decode_envelope, encode_envelopes
from core.identity import IdentityGraph, IdentityRow, Merge, directory_resolve
from core.ids import identifier_hash, mask
from core.ingest import UNRESOLVED, RawRecord, ingest_records
from rules.loader import RuleSet, load_rules
from streams.directory import directory_records
from streams.identity import LinkWriter, RecordStore

# Events a link-writer batch holds at most: the agent takes 50 envelopes (streams/app.py), an envelope holds
# about a hundred of them; the storage run resolves this many per batch too.
LINK_WRITER_ENVELOPES = 50
STORAGE_BATCH_EVENTS = 10_000
IDS_PER_PERSON = 4  # the new-person events: device id, anonymous id, then user id and email at login


class RocksTable:
    """The link writer's table as ``streams.state.TableState`` reads and writes it on RocksDB (one write batch per
    ``write``), without the changelog; opened with the options Faust opens its tables with."""

    def __init__(self, path: Path):
        from faust.stores.rocksdb import RocksDBOptions

        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = RocksDBOptions().open(path)

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.db.get(key)  # type: ignore[no-any-return]

    async def write(self, partition: int, states: dict[bytes, bytes]) -> None:
        self.write_now(states)

    def write_now(self, states: dict[bytes, bytes]) -> None:
        wb = WriteBatch(raw_mode=True)
        for k, v in states.items():
            wb.put(k, v)
        self.db.write(wb)

    def close(self) -> None:
        self.db.close()


def _entries(lines: Sequence[bytes], rules: RuleSet, salt: str, batch: int) -> Iterator[list[Any]]:
    """The events as the link writer decodes them, per ingest batch (envelope entries with ids, ts, message_id)."""
    now = int(time.time() * 1000)
    for i in range(0, len(lines), batch):
        res = ingest_records([RawRecord("raw", 0, i + j, now, None, v) for j, v in enumerate(lines[i:i + batch])],
                             rules, 1, now, salt=salt)
        yield [en for env in encode_envelopes("bench", 0, res.entries.get(UNRESOLVED, []))
               for en in decode_envelope(env).entries]


def known_directory(lines: Sequence[bytes], settings: Settings) -> dict[str, Any]:
    """The directory records the link writer makes of these events, and the share of the events a replica holding
    them resolves (the rest, identifiers of two persons a rule kept apart, go to the link writer in any run)."""
    rules = load_rules(settings.resolved_rules_dir)
    salt = settings.salt
    graph = IdentityGraph(rules.identity, salt)
    identities: list[IdentityRow] = []
    merges: list[Merge] = []
    hashes: list[list[str]] = []
    for entries in _entries(lines, rules, salt, settings.ingest_batch):
        for en in entries:
            res = graph.resolve(en.ids, en.ts, en.message_id)
            identities.extend(res.identities)
            merges.extend(res.merges)
            hashes.append([i[1] for i in en.ids])
        graph.take_writes()
    records = directory_records(identities, merges)
    table = {k.decode(): v.decode() for k, v in records}
    resolved = sum(1 for h in hashes if directory_resolve(h, lambda x: table.get("i:" + x) or None,
                                                         lambda o: table.get("m:" + o) or None) is not None)
    return {"records": records, "events": len(hashes), "resolved": resolved}


async def publish_directory_records(s: Settings, records: Sequence[tuple[bytes, bytes]]) -> None:
    """The records on the run's directory topic (compacted, one partition), all acknowledged."""
    from aiokafka import AIOKafkaProducer

    from streams.directory import publish_directory
    from streams.kafka import DIRECTORY_LAYOUT, client_kwargs, ensure_topics

    topic = s.identity_directory_topic
    await ensure_topics(s, [topic], layouts={topic: DIRECTORY_LAYOUT})
    producer = AIOKafkaProducer(**client_kwargs(s), linger_ms=20, max_batch_size=1024 * 1024)
    await producer.start()
    try:
        for i in range(0, len(records), 20_000):
            await publish_directory(producer, topic, records[i:i + 20_000])
    finally:
        await producer.stop()


def new_person_events(persons: int, start_ms: int = 1_700_000_000_000, seed: str = "n") -> list[bytes]:
    """Two events per person, all of them new to the graph: a page view with an anonymous id and a device id (a
    person of two identifiers), then an identify with a user id, an email and the same anonymous id (the user id
    leads: the anonymous person is merged into it). Interleaved, a person's login a few hundred events later."""
    lag = min(300, persons)
    out: list[bytes] = []

    def visit(i: int) -> bytes:
        return orjson.dumps({"type": "page", "name": "Home", "anonymousId": f"a-{seed}{i}",
                             "messageId": f"m-{seed}{i}-v", "timestamp": _iso(start_ms + i),
                             "context": {"device": {"id": f"d-{seed}{i}"}}})

    def login(i: int) -> bytes:
        return orjson.dumps({"type": "identify", "userId": f"u-{seed}{i}", "anonymousId": f"a-{seed}{i}",
                             "messageId": f"m-{seed}{i}-l", "timestamp": _iso(start_ms + i + 1),
                             "traits": {"email": f"p{seed}{i}@mail.shop.cn"}})

    for i in range(persons + lag):
        if i < persons:
            out.append(visit(i))
        if i >= lag:
            out.append(login(i - lag))
    return out


def _iso(ms: int) -> str:
    from core.clock import iso

    return iso(ms)


def link_writer_rate(persons: int, path: Path, settings: Settings | None = None) -> dict[str, Any]:
    """Events/s of the link writer over ``new_person_events(persons)``: envelopes as the ingest writes them (one
    ingest batch at a time), ``LinkWriter.process`` and ``complete`` per 50 envelopes, over a fresh RocksDB table;
    messages go to a sender that acknowledges at once (counted, not sent), no ClickHouse."""
    s = settings or Settings()
    rules = load_rules(s.resolved_rules_dir)
    now = int(time.time() * 1000)
    envelopes: list[bytes] = []
    lines = new_person_events(persons)
    for i in range(0, len(lines), s.ingest_batch):
        res = ingest_records([RawRecord("raw", 0, i + j, now, None, v)
                              for j, v in enumerate(lines[i:i + s.ingest_batch])], rules, 1, now, salt=s.salt)
        envelopes.extend(encode_envelopes("bench", 0, res.entries.get(UNRESOLVED, []), flush=False))
    table = RocksTable(path)
    sent = {"messages": 0, "bytes": 0}
    done: asyncio.Future[None] | None = None

    async def send(topic: str, key: bytes | None, value: bytes, partition: int | None) -> Any:
        sent["messages"] += 1
        sent["bytes"] += len(value)
        return done

    writer = LinkWriter(rules, table, None, send, salt=s.salt, partitions=s.partitions, topic="identity",
                        person_topic="persons", directory_topic="directory", profile_topic="changes",
                        dlq_topic="dlq")

    async def run() -> float:
        nonlocal done
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        t0 = time.perf_counter()
        for i in range(0, len(envelopes), LINK_WRITER_ENVELOPES):
            fx = writer.process(enumerate(envelopes[i:i + LINK_WRITER_ENVELOPES], start=i))
            await writer.complete(fx)
        return time.perf_counter() - t0

    try:
        elapsed = asyncio.run(run())
    finally:
        table.close()
    events = writer.stats["events"]
    return {"events": events, "eps": events / elapsed, "links": writer.stats["links"],
            "merges": writer.stats["merges"], "refusals": writer.stats["refusals"],
            "messages_per_event": sent["messages"] / max(events, 1), "envelopes": len(envelopes)}


def _idents(salt: str, i: int) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """The identifiers of person ``i``'s two new-person events (``new_person_events``), hashed and masked."""
    def ident(t: str, v: str) -> tuple[str, str, str]:
        return (t, identifier_hash(salt, t, v), mask(t, v))

    anon = ident("anonymous_id", f"a-s{i}")
    return ([ident("device_id", f"d-s{i}"), anon],
            [ident("user_id", f"u-s{i}"), ident("email", f"ps{i}@mail.shop.cn"), anon])


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def storage_bytes(identifiers: int, path: Path, settings: Settings | None = None) -> dict[str, Any]:
    """Bytes on disk per million identifiers of the link writer's records (``i:`` and ``p:``, RocksDB with Faust's
    table options) and of the directory's (``i:`` and ``m:``, as a ``DirectoryReplica`` stores them), after
    ``identifiers`` (rounded up to whole persons of four) went through ``IdentityGraph``."""
    s = settings or Settings()
    rules = load_rules(s.resolved_rules_dir)
    persons = -(-identifiers // IDS_PER_PERSON)
    table = RocksTable(path / "link-writer")
    graph = IdentityGraph(rules.identity, s.salt, RecordStore(table))
    (path / "directory").mkdir(parents=True, exist_ok=True)
    directory = Rdict(str(path / "directory"), Options(raw_mode=True))
    raw = {"link_writer": 0, "directory": 0}  # key + value bytes written (the last write of each key)
    t0 = time.perf_counter()
    ts = 1_700_000_000_000
    per_batch = STORAGE_BATCH_EVENTS // 2
    try:
        for first in range(0, persons, per_batch):
            ids: list[IdentityRow] = []
            merges: list[Merge] = []
            people = range(first, min(first + per_batch, persons))
            for i in people:
                visit, login = _idents(s.salt, i)
                for k, event in enumerate((visit, login)):
                    res = graph.resolve(event, ts + 2 * i + k, f"m{i}-{k}")
                    ids.extend(res.identities)
                    merges.extend(res.merges)
            changed_ids, changed_persons = graph.take_writes()
            records = RecordStore.encode(changed_ids, changed_persons)
            table.write_now(records)
            graph.forget()
            wb = WriteBatch(raw_mode=True)
            for key, value in directory_records(ids, merges):
                wb.put(key, value)
            directory.write(wb)
        elapsed = time.perf_counter() - t0
        for db in (table.db, directory):
            db.flush(True)
            db.compact_range(None, None)
        # Logical sizes of the final records (every key once), to set the compression against.
        for name, db in (("link_writer", table.db), ("directory", directory)):
            it = db.iter()
            it.seek_to_first()
            while it.valid():
                raw[name] += len(it.key()) + len(it.value())
                it.next()
    finally:
        table.close()
        directory.close()
    n = persons * IDS_PER_PERSON
    per_million = 1_000_000 / n
    return {"identifiers": n, "persons": persons, "seconds": round(elapsed, 1),
            "link_writer_bytes": _disk_bytes(path / "link-writer"), "directory_bytes": _disk_bytes(path / "directory"),
            "link_writer_bytes_per_million_ids": round(_disk_bytes(path / "link-writer") * per_million),
            "directory_bytes_per_million_ids": round(_disk_bytes(path / "directory") * per_million),
            "link_writer_record_bytes_per_id": round(raw["link_writer"] / n, 1),
            "directory_record_bytes_per_id": round(raw["directory"] / n, 1)}


def identity_figures(raw_consume_eps: float, tmp: Path, persons: int, identifiers: int,
                     settings: Settings | None = None) -> dict[str, Any]:
    """The link writer's rate on new persons (against the raw consume rate of the same run) and the bytes per
    million identifiers, as ``cdp bench --json`` reports them; 0 persons or identifiers skips that part."""
    out: dict[str, Any] = {}
    if persons:
        lw = link_writer_rate(persons, tmp / "identity-link-writer", settings)
        out["identity_new_eps"] = round(lw["eps"])
        out["identity_new_ratio"] = round(lw["eps"] / raw_consume_eps, 3)
        out["identity_new_events"] = lw["events"]
        out["identity_new_merges"] = lw["merges"]
        out["identity_new_messages_per_event"] = round(lw["messages_per_event"], 2)
    if identifiers:
        st = storage_bytes(identifiers, tmp / "identity-storage", settings)
        out["identity_storage_ids"] = st["identifiers"]
        out["identity_storage_s"] = st["seconds"]
        out["link_writer_bytes_per_million_ids"] = st["link_writer_bytes_per_million_ids"]
        out["directory_bytes_per_million_ids"] = st["directory_bytes_per_million_ids"]
        out["link_writer_record_bytes_per_id"] = st["link_writer_record_bytes_per_id"]
        out["directory_record_bytes_per_id"] = st["directory_record_bytes_per_id"]
    return out
