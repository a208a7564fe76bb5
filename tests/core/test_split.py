"""core.split: a split person's events reassigned by their primary identifier, states rebuilt from them and
completed with what only the old state holds (raw contacts, triggers that fired)."""

from __future__ import annotations

from core.ids import identifier_hash
from core.person import PersonState, apply_events, fire_due
from core.person_merge import decode_command
from core.split import (
    EventRecord,
    apply_split,
    complete_state,
    decode_parts,
    is_split_request,
    reassign,
    rebuild_states,
    split_command,
    split_request,
)
from tests.core.helpers import RULES, entry, identify

UA = "user_id:ua"  # the entries' pk: apply_events does not read it (the state given is the person)

SALT = "s"
T0 = 1_790_000_000_000
HOUR = 3_600_000
A, B = "o_a", "o_b"
HA, HB = identifier_hash(SALT, "user_id", "ua"), identifier_hash(SALT, "phone", "13900000002")


def rec(mid: str, name: str, ts: int, id_hash: str, oneid: str = A) -> EventRecord:
    return EventRecord(mid, oneid, id_hash, {"type": "track", "event": name, "properties": {}}, ts, ts + 5, (0, 0))


def test_events_go_to_the_new_person_holding_their_primary_identifier():
    events = [rec("a1", "product_view", T0, HA), rec("b1", "product_view", T0, HB), rec("old", "login", T0, "")]
    assert reassign(events, {A: [HA], B: [HB]}) == {"a1": A, "b1": B, "old": A}


def test_rebuilt_states_count_each_new_persons_events_only():
    events = [rec("a1", "add_to_cart", T0, HA), rec("a2", "order_paid", T0 + 60_000, HA),
              rec("b1", "product_view", T0, HB), rec("b2", "product_view", T0 + 1, HB)]
    states = rebuild_states(events, reassign(events, {A: [HA], B: [HB]}), [A, B], RULES)
    assert (states[A].n_events, states[A].counts) == (2, {"add_to_cart": 1, "order_paid": 1})
    assert (states[B].n_events, states[B].counts) == (2, {"product_view": 2})
    assert states[A].oneid == A and states[B].oneid == B


def test_completed_states_keep_their_own_contacts_and_no_trigger_fires_twice():
    old = PersonState.new(A)
    apply_events(old, [identify(T0, "i1", "13900000001", pk=UA), identify(T0 + 1, "i2", "13900000002", pk=UA),
                       entry("add_to_cart", T0 + 2, "c1", pk=UA)], RULES)
    (fired,) = fire_due(old, T0 + 2 + HOUR, RULES, T0 + 2 + HOUR).actions  # the cart reminder went out
    rebuilt = PersonState.new(B)
    apply_events(rebuilt, [entry("add_to_cart", T0 + 2, "c1", pk="user_id:ub")], RULES)  # armed again by the rebuild
    done = complete_state(rebuilt, old, [HB], SALT)
    assert done.contacts == {"phone": "13900000002"}  # the other phone stays with A
    assert done.pending == {} and done.fired == old.fired
    assert fired.action["rule_id"] in done.fired


def test_a_split_command_puts_the_old_persons_part_in_place_and_replaces_the_others():
    old = PersonState.new(A)
    apply_events(old, [identify(T0, "i1", "13900000002", pk=UA), entry("product_view", T0 + 1, "p1", pk=UA)], RULES)
    parts = {A: ([HA], PersonState.new(A)), B: ([HB], rebuild_states(
        [rec("p1", "product_view", T0 + 1, HB)], {"p1": B}, [B], RULES)[B])}
    cmd = decode_command(split_command(A, T0 + HOUR, parts))
    assert (cmd.cmd, cmd.from_oneid) == ("split", A)
    assert set(decode_parts(cmd.state)) == {A, B}
    sends = apply_split(old, cmd.state, SALT, cmd.at)
    assert old.n_events == 0 and old.contacts == {}  # A keeps nothing of B's
    [(to, msg)] = sends
    replace = decode_command(msg)
    assert (to, replace.cmd, replace.into_oneid) == (B, "replace", B)
    b = PersonState.from_bytes(replace.state)
    assert (b.n_events, b.contacts) == (1, {"phone": "13900000002"})


def test_a_split_request_names_the_identifier_hashed_only():
    req = split_request(HB, T0, HA)
    assert is_split_request(req) and b"13900000002" not in req
