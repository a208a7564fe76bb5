"""Person stage adapter: envelopes from the person-partitioned topic -> core -> ClickHouse, state, action topics.

A partition's consecutive envelopes form sink batches (core.batching: cut where the envelopes alone say, so a
replay forms the same batches). Order of effects per batch, for at-least-once without loss: (1) events and
actions into ClickHouse (deduplicating insert token = topic/partition/offset range), (2) actions to their topics
(acknowledged), (3) person state into the table. Faust commits the envelopes' offsets only after this returns. A
crash anywhere replays the batch; ClickHouse skips an insert whose token it has seen, state that was already
written makes the replay drop the duplicates, and action ids make a re-sent action the same action. ClickHouse's
failures are ``streams.sink_writer``'s: an outage holds the partition until it ends; the rows ClickHouse refuses
become bad rows of the batch, sent and acknowledged with its others, and the rest of the batch lands.

Each partition's batches are carried out in order by their own task; different partitions' batches at the same
time. While a partition's earlier batches are still being carried out (the stage is behind), a batch's states are
written with a later batch's, at a checkpoint (``PersonStage.take``), and its envelopes acknowledged then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from core import exact_json
from core.batching import BatchCutter, SinkBatch
from core.clock import iso
from core.envelope import EncodedEntry, Entry, NewerEnvelopeError, decode_envelope, encode_envelopes, entry_event
from core.ids import partition_for
from core.person import PersonState, fire_due, fold_entries
from core.person_merge import Outcome, apply_command, decode_command, is_command
from core.rows import action_row
from core.split import apply_split, put_in_place
from core.timers import TimerQueue, WatermarkTracker
from rules.loader import RuleSet
from schemas.bad_rows import BadRow, Stage
from sinks.clickhouse import ACTION_COLUMNS, EVENT_COLUMNS, ClickHouseSink
from streams import metrics
from streams.sink_writer import SinkWriter, rejected_bad_row, row_fields

log = logging.getLogger("cdp.persons")


class StateStore(Protocol):
    """Person states by partition (streams.state.TableState: the Faust table's storage and changelog)."""

    def get(self, partition: int, key: bytes) -> bytes | None: ...
    def items(self) -> Iterable[tuple[bytes, bytes]]: ...
    async def write(self, partition: int, states: dict[bytes, bytes]) -> None: ...


# Sends one action (channel, key, value) and returns an awaitable acknowledgement.
ActionSender = Callable[[str, bytes, bytes], Awaitable[Awaitable[Any]]]
# Sends one bad row (key, row) to the dead-letter topic and returns an awaitable acknowledgement.
BadRowSender = Callable[[bytes | None, BadRow], Awaitable[Awaitable[Any]]]
KeyedBadRow = tuple[bytes | None, BadRow]
# Sends one message (partition, key, value) to this stage's own topic and returns an awaitable acknowledgement.
ForwardSender = Callable[[int, bytes, bytes], Awaitable[Awaitable[Any]]]


def _failure(payload: bytes, reason: str, exc: Exception, now_ms: int, **source: Any) -> BadRow:
    """A bad row of this stage: what failed (``payload``), why, and where it was read."""
    return BadRow.of(payload, Stage.process, reason, [{"field": "$", "error": repr(exc)}], iso(now_ms), source=source)


@dataclass(slots=True)
class Effects:
    """What one envelope (or a batch of them) must do outside the process, computed up front so the next
    envelopes can be processed while these are carried out."""

    seq: int
    partition: int
    token: str  # ClickHouse insert deduplication token: topic:partition:offset range
    event_lines: list[bytes]
    actions: list[tuple[str, str, dict[str, Any]]]
    # The persons it touched, as objects while the batch is open; encoded once per person when it closes.
    persons: dict[str, PersonState]
    cpu_s: float
    entries: int = 0  # events the envelope carried (duplicates included)
    flush: bool = True
    envelopes: int = 1
    states: dict[str, bytes] = field(default_factory=dict)  # encoded persons, to write
    # What this stage could not process, to the dead-letter topic: an undecodable envelope; the events of a
    # person whose processing raised; a person whose timers raised (one of them never stops the partition).
    bad_rows: list[KeyedBadRow] = field(default_factory=list)
    # Messages to other partitions of this stage's own topic, (partition, key, value): merge commands carried on,
    # events of a OneID merged away forwarded to its survivor. Sent, acknowledged, before the states are written.
    forwards: list[tuple[int, bytes, bytes]] = field(default_factory=list)


def merge_effects(batch: SinkBatch, topic: str) -> Effects:
    """One batch's effects: every envelope's rows and actions in order; each person's latest state."""
    parts: list[Effects] = [fx for fx, _ in batch.items]
    if len(parts) == 1:
        fx = parts[0]
        fx.token = batch.token(topic)
        return fx
    lines: list[bytes] = []
    actions: list[tuple[str, str, dict[str, Any]]] = []
    persons: dict[str, PersonState] = {}
    bad_rows: list[KeyedBadRow] = []
    forwards: list[tuple[int, bytes, bytes]] = []
    for fx in parts:
        lines.extend(fx.event_lines)
        actions.extend(fx.actions)
        persons.update(fx.persons)
        bad_rows.extend(fx.bad_rows)
        forwards.extend(fx.forwards)
    return Effects(parts[-1].seq, batch.partition, batch.token(topic), lines, actions, persons,
                   sum(fx.cpu_s for fx in parts), batch.entries, parts[-1].flush, len(parts), bad_rows=bad_rows,
                   forwards=forwards)


@dataclass
class StageStats:
    envelopes: int = 0
    events_sunk: int = 0
    duplicates: int = 0
    actions: int = 0
    bad_rows: int = 0  # dead-lettered by this stage
    last_sunk_at: float | None = None  # wall clock of the last insert of event rows
    dropped: dict[str, int] = field(default_factory=dict)


class PersonStage:
    def __init__(self, rules: RuleSet, store: StateStore, sink: ClickHouseSink | None, send_action: ActionSender,
                 partitions: int, topic: str, dedupe_window_ms: int = 7 * 86_400_000,
                 batch_rows: int = 20_000, batch_envelopes: int = 50, cache_persons: int = 50_000,
                 insert_threads: int = 1, checkpoint_rows: int | None = None,
                 send_bad_row: BadRowSender | None = None, raw_topic: str = "cdp.events.raw",
                 send_forward: ForwardSender | None = None, salt: str = ""):
        self.rules = rules
        self.store = store
        self.sink = sink
        self.send_action = send_action
        self.send_bad_row = send_bad_row  # None: bad rows are logged and counted only (tools, tests)
        self.send_forward = send_forward  # None: merges and forwarded events are logged and dropped (tools, tests)
        self.salt = salt  # CDP_PII_SALT: identifiers of older envelopes are hashed with it, a split's contacts too
        self.raw_topic = raw_topic  # where the events of an entry came from (a bad row's source)
        self.partitions = partitions
        self.topic = topic
        self.dedupe_window_ms = dedupe_window_ms
        self.watermarks = WatermarkTracker()
        self.timers = TimerQueue()
        self.stats = StageStats()
        self.stopped: str | None = None  # why the stage stopped for good (``/healthz`` reports it, not ready)
        self._timers_loaded = False
        # Person states as objects, least recently used first: pk -> (partition, state). It holds every state
        # computed by envelopes whose effects are not written yet (the table is behind for those:
        # ``_unwritten``, pk -> seq of the last envelope that changed it) and, up to ``cache_persons``, recently
        # written ones, so a returning person is not read and decoded again. Only this stage writes its
        # partitions' states, so an entry stays true until the partition is read again or leaves this worker;
        # both drop the partition's entries.
        self._cache: dict[str, tuple[int, PersonState]] = {}
        self._unwritten: dict[str, int] = {}
        self.cache_persons = cache_persons
        self._seq = 0
        self.batches = BatchCutter(batch_rows, batch_envelopes)
        self._last_offset: dict[int, int] = {}  # partition -> last envelope offset processed
        # Batches carried out (or queued) whose states wait for a later batch's checkpoint (``take``), by
        # partition: the persons they touched, their envelopes' handles, their events.
        self._uncheckpointed: dict[int, tuple[dict[str, PersonState], list[Any], int]] = {}
        self.checkpoint_rows = checkpoint_rows if checkpoint_rows is not None else 5 * batch_rows
        # ClickHouse calls block; they run on threads so the event loop keeps Kafka heartbeats going, and several
        # partitions' inserts can run at once (the engine releases Python's lock while it works).
        self._sink_thread = ThreadPoolExecutor(max_workers=insert_threads, thread_name_prefix="cdp-sink")
        self.writer = SinkWriter(sink, self._sink_thread) if sink is not None else None

    def on_rebalance(self, assigned: set[int] | None = None) -> None:
        """Partitions moved: rebuild the timer queue from the state of the partitions now held, and forget the
        open batches of partitions no longer held (their envelopes were not acknowledged: the new owner reads
        them again, from the same batch boundary)."""
        self._timers_loaded = False
        if assigned is not None:
            for p in [p for p in {*self.batches.open, *self._uncheckpointed} if p not in assigned]:
                self.reset_partition(p)
            gone = {p for p, _ in self._cache.values() if p not in assigned}
            if gone:
                self._forget(lambda p: p in gone)

    def rewound(self, partition: int, offset: int) -> bool:
        """An envelope at or before one already processed: the partition is being read again from its commit."""
        last = self._last_offset.get(partition)
        return last is not None and offset <= last

    def reset_partition(self, partition: int) -> None:
        """Forget what was processed of a partition but not carried out: its open batch and the person states it
        computed. Call only when no batch of the partition is waiting to be carried out."""
        self.batches.discard(partition)
        self._uncheckpointed.pop(partition, None)  # never acknowledged: read again from the last checkpoint
        self._last_offset.pop(partition, None)
        self._forget(lambda p: p == partition)

    def _forget(self, partition_gone: Callable[[int], bool]) -> None:
        self._cache = {pk: v for pk, v in self._cache.items() if not partition_gone(v[0])}
        self._unwritten = {pk: seq for pk, seq in self._unwritten.items() if pk in self._cache}

    def take(self, partition: int, offset: int, value: bytes, handle: Any,
             behind: bool = False) -> tuple[Effects, list[Any]] | None:
        """Process one envelope; when it closes its partition's sink batch, the batch's effects and the handles
        of envelopes to acknowledge once the effects are carried out.

        ``behind``: the partition's earlier batches are still being carried out. Then a batch that does not end
        a catch-up (no ``flush``) is not a checkpoint: its rows and actions go out as usual, but its persons'
        states are written, and its envelopes acknowledged, with a later batch's (at most ``checkpoint_rows``
        events later): a person in both is encoded and written once, not twice, exactly when the stage has more
        work than it can keep up with. Recovery is unchanged: the commit is still a batch boundary, so a replay
        forms the same batches (ClickHouse skips their inserts by token, actions keep their ids) and rebuilds
        the states from the last ones written."""
        fx = self.process(partition, offset, value)
        self._last_offset[partition] = offset
        batch = self.batches.add(partition, offset, fx.entries, fx.flush, (fx, handle))
        if batch is None:
            return None
        merged = merge_effects(batch, self.topic)
        persons, handles, rows = self._uncheckpointed.pop(partition, ({}, [], 0))
        persons.update(merged.persons)
        handles.extend(h for _, h in batch.items)
        rows += batch.entries
        if behind and not merged.flush and rows < self.checkpoint_rows:
            self._uncheckpointed[partition] = (persons, handles, rows)
            merged.persons = {}
            return merged, []
        merged.persons = persons
        # Encoded now, before any later envelope changes these objects: the state as of the batch's end, once
        # per person per checkpoint however many of its envelopes touched them.
        merged.states = {pk: st.to_bytes() for pk, st in persons.items()}
        return merged, handles

    def _load_timers(self) -> None:
        self.timers.clear()
        for k, v in self.store.items():
            try:
                st = PersonState.from_bytes(v)
            except Exception as exc:  # that person's events are dead-lettered when they come (``process``)
                log.error("stored state of %r cannot be read: %r", k, exc)
                continue
            due = st.next_deadline()
            if due is not None:
                key = k.decode() if isinstance(k, bytes) else k
                self.timers.schedule(partition_for(key, self.partitions), due, key)
        self._timers_loaded = True

    def _state(self, states: dict[str, PersonState], partition: int, pk: str) -> PersonState:
        st = states.get(pk)
        if st is None:
            # The newest state is the cached one (it may be ahead of the table), else the table's.
            cached = self._cache.get(pk)
            if cached is not None:
                st = cached[1]
            else:
                raw = self.store.get(partition, pk.encode())
                st = PersonState.from_bytes(raw) if raw is not None else PersonState.new(pk)
            states[pk] = st
        return st

    def process(self, partition: int, offset: int, value: bytes) -> Effects:
        """The core's work on one envelope (no I/O). Its effects must then go through ``complete``, in order."""
        t0 = time.perf_counter()
        if not self._timers_loaded:
            self._load_timers()
        now_ms = int(time.time() * 1000)
        if is_command(value):
            return self._command(partition, offset, value, now_ms, t0)
        try:
            env = decode_envelope(value, self.salt)
        except NewerEnvelopeError:
            # Written by an upgraded ingest while this worker is not upgraded yet: stopping here leaves it
            # unacknowledged, so an upgraded worker reads it (skipping it would lose its events).
            self.stopped = f"envelope at {self.topic}:{partition}:{offset} is newer than this worker: upgrade it"
            log.critical(self.stopped)
            raise
        except Exception as exc:  # a bad envelope is dead-lettered and skipped, never a crash
            log.error("undecodable envelope at %s:%s:%s: %r", self.topic, partition, offset, exc)
            bad = _failure(value, "bad_envelope", exc, now_ms, topic=self.topic, partition=partition, offset=offset)
            self._seq += 1
            return Effects(self._seq, partition, f"{self.topic}:{partition}:{offset}", [], [], {}, 0.0,
                           bad_rows=[(None, bad)])
        states: dict[str, PersonState] = {}
        bad_rows: list[KeyedBadRow] = []
        live, forwards = self._forward_merged(env.entries, states, partition, env.source, env.watermark)
        fold = fold_entries(live, lambda pk: self._state(states, partition, pk), self.rules,
                            self.dedupe_window_ms)
        for pk, entries, err in fold.failed:
            bad_rows += self._unprocessable(pk, entries, err, partition, offset, now_ms)
        if fold.dropped:
            self._count_dropped(fold.dropped)
        for pk, due in fold.deadlines:
            self.timers.schedule(partition, due, pk)
        # Counted once per envelope: a Prometheus counter takes a lock at every call.
        self.stats.duplicates += fold.duplicates
        metrics.duplicates.inc(fold.duplicates)
        actions: list[tuple[str, str, dict[str, Any]]] = []
        wm = self.watermarks.update(partition, env.source, env.watermark, now_ms)
        metrics.watermark_lag.labels(str(partition)).set(max(0.0, (now_ms - wm) / 1000))
        for pk in self.timers.pop_due(partition, wm):
            try:
                st = self._state(states, partition, pk)
                res = fire_due(st, wm, self.rules, now_ms)
            except Exception as exc:  # this person's timers, not the partition: not scheduled again till its next event
                log.exception("timers of %s at %s:%s:%s failed", pk, self.topic, partition, offset)
                record = orjson.dumps({"person_key": pk, "watermark": iso(wm)})
                bad_rows.append((pk.encode(), _failure(record, "timer_failed", exc, now_ms, topic=self.topic,
                                                       partition=partition, offset=offset)))
                continue
            actions.extend((a.channel, a.oneid, a.action) for a in res.actions)
            self._count_dropped(res.dropped)
            nxt = st.next_deadline()
            if nxt is not None:
                self.timers.schedule(partition, nxt, pk)
        self._seq += 1
        self._touch(partition, states)
        return Effects(self._seq, partition, f"{self.topic}:{partition}:{offset}", fold.event_lines, actions,
                       states, time.perf_counter() - t0,
                       len(env.entries), env.flush, bad_rows=bad_rows, forwards=forwards)

    def _touch(self, partition: int, states: dict[str, PersonState]) -> None:
        cache, unwritten = self._cache, self._unwritten
        for pk, st in states.items():
            cache.pop(pk, None)  # to the most recently used end
            cache[pk] = (partition, st)
            unwritten[pk] = self._seq

    def _forward_merged(self, entries: tuple[Entry, ...], states: dict[str, PersonState], partition: int,
                        source: str, watermark: int) -> tuple[tuple[Entry, ...], list[tuple[int, bytes, bytes]]]:
        """The entries of live persons, and envelopes forwarding the others' (a OneID merged away, reached through
        a directory replica that was behind) to their survivors' partitions."""
        moved: dict[str, list[EncodedEntry]] = {}
        for pk in {en.pk for en in entries}:
            try:
                into = self._state(states, partition, pk).merged_into
            except Exception:  # a stored state that cannot be read: the fold dead-letters this person's events
                continue
            if into:
                moved[pk] = []
        if not moved:
            return entries, []
        keep = []
        by_target: dict[str, list[EncodedEntry]] = {}
        for en in entries:
            if en.pk in moved:
                into = states[en.pk].merged_into
                by_target.setdefault(into, []).append(en.encoded(into))
            else:
                keep.append(en)
        for pk in moved:
            del states[pk]  # nothing of theirs changed: not written again
        out = []
        for into, group in by_target.items():
            p = partition_for(into, self.partitions)
            out += [(p, into.encode(), raw) for raw in encode_envelopes(source, watermark, group, True)]
        return tuple(keep), out

    def _command(self, partition: int, offset: int, value: bytes, now_ms: int, t0: float) -> Effects:
        """A merge or absorb command (core.person_merge), or a split's (core.split), on the state it is addressed
        to."""
        self._seq += 1
        token = f"{self.topic}:{partition}:{offset}"
        states: dict[str, PersonState] = {}
        forwards: list[tuple[int, bytes, bytes]] = []
        try:
            cmd = decode_command(value)
            pk = cmd.from_oneid if cmd.cmd in ("merge", "split") else cmd.into_oneid
            st = self._state(states, partition, pk)
            before = st.next_deadline()
            if cmd.cmd == "split":  # the old person's state becomes its new persons'
                sends = apply_split(st, cmd.state, self.salt, cmd.at)
                forwards += [(partition_for(o, self.partitions), o.encode(), msg) for o, msg in sends]
                out = Outcome(True)
            elif cmd.cmd == "replace":  # a new person of a split: its rebuilt state
                put_in_place(st, PersonState.from_bytes(cmd.state))
                out = Outcome(True)
            else:
                out = apply_command(cmd, st, self.rules, self.dedupe_window_ms)
        except Exception as exc:  # a bad command is dead-lettered and skipped, never a crash
            log.error("person command at %s:%s:%s failed: %r", self.topic, partition, offset, exc)
            bad = _failure(value, "bad_command", exc, now_ms, topic=self.topic, partition=partition, offset=offset)
            return Effects(self._seq, partition, token, [], [], {}, 0.0, bad_rows=[(None, bad)])
        if out.send is not None:
            forwards.append((partition_for(out.to, self.partitions), out.to.encode(), out.send))
        if not out.changed:
            states.clear()
        else:
            after = st.next_deadline()
            if after is not None and after != before:
                self.timers.schedule(partition, after, pk)
        self._touch(partition, states)
        return Effects(self._seq, partition, token, [], [], states, time.perf_counter() - t0, 0, True,
                       forwards=forwards)

    def _unprocessable(self, pk: str, entries: list[Entry], exc: Exception, partition: int, offset: int,
                       now_ms: int) -> list[KeyedBadRow]:
        """One bad row per event of a person whose processing raised, each with the event as an app could send
        it again (``cdp dlq replay`` after the fix). The failed call leaves the person's state as it was
        (``apply_events`` undoes all it did), so the replay is taken, not dropped as a duplicate nor counted
        twice."""
        log.error("person %s at %s:%s:%s: %d events dead-lettered", pk, self.topic, partition, offset,
                  len(entries), exc_info=exc)
        out: list[KeyedBadRow] = []
        for en in entries:
            try:
                payload = exact_json.dumps(entry_event(en))
            except Exception:  # the entry itself is what failed: keep what is known of it
                payload = orjson.dumps({"message_id": en.message_id, "person_key": pk})
            out.append((pk.encode(), _failure(payload, "unprocessable", exc, now_ms, topic=self.raw_topic,
                                              partition=en.src[0], offset=en.src[1],
                                              envelope=f"{self.topic}:{partition}:{offset}")))
        return out

    async def complete(self, fx: Effects) -> None:
        """Carry out a batch's effects: (1) ClickHouse, (2) action topics and dead-letter topic, (3) state. Call in
        batch order within a partition; batches of different partitions may be carried out at the same time (they
        share no person)."""
        t0 = time.perf_counter()
        sunk = len(fx.event_lines)
        if self.writer is not None and (fx.event_lines or fx.actions):
            refused = await self._insert(fx)
            sunk -= sum(1 for _, row in refused if row.source["table"] == "events")
            # Rows ClickHouse refused are effects of the batch like its other bad rows.
            fx.bad_rows = [*fx.bad_rows, *refused]
            if fx.event_lines:
                self.stats.last_sunk_at = time.time()
        self.stats.events_sunk += sunk
        metrics.events_sunk.inc(sunk)
        # Actions and bad rows sent together, all acknowledged before the state is written and the batch's
        # envelopes are (at-least-once). Without a sender (tools, tests) bad rows are only logged and counted.
        acks = [await self.send_action(ch, oneid.encode(), orjson.dumps(a)) for ch, oneid, a in fx.actions]
        if fx.forwards:
            if self.send_forward is None:
                log.error("%d messages to other partitions dropped: this stage has no sender", len(fx.forwards))
            else:
                acks += [await self.send_forward(p, key, value) for p, key, value in fx.forwards]
        if self.send_bad_row is not None:
            acks += [await self.send_bad_row(key, row) for key, row in fx.bad_rows]
        for ack in acks:
            await ack
        for ch, _, a in fx.actions:
            metrics.actions.labels(ch, a["rule_id"]).inc()
        self.stats.actions += len(fx.actions)
        for _, row in fx.bad_rows:
            metrics.bad_rows.labels(row.stage.value, row.reason).inc()
        self.stats.bad_rows += len(fx.bad_rows)
        await self._write_states(fx)
        self.stats.envelopes += fx.envelopes
        metrics.envelope_seconds.observe(fx.cpu_s + time.perf_counter() - t0)

    async def _write_states(self, fx: Effects) -> None:
        await self.store.write(fx.partition, {pk.encode(): raw for pk, raw in fx.states.items()})
        unwritten = self._unwritten
        for pk in fx.states:
            # Batches of a partition complete in order: unless a later envelope changed the person again, the
            # table now holds their state.
            if unwritten.get(pk, fx.seq + 1) <= fx.seq:
                del unwritten[pk]
        cache = self._cache
        excess = len(cache) - self.cache_persons
        if excess > 0:
            # Least recently used first, skipping states not written yet (another partition's open batch may
            # hold them): the table is behind for those.
            evict = []
            for pk in cache:
                if pk not in unwritten:
                    evict.append(pk)
                    if len(evict) == excess:
                        break
            for pk in evict:
                del cache[pk]

    async def _insert(self, fx: Effects) -> list[KeyedBadRow]:
        """The batch's event and action rows into ClickHouse (``SinkWriter``: a transient failure is waited out,
        holding the partition; the rows ClickHouse refuses come back as bad rows, keyed by their OneID)."""
        assert self.writer is not None
        now_ms = int(time.time() * 1000)
        out: list[KeyedBadRow] = []
        # A sink batch holds each messageId once per person (apply_events drops the duplicates), so no two rows
        # share the events table's sorting key (oneid, ts, message_id).
        for r in await self.writer.insert("events", fx.event_lines, EVENT_COLUMNS, f"{fx.token}:events",
                                          unique_keys=True, compact=True):
            row = row_fields(r.line, EVENT_COLUMNS)
            oneid = row.get("oneid")
            out.append(rejected_bad_row(r, "events", now_ms, oneid.encode() if isinstance(oneid, str) else None,
                                        topic=self.raw_topic, partition=row.get("raw_partition"),
                                        offset=row.get("raw_offset")))
        action_lines = [action_row(a) for _, _, a in fx.actions]
        for r in await self.writer.insert("actions", action_lines, ACTION_COLUMNS, f"{fx.token}:actions"):
            row = row_fields(r.line, ACTION_COLUMNS)
            oneid = row.get("oneid")
            out.append(rejected_bad_row(r, "actions", now_ms, oneid.encode() if isinstance(oneid, str) else None,
                                        action_id=row.get("action_id")))
        return out

    def _count_dropped(self, dropped: list) -> None:
        for d in dropped:
            self.stats.dropped[d.reason] = self.stats.dropped.get(d.reason, 0) + 1
            metrics.dropped.labels(d.reason).inc()
