"""Merges in the person stage (streams/persons.py, core/person_merge.py) without a broker: ``merge`` at the
merged-away OneID's partition, ``absorb`` at the survivor's, events and commands that reach a pointer forwarded
along it, and the timers of both persons kept once (docs/identity.md)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from core.envelope import Entry, decode_envelope, encode_entry, encode_envelopes
from core.ids import action_id, partition_for
from core.person import apply_events
from core.person_merge import absorb_command, decode_command, is_command, merge_command
from core.person_state import PersonState
from streams.persons import Effects, PersonStage
from tests.core.helpers import HOUR, RULES, T0, oneid_of

PARTITIONS = 4
TOPIC = "t.internal.events-by-person"
RULE = "cart_not_paid_sms"


def _on_other_partitions(*values: str) -> list[str]:
    """OneIDs of these user ids, each on a partition of its own (so every forward crosses partitions)."""
    out: list[str] = []
    taken: set[int] = set()
    for v in values:
        i = 0
        while True:
            o = oneid_of("user_id", f"{v}-{i}")
            if partition_for(o, PARTITIONS) not in taken:
                break
            i += 1
        taken.add(partition_for(o, PARTITIONS))
        out.append(o)
    return out


O, S, O2 = _on_other_partitions("merged-away", "survivor", "chain")  # noqa: E741 (the design note's names)


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.data.get(key)

    def items(self) -> list[tuple[bytes, bytes]]:
        return list(self.data.items())

    async def write(self, partition: int, states: dict[bytes, bytes]) -> None:
        self.data.update(states)


def _acked() -> Any:
    ack = asyncio.get_running_loop().create_future()
    ack.set_result(None)
    return ack


class Cluster:
    """One person stage over every partition of its topic; what it sends to its own topic is queued and delivered
    (``run``) as Kafka would, in order."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.actions: list[dict[str, Any]] = []
        self.queue: list[tuple[int, bytes, bytes]] = []
        self.offsets: dict[int, int] = defaultdict(int)
        self.sunk: list[dict[str, Any]] = []  # event rows, with the OneID they were sunk under
        self.stage = PersonStage(RULES, self.store, None, self.send_action, PARTITIONS, TOPIC, batch_rows=10_000,
                                 batch_envelopes=1, send_forward=self.send_forward)

    async def send_action(self, channel: str, key: bytes, value: bytes) -> Any:
        self.actions.append(orjson.loads(value))
        return _acked()

    async def send_forward(self, partition: int, key: bytes, value: bytes) -> Any:
        self.queue.append((partition, key, value))
        return _acked()

    async def put(self, partition: int, value: bytes) -> Effects:
        offset = self.offsets[partition]
        self.offsets[partition] += 1
        out = self.stage.take(partition, offset, value, None)
        assert out is not None  # one envelope per batch
        fx, _ = out
        await self.stage.complete(fx)
        self.sunk += [{"oneid": row[0], "message_id": row[1]} for row in map(orjson.loads, fx.event_lines)]
        return fx

    async def to(self, oneid: str, value: bytes) -> Effects:
        return await self.put(partition_for(oneid, PARTITIONS), value)

    async def run(self) -> int:
        """Deliver what was forwarded until nothing is left; how many messages that was."""
        n = 0
        while self.queue:
            p, _, value = self.queue.pop(0)
            await self.put(p, value)
            n += 1
        return n

    def state(self, oneid: str) -> PersonState:
        return PersonState.from_bytes(self.store.data[oneid.encode()])


def event(oneid: str, mid: str, ts: int, name: str = "product_view", **identities: str) -> tuple[str, int, dict]:
    ev: dict[str, Any] = {"type": "track", "message_id": mid, "event": name, "anonymous_id": f"anon-{mid}"}
    if identities:
        ev["identities"] = identities
    return oneid, ts, ev


def envelope(wm: int, *events: tuple[str, int, dict]) -> bytes:
    entries = [encode_entry(pk, ts, ts, 0, i, orjson.dumps(ev)) for i, (pk, ts, ev) in enumerate(events)]
    return encode_envelopes("ingest-1", wm, entries)[0]


