"""The person stage keeps recently used person states decoded (``CDP_STATE_CACHE_PERSONS``). What a user would
notice if it were wrong: a duplicate not caught, an event lost on replay, a trigger forgotten. The cache must
never hold a state newer than what is written unless that state's batch is still to be carried out, and must
forget partitions it re-reads or no longer owns."""

from __future__ import annotations

import orjson
import pytest

from core.envelope import ENVELOPE_VERSION, NewerEnvelopeError, encode_entry, encode_envelopes
from core.ids import partition_for
from core.person import PersonState
from rules.loader import load_rules
from streams.persons import PersonStage

T0 = 1_790_000_000_000
RULES = load_rules("rules")


class MemoryStore:
    """The state table as the stage sees it; counts reads so a test can tell a cache hit from a table read."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.reads = 0

    def get(self, partition: int, key: bytes) -> bytes | None:
        self.reads += 1
        return self.data.get(key)

    def items(self):
        return list(self.data.items())

    async def write(self, partition: int, states: dict[bytes, bytes]) -> None:
        self.data.update(states)


async def no_actions(channel: str, key: bytes, value: bytes):
    raise AssertionError("no action expected")


def envelope(users: list[str], first_offset: int, batch: int, flush: bool = True) -> bytes:
    entries = []
    for i, u in enumerate(users):
        ev = {"type": "track", "message_id": f"m-{batch}-{i}-{u}", "event": "product_view", "user_id": u}
        entries.append(encode_entry(f"user_id:{u}", T0 + batch * 1000 + i, T0, 0, first_offset + i,
                                    orjson.dumps(ev)))
    return encode_envelopes("test", T0, entries, flush=flush)[0]


def stage(store: MemoryStore, cache: int) -> PersonStage:
    # One envelope per sink batch (every envelope is marked flush), one partition.
    return PersonStage(RULES, store, None, no_actions, 1, "t", batch_rows=10_000, batch_envelopes=1,
                       cache_persons=cache)


def state_of(store: MemoryStore, user: str) -> PersonState:
    return PersonState.from_bytes(store.data[f"user_id:{user}".encode()])


async def test_returning_persons_are_not_read_again_and_their_state_is_written():
    store = MemoryStore()
    st = stage(store, cache=100)
    for b in range(3):
        fx, _ = st.take(0, b, envelope(["a", "b"], b * 10, b), None)
        await st.complete(fx)
    assert store.reads == 2  # once each, when first seen
    assert state_of(store, "a").n_events == 3 and state_of(store, "b").n_events == 3


async def test_eviction_keeps_every_state_whose_batch_is_not_written_yet():
    store = MemoryStore()
    st = stage(store, cache=1)
    # Three batches processed before any is carried out (the stage pipelines them).
    done = [st.take(0, b, envelope([f"u{b}", "x"], b * 10, b), None)[0] for b in range(3)]
    await st.complete(done[0])  # written: u0, x (as of batch 0). x is changed again by batches 1 and 2.
    assert {"user_id:u1", "user_id:u2", "user_id:x"} <= set(st._cache)
    # A new envelope for x must see its newest state (3 events), not the one written after batch 0.
    fx, _ = st.take(0, 3, envelope(["x"], 30, 3), None)
    for fx_ in (done[1], done[2], fx):
        await st.complete(fx_)
    assert state_of(store, "x").n_events == 4
    assert len(st._cache) == 1  # over the bound only while states were unwritten


async def test_an_evicted_person_is_read_back_with_their_duplicates_remembered():
    store = MemoryStore()
    st = stage(store, cache=1)
    fx, _ = st.take(0, 0, envelope(["a"], 0, 0), None)
    await st.complete(fx)
    fx, _ = st.take(0, 1, envelope(["b"], 10, 1), None)
    await st.complete(fx)  # evicts a
    assert "user_id:a" not in st._cache
    again = envelope(["a"], 0, 0)  # the same message as before (an SDK retry)
    fx, _ = st.take(0, 2, again, None)
    assert fx.event_lines == [] and st.stats.duplicates == 1


async def test_a_partition_read_again_forgets_what_it_computed_and_counts_each_event_once():
    store = MemoryStore()
    st = stage(store, cache=100)
    fx, _ = st.take(0, 0, envelope(["a"], 0, 0), None)
    await st.complete(fx)
    st.take(0, 1, envelope(["a"], 10, 1), None)  # processed, never carried out (the worker died, say)
    assert st.rewound(0, 1)
    st.reset_partition(0)
    fx, _ = st.take(0, 1, envelope(["a"], 10, 1), None)  # the same envelope, read again
    assert len(fx.event_lines) == 1  # not taken for a duplicate of itself
    await st.complete(fx)
    assert state_of(store, "a").n_events == 2


async def test_a_partition_that_left_this_worker_is_forgotten():
    store = MemoryStore()
    st = PersonStage(RULES, store, None, no_actions, 2, "t", batch_rows=10_000, batch_envelopes=1)
    users = {p: next(f"u{i}" for i in range(100) if partition_for(f"user_id:u{i}", 2) == p) for p in (0, 1)}
    for p, u in users.items():
        fx, _ = st.take(p, 0, envelope([u], 0, p), None)
        await st.complete(fx)
    st.on_rebalance({0})
    assert f"user_id:{users[0]}" in st._cache and f"user_id:{users[1]}" not in st._cache


async def test_an_open_batch_of_another_partition_keeps_its_states_when_one_is_written():
    """Partition 1's batch is still open (not carried out) when partition 0's is written and the cache is over
    its bound: partition 1's person must stay cached, or their next event would be folded into the stale state
    from the table and the first one forgotten (counted twice if sent again)."""
    store = MemoryStore()
    st = PersonStage(RULES, store, None, no_actions, 2, "t", batch_rows=10_000, batch_envelopes=10,
                     cache_persons=0)
    users = {p: next(f"u{i}" for i in range(100) if partition_for(f"user_id:u{i}", 2) == p) for p in (0, 1)}

    def unflushed(user: str, offset: int, batch: int) -> bytes:
        ev = {"type": "track", "message_id": f"m-{batch}", "event": "product_view", "user_id": user}
        entry = encode_entry(f"user_id:{user}", T0 + batch, T0, 0, offset, orjson.dumps(ev))
        return encode_envelopes("test", T0, [entry], flush=False)[0]

    assert st.take(1, 0, unflushed(users[1], 0, 1), None) is None  # partition 1: batch open
    fx, _ = st.take(0, 0, envelope([users[0]], 0, 0), None)
    await st.complete(fx)  # partition 0 written; the cache is over its bound of 0
    assert f"user_id:{users[1]}" in st._cache
    st.take(1, 1, unflushed(users[1], 1, 1), None)  # the same message again: a duplicate
    fx, _ = st.take(1, 2, envelope([users[1]], 2, 2), None)  # closes partition 1's batch
    await st.complete(fx)
    assert st.stats.duplicates == 1 and state_of(store, users[1]).n_events == 2
    assert not st._cache  # all written now: nothing kept beyond the bound


def behind_stage(store: MemoryStore, checkpoint_rows: int = 1_000) -> PersonStage:
    # One envelope per sink batch (batch_envelopes=1), whatever its flush mark.
    return PersonStage(RULES, store, None, no_actions, 1, "t", batch_rows=10_000, batch_envelopes=1,
                       checkpoint_rows=checkpoint_rows)


async def test_while_a_partition_is_behind_its_states_are_written_once_per_checkpoint_with_its_acks():
    """A stage that cannot keep up writes a person seen in several batches once, at the checkpoint, and
    acknowledges those batches' envelopes only then; every batch's rows still go to ClickHouse at once."""
    store = MemoryStore()
    st = behind_stage(store)
    fx0, acks0 = st.take(0, 0, envelope(["a", "b"], 0, 0, flush=False), "h0", behind=True)
    fx1, acks1 = st.take(0, 1, envelope(["a", "c"], 10, 1, flush=False), "h1", behind=True)
    assert (acks0, fx0.states, acks1, fx1.states) == ([], {}, [], {})
    assert len(fx0.event_lines) == 2 and len(fx1.event_lines) == 2
    fx2, acks2 = st.take(0, 2, envelope(["a"], 20, 2, flush=True), "h2", behind=True)  # caught up: checkpoint
    assert acks2 == ["h0", "h1", "h2"]
    assert set(fx2.states) == {"user_id:a", "user_id:b", "user_id:c"}
    for fx in (fx0, fx1, fx2):
        await st.complete(fx)
    assert [state_of(store, u).n_events for u in "abc"] == [3, 1, 1]


async def test_a_checkpoint_is_put_off_by_at_most_its_rows_and_never_when_the_stage_keeps_up():
    store = MemoryStore()
    st = behind_stage(store, checkpoint_rows=3)
    _, acks = st.take(0, 0, envelope(["a", "b"], 0, 0, flush=False), "h0", behind=True)
    assert acks == []
    fx, acks = st.take(0, 1, envelope(["a", "c"], 10, 1, flush=False), "h1", behind=True)  # 4 events >= 3
    assert acks == ["h0", "h1"] and set(fx.states) == {"user_id:a", "user_id:b", "user_id:c"}
    fx, acks = st.take(0, 2, envelope(["d"], 20, 2, flush=False), "h2", behind=False)
    assert acks == ["h2"] and set(fx.states) == {"user_id:d"}


async def test_a_partition_read_again_from_its_checkpoint_drops_the_batches_not_checkpointed():
    """The worker is read again from its last commit (the checkpoint): the batches after it were inserted but
    their states never written; they are formed and counted again exactly as the first time."""
    store = MemoryStore()
    st = behind_stage(store)
    first, _ = st.take(0, 0, envelope(["a"], 0, 0, flush=False), "h0", behind=True)
    await st.complete(first)  # rows inserted, state not written, envelope not acknowledged
    assert store.data == {}
    assert st.rewound(0, 0)
    st.reset_partition(0)
    again, acks = st.take(0, 0, envelope(["a"], 0, 0, flush=False), "h0", behind=False)
    assert again.token == first.token and again.event_lines == first.event_lines  # ClickHouse skips it
    assert acks == ["h0"]
    await st.complete(again)
    assert state_of(store, "a").n_events == 1


def test_an_envelope_from_a_newer_ingest_stops_the_stage_where_a_bad_one_is_skipped():
    """During a rolling upgrade an upgraded ingest may write for a person stage not upgraded yet: its events must
    wait, unacknowledged, for an upgraded worker, not be skipped as a bad envelope would be."""
    st = stage(MemoryStore(), 100)
    assert st.take(0, 0, b"not an envelope", "h0") is not None  # counted, skipped, acknowledged with its batch
    newer = envelope(["a"], 1, 1).replace(b'"v":%d' % ENVELOPE_VERSION, b'"v":%d' % (ENVELOPE_VERSION + 1), 1)
    assert st.stopped is None
    with pytest.raises(NewerEnvelopeError):
        st.take(0, 1, newer, "h1")
    assert st.stopped is not None and "t:0:1" in st.stopped  # /healthz: not ready, and why
