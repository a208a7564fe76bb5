"""Ingest: ``cdp.events.raw`` -> validate (core) -> envelopes on the person-partitioned topic, bad rows to the DLQ.

Not a Faust stream: Faust spends ~230 µs of CPU per message delivered through a stream (docs/performance.md), so
raw events, one per Kafka message, are read here with aiokafka's batch ``getmany`` and leave as one envelope per
target partition per batch. An event whose identifiers the directory replica resolves to one person goes to that
OneID's partition; the others go, in envelopes of their own, to ``<prefix>.internal.identity`` (one partition)
for the link writer (docs/identity.md). Offsets are committed only after every envelope and bad row was
acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import __version__ as aiokafka_version
from aiokafka.errors import CommitFailedError, CorruptRecordException, KafkaError, UnsupportedCodecError

from config.settings import Settings
from core.envelope import encode_envelopes
from core.ingest import UNRESOLVED, ingest_batches, watermark
from rules.loader import RuleSet
from streams import metrics
from streams.kafka import batch_producer, client_kwargs
from streams.raw_records import RawValues
from streams.raw_records import install as install_raw_records

log = logging.getLogger("cdp.ingest")

# Batches read ahead of their acknowledgements.
INGEST_PIPELINE_DEPTH = 2
INGEST_COMMIT_INTERVAL_S = 1.0
INGEST_FETCH_MAX_WAIT_MS = 100
# A Kafka request, write or commit that fails is retried from the last commit, waiting 1 s, then twice as long each
# time up to 30 s. The ingest stays ready for the first 60 s of failures: a broker restart or a leader election is
# over in seconds, and the loop gets past it by itself; past that it is an outage someone must see.
INGEST_RETRY_MIN_S = 1.0
INGEST_RETRY_MAX_S = 30.0
INGEST_FAILING_READY_S = 60.0
# A record batch the ingest cannot read (streams.raw_records) stops its partition there: tried again after 1 s
# (a batch damaged on the way is fetched afresh), then twice as long each time up to 30 s, and not ready meanwhile.
INGEST_STALL_RETRY_MIN_S = 1.0
INGEST_STALL_RETRY_MAX_S = 30.0
# Errors in reading a record batch: re-reading does not get past them by itself.
UNREADABLE = (UnsupportedCodecError, CorruptRecordException)


def _backoff_s(tries: int, first_s: float, most_s: float) -> float:
    """The wait after the ``tries``-th failure in a row: ``first_s``, twice as long each time, at most ``most_s``."""
    return min(first_s * 2 ** (tries - 1), most_s)


def _unreadable_kind(exc: BaseException) -> str:
    return "unsupported_codec" if isinstance(exc, UnsupportedCodecError) else "corrupt_batch"


@dataclass
class _Stall:
    """A raw partition whose reading stopped at a record batch the ingest cannot read (paused between tries)."""

    kind: str
    offset: int
    error: str
    since: float  # wall clock
    retry_at: float  # monotonic
    tries: int = 1
    paused: bool = True


@dataclass
class _Failing:
    """Kafka errors in a row (``kafka``), or a batch that cannot be read whose partition is not known."""

    kind: str
    error: str
    since: float  # wall clock
    since_mono: float
    last_mono: float
    tries: int = 0


class Resolver(Protocol):
    """The ingest's view of the identity directory (``streams.directory.DirectoryReplica``)."""

    def resolve(self, hashes: Sequence[str]) -> str | None: ...
    async def start(self) -> None: ...
    async def poll(self) -> int: ...
    async def close(self) -> None: ...