def heartbeat(wm: int) -> bytes:
    return encode_envelopes("ingest-1", wm, [])[0]


async def two_persons(c: Cluster) -> None:
    """O: a phone, two views and a cart; S: a view, an older phone. Both states written."""
    await c.to(O, envelope(T0, event(O, "o-id", T0 - 3000, "identify", phone="13800138000"),
                           event(O, "o-v1", T0 - 2000), event(O, "o-v2", T0 - 1000),
                           event(O, "o-cart", T0, "add_to_cart")))
    await c.to(S, envelope(T0, event(S, "s-id", T0 - 9000, "identify", phone="13900139000"),
                           event(S, "s-v1", T0 - 500)))


async def test_a_merge_turns_the_state_into_a_pointer_and_sends_absorb_to_the_survivors_partition():
    c = Cluster()
    await two_persons(c)
    before = c.state(O)
    fx = await c.to(O, merge_command(O, S, T0 + 1, "m-login"))
    ((partition, key, value),) = fx.forwards
    assert (partition, key) == (partition_for(S, PARTITIONS), S.encode())
    cmd = decode_command(value)
    assert (cmd.cmd, cmd.from_oneid, cmd.into_oneid, cmd.at) == ("absorb", O, S, T0 + 1)
    assert PersonState.from_bytes(cmd.state) == before
    pointer = c.state(O)
    assert pointer == PersonState(oneid=O, merged_into=S)
    assert fx.event_lines == [] and fx.actions == [] and c.actions == []


async def test_absorb_merges_counts_contacts_and_seen_into_the_survivor():
    c = Cluster()
    await two_persons(c)
    o, s = c.state(O), c.state(S)
    await c.to(O, merge_command(O, S, T0 + 1, "m-login"))
    assert await c.run() == 1
    merged = c.state(S)
    assert merged.merged_into == "" and merged.absorbed == [O]
    assert merged.n_events == 6 and merged.first_ts == T0 - 9000 and merged.last_ts == T0
    assert merged.counts == {"identify": 2, "product_view": 3, "add_to_cart": 1}
    assert merged.contacts["phone"] == "13800138000"  # O's is the later event's
    assert set(merged.seen) == set(o.seen) | set(s.seen)
    assert merged.pending[RULE] == o.pending[RULE]


async def test_a_redelivered_absorb_changes_nothing():
    c = Cluster()
    await two_persons(c)
    fx = await c.to(O, merge_command(O, S, T0 + 1, "m-login"))
    ((_, _, absorb),) = fx.forwards
    await c.run()
    written = c.store.data[S.encode()]
    again = await c.to(S, absorb)
    assert again.states == {} and again.forwards == [] and c.store.data[S.encode()] == written


async def test_a_redelivered_merge_sends_nothing_again():
    c = Cluster()
    await two_persons(c)
    await c.to(O, merge_command(O, S, T0 + 1, "m-login"))
    await c.run()
    written = c.store.data[S.encode()]
    again = await c.to(O, merge_command(O, S, T0 + 1, "m-login"))
    assert again.forwards == [] and again.states == {}
    assert c.state(O).merged_into == S and c.store.data[S.encode()] == written


async def test_an_event_reaching_a_pointer_is_forwarded_to_the_survivor_and_sunk_there_only():
    c = Cluster()
    await two_persons(c)
    await c.to(O, merge_command(O, S, T0 + 1, "m-login"))
    await c.run()
    c.sunk.clear()
    # A directory replica that is behind still routes to O: one new event and one O had already taken.
    fx = await c.to(O, envelope(T0 + 5000, event(O, "late-1", T0 + 2000), event(O, "o-v1", T0 - 2000)))
    assert fx.event_lines == [] and fx.states == {}
    ((partition, key, value),) = fx.forwards
    assert (partition, key) == (partition_for(S, PARTITIONS), S.encode())
    assert [(en.pk, en.message_id) for en in decode_envelope(value).entries] == [(S, "late-1"), (S, "o-v1")]
    await c.run()
    assert c.sunk == [{"oneid": S, "message_id": "late-1"}]  # o-v1: a duplicate at S
    assert c.state(S).counts["product_view"] == 4 and c.state(O) == PersonState(oneid=O, merged_into=S)


