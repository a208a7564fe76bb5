"""Merges reaching the person stage (pure): the commands the link writer and the person stage send each other.

A merge of OneID ``from`` into ``into`` is carried out where the states live (docs/identity.md):

1. ``merge`` goes to ``from``'s partition. Its state is sent on as ``absorb`` to ``into``'s partition and replaced
   by a pointer (``merged_into``): events that still reach ``from`` (an ingest whose directory replica is behind)
   are forwarded to the survivor.
2. ``absorb`` merges the state into ``into``'s by each field's merge function, once: the survivor keeps the OneIDs
   it absorbed, so a redelivered ``absorb`` changes nothing. A trigger either person armed stays armed unless the
   other's ``unless`` event falls inside its window. If ``into`` was itself merged away in the meantime, the
   ``absorb`` is forwarded along the pointer.

A command is one Kafka message on the person topic: a JSON header line, and for ``absorb`` the state's bytes after
it. Envelopes start with ``{"v"``; a command with ``{"cmd"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from core.person import DEDUPE_WINDOW_MS, PersonState, absorb
from core.person_state import Pending
from rules.loader import RuleSet

COMMAND_PREFIX = b'{"cmd"'


@dataclass(frozen=True, slots=True)
class Command:
    cmd: str  # merge | absorb
    from_oneid: str
    into_oneid: str
    at: int
    message_id: str = ""
    state: bytes = b""  # absorb: the merged-away person's state


def is_command(value: bytes) -> bool:
    return value.startswith(COMMAND_PREFIX)


def merge_command(from_oneid: str, into_oneid: str, at: int, message_id: str = "") -> bytes:
    return orjson.dumps({"cmd": "merge", "from": from_oneid, "into": into_oneid, "at": at, "mid": message_id})


def absorb_command(state: PersonState, into_oneid: str, at: int) -> bytes:
    head = orjson.dumps({"cmd": "absorb", "from": state.oneid, "into": into_oneid, "at": at})
    return head + b"\n" + state.to_bytes()


def decode_command(value: bytes) -> Command:
    head, _, rest = value.partition(b"\n")
    d = orjson.loads(head)
    return Command(d["cmd"], d["from"], d["into"], int(d.get("at", 0)), d.get("mid", ""), rest)


@dataclass(slots=True)
class Outcome:
    """What a command did: ``send`` is a command for another OneID's partition (``to`` names that OneID), or
    None; ``changed``: the state given was changed (to be written)."""

    changed: bool
    send: bytes | None = None
    to: str = ""
    absorbed: PersonState | None = None  # absorb: the state merged in (its timers now belong to the survivor)


def apply_command(cmd: Command, state: PersonState, rules: RuleSet | None = None,
                  dedupe_window_ms: int = DEDUPE_WINDOW_MS) -> Outcome:
    """Carry out ``cmd`` on the state it is addressed to (``from``'s for merge, ``into``'s for absorb). With the
    stage's ``rules``, an absorb keeps only the armed triggers the merged person's events leave armed
    (``_rearm``)."""
    if cmd.cmd == "merge":
        if state.merged_into:
            return Outcome(False)  # done before (a redelivered merge): the absorb was sent then
        send = absorb_command(state, cmd.into_oneid, cmd.at)
        make_pointer(state, cmd.into_oneid)
        return Outcome(True, send, cmd.into_oneid)
    if cmd.cmd == "absorb":
        if state.merged_into:  # the survivor was merged away too: on along the pointer
            fwd = Command("absorb", cmd.from_oneid, state.merged_into, cmd.at, cmd.message_id, cmd.state)
            return Outcome(False, _encode_absorb(fwd), state.merged_into)
        other = PersonState.from_bytes(cmd.state)
        mine = dict(state.pending)
        if not absorb(state, other, dedupe_window_ms):
            return Outcome(False)
        if rules is not None:
            _rearm(state, mine, other.pending, rules)
        return Outcome(True, absorbed=other)
    raise ValueError(f"unknown person command {cmd.cmd!r}")


def _rearm(state: PersonState, mine: dict[str, Pending], theirs: dict[str, Pending], rules: RuleSet) -> None:
    """Per rule, the earlier of the two persons' armed triggers that the merged person's ``unless`` event does not
    cancel: each person's fold checked only its own events, and the survivor's trigger may be the one left when
    the other's is cancelled. As in a fold, an ``unless`` cancels a trigger when its latest time (what a state
    keeps) is inside the trigger's window."""
    unless = {r.id: r.unless for r in rules.triggers if r.unless}
    last_seen = state.last_seen
    for rid in {*mine, *theirs} & unless.keys():
        seen = last_seen.get(unless[rid])
        live = [p for p in (mine.get(rid), theirs.get(rid))
                if p is not None and not (seen is not None and p.since <= seen <= p.deadline)]
        if live:
            state.pending[rid] = min(live, key=lambda p: (p.since, p.message_id))
        else:
            state.pending.pop(rid, None)


def make_pointer(state: PersonState, into_oneid: str) -> None:
    """Turn a merged-away person's state, in place (caches hold the object), into a pointer to its survivor."""
    empty = PersonState.new(state.oneid)
    for name in state.__struct_fields__:
        setattr(state, name, getattr(empty, name))
    state.merged_into = into_oneid


def _encode_absorb(cmd: Command) -> bytes:
    head = orjson.dumps({"cmd": "absorb", "from": cmd.from_oneid, "into": cmd.into_oneid, "at": cmd.at})
    return head + b"\n" + cmd.state