class Ingest:
    def __init__(self, settings: Settings, rules: RuleSet, directory: Resolver | None = None):
        self.s = settings
        self.rules = rules
        # None: no event is resolved here, every one goes to the link writer.
        self.directory = directory
        self.source = f"ingest-{uuid.uuid4().hex[:12]}"
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.max_ts: dict[int, int] = {}  # raw partition -> greatest event time read
        self.running = False
        self.first_event_at: float | None = None
        # Wall clock of the first fetch (the first ``getmany``): with ``first_event_at`` it shows how long the first
        # records took to come (``cdp bench`` reports the rate from each).
        self.first_fetch_at: float | None = None
        self.records_in = 0
        self._stopping = asyncio.Event()
        self._last_heartbeat = 0.0
        # Sink batches downstream close at envelopes marked flush (core.batching). While caught up, mark at most
        # one envelope per person partition every CDP_SINK_FLUSH_MS, so live traffic still makes inserts of
        # many events; a partition whose last envelope went unmarked gets a flush heartbeat once input pauses.
        self._last_flush: dict[int, float] = {}
        self._unflushed: set[int] = set()
        # Events sent per person partition since this ingest last was caught up: the first quarter batch of a
        # backlog is marked flush, so the person stage starts inserting (and its ClickHouse work overlaps this
        # reading) after a quarter of the events it would otherwise wait for; the rest goes in full batches.
        self._backlog_sent: dict[int, int] = {}
        self._unacked: deque[tuple[list[asyncio.Future[Any]], dict[TopicPartition, int]]] = deque()
        self._acked: dict[TopicPartition, int] = {}  # acknowledged, not yet committed
        self._last_commit = 0.0
        # Raw records, and where the fetches report a record batch they could not read (streams.raw_records).
        self._raw = RawValues()
        self._stalls: dict[TopicPartition, _Stall] = {}
        self._failing: _Failing | None = None
        self._rewind_due = False

    async def start(self) -> None:
        kw = client_kwargs(self.s)
        self.producer = batch_producer(self.s, self.source, linger_ms=5)
        # Raw events as aiokafka's record batches hold them, without a ConsumerRecord each (streams.raw_records).
        install_raw_records()
        self.consumer = AIOKafkaConsumer(
            self.s.raw_topic, **kw, group_id=self.s.ingest_group, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=self.s.ingest_batch, fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024, client_id=self.source,
            # aiokafka keeps one fetch in flight per broker, and does not fetch a partition whose records it still
            # holds: with its default 500 ms wait, a fetch for partitions read to their end held back the rest of
            # a partition read meanwhile (a 0.45 s stall at the end of a backlog, measured). The wait bounds it.
            fetch_max_wait_ms=INGEST_FETCH_MAX_WAIT_MS, value_deserializer=self._raw,
        )
        await self.producer.start()
        if self.directory is not None:
            # Caught up before the first event: a replica far behind would send every known person the slow way.
            await self.directory.start()
        await self.consumer.start()

    async def _rewind(self) -> None:
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            committed = await self.consumer.committed(tp)
            if committed is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)

    async def stop(self) -> None:
        self._stopping.set()
        if self.consumer is not None and (self._unacked or self._acked):
            try:
                await self._commit_acknowledged(drain=True)
            except (KafkaError, CommitFailedError) as exc:
                log.warning("ingest: final commit failed (records will be read again): %r", exc)
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        if self.directory is not None:
            await self.directory.close()

    async def run(self) -> None:
        assert self.consumer is not None
        self.running = True
        try:
            await self._run()
        except Exception:
            log.critical("ingest stopped: an error the loop does not recover from", exc_info=True)
            raise
        finally:
            # Also when it failed: /healthz then says not ready (``running`` false) instead of ready and idle.
            self.running = False

    async def _run(self) -> None:
        assert self.consumer is not None
        while not self._stopping.is_set():
            try:
                if self._rewind_due:  # the rewind itself may fail (broker away): then it is tried again
                    await self._rewind()
                    self._rewind_due = False
                if self._stalls:
                    self._retry_stalled()
                # Waiting for input is short while some partition's events wait for a flush mark.
                timeout_s = min(self.s.heartbeat_s, self.s.sink_flush_ms / 1000) if self._unflushed \
                    else self.s.heartbeat_s
                if self.first_fetch_at is None:
                    self.first_fetch_at = time.time()
                if self.directory is not None:
                    await self.directory.poll()  # what the link writer decided meanwhile (no wait)
                batches = await self.consumer.getmany(timeout_ms=int(timeout_s * 1000),
                                                      max_records=self.s.ingest_batch)
                if self._raw.faults:
                    self._stall()
                if batches:
                    await self._process(batches)
                else:
                    await self._flush_unflushed()
                    await self._commit_acknowledged(drain=True)
                    if self._failing is not None and not self._unacked and await self._caught_up():
                        self._progressed()  # nothing left to read or to commit
                if self._stalls:
                    await self._read_past_stalls()
                await self._maybe_heartbeat()
            except asyncio.CancelledError:
                raise
            except UNREADABLE as exc:
                # Raised only by aiokafka's own records (an aiokafka streams.raw_records does not know): the
                # partition is not known, and the records other partitions gave that call were lost with it.
                log.error("ingest: cannot read a record batch of %s (aiokafka %s does not say where): %r",
                          self.s.raw_topic, aiokafka_version, exc)
                await self._failed(exc, _unreadable_kind(exc))
            except (KafkaError, CommitFailedError) as exc:
                await self._failed(exc, "kafka")

    async def _failed(self, exc: BaseException, kind: str) -> None:
        """Re-read from the last commit after a wait that doubles while the failures go on.

        Uncommitted records are read again (the person stage drops duplicates by messageId), so nothing whose
        write failed is skipped."""
        now = time.monotonic()
        f = self._failing
        if f is None or f.kind != kind:
            f = self._failing = _Failing(kind, repr(exc), time.time(), now, now)
        f.tries += 1
        f.error, f.last_mono = repr(exc), now
        if kind == "kafka":
            delay = _backoff_s(f.tries, INGEST_RETRY_MIN_S, INGEST_RETRY_MAX_S)
        else:
            delay = _backoff_s(f.tries, INGEST_STALL_RETRY_MIN_S, INGEST_STALL_RETRY_MAX_S)
        metrics.ingest_failures.labels(kind).inc()
        metrics.ingest_failing.set(1)
        log.warning("ingest: %s (%d in a row, for %.0f s), re-reading from the last commit in %.0f s: %r",
                    "kafka error" if kind == "kafka" else kind, f.tries, now - f.since_mono, delay, exc)
        self._unacked.clear()
        self._acked.clear()
        self._rewind_due = True
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    def _progressed(self) -> None:
        """A commit went through, or there was nothing left to read or commit: the failures are over (a batch that
        could not be read, once its tries have stopped meeting it)."""
        f = self._failing
        if f is None or (f.kind != "kafka" and time.monotonic() - f.last_mono < INGEST_STALL_RETRY_MAX_S):
            return
        log.warning("ingest: reading again, after %d failures over %.0f s (%s)", f.tries,
                    time.monotonic() - f.since_mono, f.error)
        self._failing = None
        metrics.ingest_failing.set(0)

    def _stall(self) -> None:
        """Stop reading the partitions whose fetch met a record batch it cannot read, at that batch (paused, and
        tried again now and then); the other partitions go on."""
        assert self.consumer is not None
        faults, self._raw.faults = self._raw.faults, {}
        now = time.monotonic()
        held = self.consumer.assignment()
        for tp, (offset, exc) in faults.items():
            if tp not in held:
                continue  # given away since the fetch: its new owner meets the batch and reports it
            kind = _unreadable_kind(exc)
            metrics.ingest_failures.labels(kind).inc()
            st = self._stalls.get(tp)
            if st is not None and st.offset == offset:
                st.tries += 1
                st.error = repr(exc)
                delay = _backoff_s(st.tries, INGEST_STALL_RETRY_MIN_S, INGEST_STALL_RETRY_MAX_S)
                st.retry_at, st.paused = now + delay, True
                log.warning("ingest: %s partition %d still cannot be read at offset %d (%d tries since %s), next "
                            "try in %.0f s: %r", tp.topic, tp.partition, offset, st.tries,
                            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.since)), delay, exc)
            else:
                self._stalls[tp] = _Stall(kind, offset, repr(exc), time.time(), now + INGEST_STALL_RETRY_MIN_S)
                log.error("ingest: cannot read %s partition %d at offset %d (%s): %r. That partition stops there "
                          "(nothing is skipped; the other partitions go on), /healthz says not ready, and it is "
                          "tried again every %.0f s at most", tp.topic, tp.partition, offset, kind, exc,
                          INGEST_STALL_RETRY_MAX_S)
            self.consumer.pause(tp)
        metrics.ingest_stalled_partitions.set(len(self._stalls))

    def _retry_stalled(self) -> None:
        assert self.consumer is not None
        held = self.consumer.assignment()
        now = time.monotonic()
        for tp, st in list(self._stalls.items()):
            if tp not in held:
                del self._stalls[tp]  # given away: its new owner meets the batch and reports it
            elif st.paused and now >= st.retry_at:
                st.paused = False
                self.consumer.resume(tp)
        metrics.ingest_stalled_partitions.set(len(self._stalls))

    async def _read_past_stalls(self) -> None:
        assert self.consumer is not None
        held = self.consumer.assignment()
        for tp, st in list(self._stalls.items()):
            if not st.paused and tp in held and await self.consumer.position(tp) > st.offset:
                del self._stalls[tp]
                log.warning("ingest: %s partition %d read past offset %d again, after %d tries", tp.topic,
                            tp.partition, st.offset, st.tries)
        metrics.ingest_stalled_partitions.set(len(self._stalls))

    def faults(self) -> list[dict[str, Any]]:
        """What the ingest cannot get past by itself (each makes /healthz not ready): raw partitions stopped at a
        record batch it cannot read, and Kafka errors that went on for more than INGEST_FAILING_READY_S."""
        out: list[dict[str, Any]] = [
            {"kind": st.kind, "topic": tp.topic, "partition": tp.partition, "offset": st.offset, "error": st.error,
             "since": st.since, "tries": st.tries} for tp, st in self._stalls.items()]
        f = self._failing
        if f is not None and (f.kind != "kafka" or time.monotonic() - f.since_mono >= INGEST_FAILING_READY_S):
            out.append({"kind": f.kind, "topic": self.s.raw_topic, "partition": None, "offset": None,
                        "error": f.error, "since": f.since, "tries": f.tries})
        return out

    async def _source_state(self, now_ms: int) -> tuple[int, bool]:
        """The least watermark over this instance's raw partitions (downstream tracks one per source), and whether
        every raw partition has been read up to its high-water mark."""
        assert self.consumer is not None
        lateness = int(self.s.allowed_lateness_s * 1000)
        marks = []
        all_caught_up = True
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            pos = await self.consumer.position(tp)
            caught_up = hw is not None and pos >= hw
            # A stalled partition holds the watermark back (its events may come yet), but is no backlog to read
            # in full batches: live events of the others are flushed as when caught up.
            all_caught_up = all_caught_up and (caught_up or tp in self._stalls)
            marks.append(watermark(self.max_ts.get(tp.partition), caught_up, now_ms, lateness))
        return (min(marks) if marks else 0), all_caught_up

    async def _caught_up(self) -> bool:
        return (await self._source_state(int(time.time() * 1000)))[1]

    async def _process(self, batches: dict[TopicPartition, list]) -> None:
        assert self.producer is not None and self.consumer is not None
        now_ms = int(time.time() * 1000)
        if self.first_event_at is None:
            self.first_event_at = time.time()
        n = sum(len(msgs) for msgs in batches.values())
        self.records_in += n
        metrics.events_in.inc(n)
        res = ingest_batches(batches, self.rules, self.s.partitions, now_ms, int(self.s.max_future_s * 1000),
                             resolve=self.directory.resolve if self.directory is not None else None,
                             salt=self.s.salt)
        for part, ts in res.max_event_ts.items():
            self.max_ts[part] = max(self.max_ts.get(part, 0), ts)
        # Caught up (every raw partition read to its high-water mark): downstream need not hold these events
        # back much longer to insert them with later ones (core.batching). A read short of the batch size is not
        # enough: while a backlog is read, the fetcher's buffer runs short now and then, and each such flush mark
        # closed the sink batches early (inserts and state writes of 5,000 rows instead of 20,000, measured).
        wm, caught_up = await self._source_state(now_ms)
        futures = []
        first_batch = self.s.sink_batch_rows // 4
        for part, entries in res.entries.items():
            if part == UNRESOLVED:  # to the link writer, which sends them on to their persons' partitions
                for env in encode_envelopes(self.source, wm, entries, flush=caught_up):
                    futures.append(await self.producer.send(self.s.identity_topic, env, partition=0))
                continue
            if caught_up:
                flush = self._flush_due(part)
            else:
                sent = self._backlog_sent.get(part, 0)
                self._backlog_sent[part] = sent + len(entries)
                flush = sent < first_batch <= sent + len(entries)
            if flush:
                self._flushed([part])
            else:
                self._unflushed.add(part)
            for env in encode_envelopes(self.source, wm, entries, flush=flush):
                futures.append(await self.producer.send(self.s.person_events_topic, env, partition=part))
        if caught_up:
            self._backlog_sent.clear()
        # Partitions that got nothing this time but still hold unflushed events downstream.
        futures.extend(await self._send_flush([p for p in self._unflushed
                                               if p not in res.entries and self._flush_due(p)], wm))
        for key, row in res.bad_rows:
            futures.append(await self.producer.send(
                self.s.dlq_topic, row.model_dump_json().encode(), key=key, headers=row.kafka_headers()))
            metrics.bad_rows.labels(row.stage.value, row.reason).inc()
        metrics.events_ok.inc(res.ok)
        for id_type, n in res.dropped_identifiers.items():
            metrics.identifiers_dropped.labels(id_type).inc(n)
        metrics.future_timestamps.inc(res.flagged["future_timestamp"])
        metrics.past_timestamps.inc(res.flagged["past_timestamp"])
        # Read the next batch while this one's writes are acknowledged; commit strictly in order, and only
        # offsets whose every envelope and bad row the broker has acknowledged.
        self._unacked.append((futures, {tp: msgs[-1].offset + 1 for tp, msgs in batches.items()}))
        await self._commit_acknowledged(wait=len(self._unacked) > INGEST_PIPELINE_DEPTH)

    async def _commit_acknowledged(self, wait: bool = False, drain: bool = False) -> None:
        assert self.consumer is not None
        while self._unacked:
            futures, batch_offsets = self._unacked[0]
            if not (wait or drain) and not all(f.done() for f in futures):
                break
            await asyncio.gather(*futures)  # raises if a write failed: nothing of it is committed
            self._unacked.popleft()
            self._acked.update(batch_offsets)
            wait = False
        # Committed at most every INGEST_COMMIT_INTERVAL_S while reading (each commit is a broker request; a
        # crash re-reads at most that much more, and the person stage drops what it has seen), at once when
        # input pauses or the worker stops.
        if self._acked and (drain or time.monotonic() - self._last_commit >= INGEST_COMMIT_INTERVAL_S):
            # Partitions given away meanwhile are left to their new owner, which reads them from the last commit.
            held = self.consumer.assignment()
            offsets = {tp: o for tp, o in self._acked.items() if tp in held}
            self._acked = {}
            self._last_commit = time.monotonic()
            if offsets:
                await self.consumer.commit(offsets)
                if self._failing is not None:
                    self._progressed()

    async def _flush_unflushed(self) -> None:
        """Input paused: close the sink batches still open downstream with a flush heartbeat."""
        if self._unflushed:
            wm, _ = await self._source_state(int(time.time() * 1000))
            await asyncio.gather(*await self._send_flush(list(self._unflushed), wm))

    def _flush_due(self, partition: int) -> bool:
        return time.monotonic() - self._last_flush.get(partition, 0.0) >= self.s.sink_flush_ms / 1000

    def _flushed(self, partitions: list[int]) -> None:
        mono = time.monotonic()
        for p in partitions:
            self._last_flush[p] = mono
            self._unflushed.discard(p)

    async def _send_flush(self, partitions: list[int], wm: int, flush: bool = True) -> list[asyncio.Future[Any]]:
        """An empty envelope to each partition: it moves event time on and, marked flush, closes the open batch."""
        assert self.producer is not None
        env = encode_envelopes(self.source, wm, [], flush=flush)[0]
        futs = [await self.producer.send(self.s.person_events_topic, env, partition=p) for p in partitions]
        if flush:
            self._flushed(partitions)
        else:
            # Their batches stay open (with whatever timers the heartbeat fired): a flush follows once caught up,
            # or at once when input pauses (``_flush_unflushed``).
            self._unflushed.update(partitions)
        return futs

    async def _maybe_heartbeat(self) -> None:
        """Tell every person partition how far event time has come, so timers fire when no events arrive.

        Sent every heartbeat period, busy or idle: a partition that gets no events must still see time move."""
        assert self.producer is not None and self.consumer is not None
        if time.monotonic() - self._last_heartbeat < self.s.heartbeat_s or not self.consumer.assignment():
            return
        self._last_heartbeat = time.monotonic()
        wm, caught_up = await self._source_state(int(time.time() * 1000))
        # While a backlog is read, the heartbeat only moves event time on: closing the sink batches every
        # heartbeat made them a second's worth of events, not CDP_SINK_BATCH_ROWS (flush marks follow once the
        # ingest has caught up, and at once when input pauses).
        await asyncio.gather(*await self._send_flush(list(range(self.s.partitions)), wm, flush=caught_up))