async def test_an_absorb_reaching_a_pointer_is_forwarded_along_it():
    """O2 is merged into S first; O's merge into O2 comes after: its absorb reaches O2's pointer and goes on to S."""
    c = Cluster()
    await two_persons(c)
    await c.to(O2, envelope(T0, event(O2, "o2-v", T0 - 100)))
    await c.to(O2, merge_command(O2, S, T0 + 1))
    await c.run()
    await c.to(O, merge_command(O, O2, T0 + 2))
    (absorb_at_o2,) = c.queue
    assert absorb_at_o2[0] == partition_for(O2, PARTITIONS)
    fx = await c.put(*absorb_at_o2[::2])
    c.queue.clear()
    ((partition, key, value),) = fx.forwards
    cmd = decode_command(value)
    assert (partition, key, cmd.cmd, cmd.from_oneid, cmd.into_oneid) == (
        partition_for(S, PARTITIONS), S.encode(), "absorb", O, S)
    assert fx.states == {} and c.state(O2) == PersonState(oneid=O2, merged_into=S)
    await c.put(partition, value)
    merged = c.state(S)
    assert sorted(merged.absorbed) == sorted([O, O2]) and merged.n_events == 7


async def test_a_trigger_armed_before_a_merge_fires_once_after_it_with_the_action_id_it_would_have_had():
    c = Cluster()
    await two_persons(c)  # O armed the cart reminder at T0 (o-cart)
    await c.to(O, merge_command(O, S, T0 + 1, "m-login"))
    await c.run()
    for oneid in (O, S):  # the watermark passes the deadline on both partitions
        await c.to(oneid, heartbeat(T0 + HOUR))
        await c.to(oneid, heartbeat(T0 + 3 * HOUR))
    (action,) = c.actions
    assert action["action_id"] == action_id(RULE, "o-cart", T0)
    assert (action["oneid"], action["rule_id"], action["to"]) == (S, RULE, {"phone": "13800138000"})
    assert c.state(S).pending == {} and RULE in c.state(S).fired


async def _merge_with_a_paid_order(paid_at: int, paid_by: str) -> Cluster:
    """O armed the reminder at T0; ``paid_by`` (O or S) paid at ``paid_at``; both seen before the merge."""
    c = Cluster()
    await two_persons(c)
    await c.to(paid_by, envelope(T0, event(paid_by, "paid", paid_at, "order_paid")))
    await c.to(O, merge_command(O, S, T0 + 1, "m-login"))
    await c.run()
    await c.to(S, heartbeat(T0 + 3 * HOUR))
    return c


async def test_an_unless_event_the_survivor_saw_inside_the_absorbed_triggers_window_cancels_it():
    c = await _merge_with_a_paid_order(T0 + 10 * 60_000, S)
    assert c.actions == [] and c.state(S).pending == {}


async def test_an_unless_event_outside_the_window_does_not_cancel_the_trigger():
    for paid_at in (T0 - 60_000, T0 + 2 * HOUR):  # before the cart, after its deadline
        c = await _merge_with_a_paid_order(paid_at, S)
        assert [a["action_id"] for a in c.actions] == [action_id(RULE, "o-cart", T0)]


async def test_a_survivors_trigger_is_cancelled_by_the_absorbed_persons_unless_event():
    c = Cluster()
    await c.to(S, envelope(T0, event(S, "s-id", T0 - 100, "identify", phone="13900139000"),
                           event(S, "s-cart", T0, "add_to_cart")))
    await c.to(O, envelope(T0, event(O, "o-paid", T0 + 60_000, "order_paid")))
    await c.to(O, merge_command(O, S, T0 + 1))
    await c.run()
    await c.to(S, heartbeat(T0 + 3 * HOUR))
    assert c.actions == [] and c.state(S).pending == {}


