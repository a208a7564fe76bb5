"""The identity directory: what the link writer decided, as a compacted topic, and each ingest's replica of it.

Records of ``<prefix>.internal.identity-directory`` (one partition, compacted; docs/identity.md):

- ``i:<identifier hash>`` -> the OneID of the identifier's current person;
- ``m:<OneID>`` -> the OneID it was merged into; ``""`` (or a tombstone) removes the pointer (an operator split).

The link writer turns its decisions into records with ``directory_records`` and sends them with
``publish_directory``. Every ingest keeps a ``DirectoryReplica``: the records in a RocksDB database under its state
directory, with the next offset to read stored in the same write batch as the records it follows, so a restart
reads only what arrived since; in front of it a least-recently-used cache of the keys looked up. The ingest calls
``resolve`` per event and ``poll`` between its batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rocksdict import Options, Rdict, WriteBatch

from config.settings import Settings
from core.identity import IdentityRow, Merge, directory_resolve
from streams import metrics
from streams.kafka import DIRECTORY_LAYOUT, client_kwargs, ensure_topics

log = logging.getLogger(__name__)

IDENTIFIER_PREFIX = "i:"
MERGE_PREFIX = "m:"
# The next directory offset to read, beside the records (no record key starts with "_").
OFFSET_KEY = b"__offset__"


def directory_records(identities: Iterable[IdentityRow], merges: Iterable[Merge]) -> list[tuple[bytes, bytes]]:
    """The directory records (key, value) of a batch of the link writer's decisions: each merge's pointer (a
    split's: an empty one, the OneID split off stands alone again), then each identifier's person. One record per
    key, its last decision's, in the order of those (the others would be compacted away).

    Pointers go first: a replica that has read a merge's pointer but not yet its identifiers still finds one
    person for them (the merged-away OneID leads to the survivor), where the other order would show two."""
    out: dict[bytes, bytes] = {}
    for m in merges:
        key = (MERGE_PREFIX + m.from_oneid).encode()
        out.pop(key, None)  # a key's place is its last decision's
        out[key] = b"" if m.op == "split" else m.into_oneid.encode()
    for row in identities:
        key = (IDENTIFIER_PREFIX + row.id_hash).encode()
        out.pop(key, None)
        out[key] = row.oneid.encode()
    return list(out.items())


async def publish_directory(producer: AIOKafkaProducer, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
    """Send the records to the directory's one partition and return once the broker has acknowledged them all."""
    futures = [await producer.send(topic, value=v, key=k, partition=0) for k, v in records]
    if futures:
        await asyncio.gather(*futures)


class DirectoryReplica:
    """This process's replica of the identity directory, in RocksDB (raw keys and values, as in the topic) at
    ``path``, read through a cache of ``cache_size`` keys.

    It is brought up to date by ``poll``, which the ingest calls between its batches, rather than by a task of
    its own: aiokafka's fetcher already reads ahead in the background, so ``poll`` only applies what has
    arrived, without waiting; and applying in the ingest's own loop means a batch's events are all resolved
    against one state of the directory, with no second task to supervise or to stop, and a replica that falls
    behind only sends more events the slow way (to the link writer), never wrong ones."""

    def __init__(self, s: Settings, topic: str, path: Path, cache_size: int = 200_000):
        self.s = s
        self.topic = topic
        self.path = path
        self.cache_size = cache_size
        self.tp = TopicPartition(topic, 0)
        self.applied = 0  # records applied since start
        self.lag = 0  # records behind the partition's end, as of the last fetch
        self._db: Rdict | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._cache: dict[str, str | None] = {}  # key -> value, None: not in the directory; oldest use first
        self._hits = 0  # resolve calls that found one person, not yet added to the metric
        self._misses = 0

    async def start(self) -> None:
        """Open (or create) the database and the topic, read the directory up to its end as of now, and return."""
        await ensure_topics(self.s, [self.topic], layouts={self.topic: DIRECTORY_LAYOUT})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(self.path), Options(raw_mode=True))
        self._consumer = AIOKafkaConsumer(**client_kwargs(self.s), group_id=None, enable_auto_commit=False,
                                          auto_offset_reset="earliest", client_id=f"{self.s.topic_prefix}-directory")
        await self._consumer.start()
        self._consumer.assign([self.tp])
        end = (await self._consumer.end_offsets([self.tp]))[self.tp]
        stored = self._stored_offset()
        if stored is not None and stored > end:
            # The topic is younger than the database (deleted and created again): what it holds is of another.
            log.warning("identity directory %s ends at %d, before the replica's offset %d: rebuilding the replica",
                        self.topic, end, stored)
            self._clear()
            stored = None
        if stored is None:
            await self._consumer.seek_to_beginning(self.tp)
        else:
            self._consumer.seek(self.tp, stored)
        while await self._consumer.position(self.tp) < end:
            batches = await self._consumer.getmany(self.tp, timeout_ms=1000, max_records=10_000)
            self._apply(batches.get(self.tp, []))
        self.lag = 0
        metrics.directory_lag.set(0)
        log.info("identity directory %s replicated up to offset %d (%d records read)", self.topic, end, self.applied)

    async def poll(self, max_records: int = 10_000) -> int:
        """Apply the records that have arrived (at most ``max_records``) without waiting; returns how many."""
        assert self._consumer is not None, "start() first"
        batches = await self._consumer.getmany(self.tp, timeout_ms=0, max_records=max_records)
        records = batches.get(self.tp, [])
        self._apply(records)
        highwater = self._consumer.highwater(self.tp)
        if highwater is not None:
            self.lag = max(0, highwater - await self._consumer.position(self.tp))
            metrics.directory_lag.set(self.lag)
        self._flush_counts()
        return len(records)

    def resolve(self, hashes: Sequence[str]) -> str | None:
        """The survivor OneID of the person every hash belongs to, else None (``directory_resolve``)."""
        oneid = directory_resolve(hashes, self._oneid_of_hash, self._into_of)
        if oneid is None:
            self._misses += 1
        else:
            self._hits += 1
        return oneid

    def _oneid_of_hash(self, id_hash: str) -> str | None:
        return self._lookup(IDENTIFIER_PREFIX + id_hash)

    def _into_of(self, oneid: str) -> str | None:
        return self._lookup(MERGE_PREFIX + oneid)

    def _lookup(self, key: str) -> str | None:
        cache = self._cache
        if key in cache:
            value = cache.pop(key)  # back in as the newest use
            cache[key] = value
            return value
        assert self._db is not None, "start() first"
        raw = self._db.get(key.encode())
        value = raw.decode() if raw else None
        if self.cache_size > 0:
            if len(cache) >= self.cache_size:
                del cache[next(iter(cache))]
            cache[key] = value
        return value

    def _apply(self, records: Sequence[Any]) -> None:
        """The records in one write batch with the offset after the last, each key's cached value dropped."""
        if not records:
            return
        assert self._db is not None
        wb = WriteBatch(raw_mode=True)
        skipped = 0
        for r in records:
            key: bytes | None = r.key
            if not key or not (key.startswith(b"i:") or key.startswith(b"m:")):
                skipped += 1  # not a directory record: nothing to look up by it
                continue
            if r.value:
                wb.put(key, r.value)
            else:  # "" or a tombstone: no entry
                wb.delete(key)
            self._cache.pop(key.decode(errors="replace"), None)
        wb.put(OFFSET_KEY, str(records[-1].offset + 1).encode())
        self._db.write(wb)
        self.applied += len(records) - skipped
        if skipped:
            log.warning("identity directory %s: %d records without an i: or m: key ignored", self.topic, skipped)

    def _stored_offset(self) -> int | None:
        assert self._db is not None
        raw = self._db.get(OFFSET_KEY)
        return int(raw) if raw else None

    def _clear(self) -> None:
        assert self._db is not None
        self._db.close()
        Rdict.destroy(str(self.path), Options(raw_mode=True))
        self._db = Rdict(str(self.path), Options(raw_mode=True))
        self._cache.clear()

    def _flush_counts(self) -> None:
        if self._hits:
            metrics.directory_hits.inc(self._hits)
            self._hits = 0
        if self._misses:
            metrics.directory_misses.inc(self._misses)
            self._misses = 0

    async def close(self) -> None:
        self._flush_counts()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._db is not None:
            self._db.close()
            self._db = None