async def test_the_survivors_own_trigger_stays_armed_when_the_absorbed_earlier_one_is_cancelled():
    """O armed at T0; S paid at T0+10min (inside O's window) and then armed at T0+20min. One person with all these
    events has the T0+20min trigger armed: O's is cancelled by the payment, S's is not."""
    c = Cluster()
    await two_persons(c)
    await c.to(S, envelope(T0, event(S, "s-paid", T0 + 10 * 60_000, "order_paid"),
                           event(S, "s-cart", T0 + 20 * 60_000, "add_to_cart")))
    assert c.state(S).pending[RULE].message_id == "s-cart"
    await c.to(O, merge_command(O, S, T0 + 1))
    await c.run()
    assert c.state(S).pending[RULE].message_id == "s-cart"
    await c.to(S, heartbeat(T0 + 3 * HOUR))
    assert [a["action_id"] for a in c.actions] == [action_id(RULE, "s-cart", T0 + 20 * 60_000)]


NAMES = ("product_view", "add_to_cart", "order_paid", "identify")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 4 * HOUR), st.sampled_from("OSx"),
                          st.booleans()), min_size=1, max_size=12),
       st.integers(0, 12), st.lists(st.integers(0, 11), max_size=4))
def test_merge_absorb_and_events_count_each_event_once_as_one_persons_fold_does(events, cut, redelivered):
    """Events split between O and S, some before the merge and some after (to S, or to O through a replica that
    is behind: ``x``), some delivered again after the merge: the survivor ends as one person's fold of them all."""
    asyncio.run(_chain(events, cut, redelivered))


async def _chain(events: list[tuple[str, int, str, bool]], cut: int, redelivered: list[int]) -> None:
    c = Cluster()
    msgs = []
    for i, (name, dt, who, phone) in enumerate(events):
        ids = {"phone": f"1380013{i:04d}"} if phone else {}
        msgs.append((name, T0 + dt, f"m{i}", who, ids))

    def env(to: str, batch: list[tuple[str, int, str, str, dict]]) -> bytes:
        return envelope(T0, *[event(to, mid, ts, name, **ids) for name, ts, mid, _, ids in batch])

    before, after = msgs[:cut], msgs[cut:]
    for oneid in (O, S):
        mine = [m for m in before if (O if m[3] in "Ox" else S) == oneid]
        if mine:
            await c.to(oneid, env(oneid, mine))
    await c.to(O, merge_command(O, S, T0 + 1))
    await c.run()
    for m in after:
        to = O if m[3] == "x" else S
        await c.to(to, env(to, [m]))
        await c.run()
    for i in redelivered:
        if i < len(msgs):
            await c.to(O, env(O, [msgs[i]]))
            await c.run()

    one = PersonState.new(S)
    apply_events(one, [Entry.of_event(S, ts, ts, (0, 0), {"type": "track", "message_id": mid, "event": name,
                                                          **({"identities": ids} if ids else {})})
                       for name, ts, mid, _, ids in msgs], RULES)
    merged = c.state(S)
    assert (merged.n_events, merged.first_ts, merged.last_ts) == (one.n_events, one.first_ts, one.last_ts)
    assert (merged.counts, merged.last_seen, merged.contacts) == (one.counts, one.last_seen, one.contacts)
    assert set(merged.seen) == set(one.seen)
    assert sorted(r["message_id"] for r in c.sunk) == sorted(m[2] for m in msgs)  # each sunk once
    assert not any(is_command(v) for _, _, v in c.queue)


def test_the_absorb_command_carries_the_whole_state():
    st_ = PersonState(oneid=O, n_events=3, counts={"a": 3})
    cmd = decode_command(absorb_command(st_, S, T0))
    assert PersonState.from_bytes(cmd.state) == st_ and (cmd.from_oneid, cmd.into_oneid) == (O, S)
