"""Splits (pure): an identifier detached from its person, the persons re-formed, their state and events reassigned.

``core.identity.IdentityGraph.split`` decides the new persons (OneID -> identifier hashes). Then (docs/identity.md):

1. every event of the old person goes to the new person holding the event's primary identifier (``id_hash`` of its
   row; an event without one stays where it resolves): ``reassign`` gives the ``cdp.event_oneids`` rows;
2. each new person's state is rebuilt by folding its events (``rebuild_states``), as the person stage folds them;
3. the person stage completes each rebuilt state with what ClickHouse does not hold (``complete_state``: the raw
   contacts whose identifiers the new person holds, the triggers that already fired) and puts it in place of the
   old one (a ``split`` command to the old person's partition, a ``replace`` for every other new person).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from core.envelope import Entry
from core.ids import identifier_hash
from core.person import DEDUPE_WINDOW_MS, PersonState, apply_events
from rules.loader import RuleSet

SPLIT_PREFIX = b'{"cmd":"split"'


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event as the split reads it back from ClickHouse (``cdp.events_resolved``)."""

    message_id: str
    oneid: str  # the person it resolves to now
    id_hash: str  # its primary identifier ("" for events sunk before rows carried it)
    event: dict[str, Any]  # type, event, name, properties
    ts: int
    received_at: int
    src: tuple[int, int]


def split_request(id_hash: str, at: int, other_hash: str | None = None) -> bytes:
    """What ``cdp identity split`` sends the link writer: detach the identifier, or cut its links with another."""
    return orjson.dumps({"cmd": "split", "hash": id_hash, "at": at, "other": other_hash})


def is_split_request(value: bytes) -> bool:
    return value.startswith(SPLIT_PREFIX)


def reassign(events: Iterable[EventRecord], parts: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """message_id -> the new person each event belongs to: the one holding its primary identifier."""
    part_of = {h: o for o, hashes in parts.items() for h in hashes}
    return {e.message_id: part_of.get(e.id_hash, e.oneid) for e in events}


def rebuild_states(events: Iterable[EventRecord], target: Mapping[str, str], parts: Iterable[str], rules: RuleSet,
                   dedupe_window_ms: int = DEDUPE_WINDOW_MS) -> dict[str, PersonState]:
    """Each new person's state from its events alone (counts, times, the dedupe set, armed triggers)."""
    groups: dict[str, list[Entry]] = {o: [] for o in parts}
    for e in events:
        o = target.get(e.message_id, e.oneid)
        ev = {"message_id": e.message_id, **e.event}
        groups.setdefault(o, []).append(Entry.of_event(o, e.ts, e.received_at, e.src, ev))
    out = {}
    for o, entries in groups.items():
        st = PersonState.new(o)
        apply_events(st, entries, rules, dedupe_window_ms)
        out[o] = st
    return out


def complete_state(rebuilt: PersonState, old: PersonState, hashes: Iterable[str], salt: str) -> PersonState:
    """``rebuilt`` with the old person's contacts whose identifiers it holds, and the old person's record of
    triggers fired (a trigger armed again by the rebuild does not fire twice: the armings it already fired are
    dropped)."""
    held = set(hashes)
    for t, v in old.contacts.items():
        if identifier_hash(salt, t, v) in held:
            rebuilt.contacts[t] = v
            at = old.contacts_at.get(t)
            if at is not None:
                rebuilt.contacts_at[t] = at
    for rule, at in old.fired.items():
        if at > rebuilt.fired.get(rule, -1):
            rebuilt.fired[rule] = at
    for rule in [r for r, p in rebuilt.pending.items() if rebuilt.fired.get(r, -1) >= p.deadline]:
        del rebuilt.pending[rule]
    return rebuilt


class SplitParts(msgspec.Struct, array_like=True):
    hashes: list[str]
    state: bytes


def split_command(previous: str, at: int, parts: Mapping[str, tuple[Sequence[str], PersonState]]) -> bytes:
    """The person stage's command for the old person's partition: each new person's identifiers and rebuilt state."""
    head = orjson.dumps({"cmd": "split", "from": previous, "into": "", "at": at})
    body = msgspec.msgpack.encode({o: SplitParts(list(h), st.to_bytes()) for o, (h, st) in parts.items()})
    return head + b"\n" + body


def replace_command(state: PersonState, at: int) -> bytes:
    head = orjson.dumps({"cmd": "replace", "from": "", "into": state.oneid, "at": at})
    return head + b"\n" + state.to_bytes()


def decode_parts(payload: bytes) -> dict[str, SplitParts]:
    return msgspec.msgpack.decode(payload, type=dict[str, SplitParts])


def put_in_place(state: PersonState, new: PersonState) -> None:
    """Replace a state's content in place (caches hold the object)."""
    for name in state.__struct_fields__:
        setattr(state, name, getattr(new, name))


def apply_split(old: PersonState, payload: bytes, salt: str, at: int) -> list[tuple[str, bytes]]:
    """Carry out a ``split`` on the old person's state: it becomes its own new person's (if it is one of them), and
    the others' are returned as ``replace`` commands, (OneID, message)."""
    parts = decode_parts(payload)
    out = []
    mine: PersonState | None = None
    for o, part in parts.items():
        st = complete_state(PersonState.from_bytes(part.state), old, part.hashes, salt)
        if o == old.oneid:
            mine = st
        else:
            out.append((o, replace_command(st, at)))
    if mine is not None:
        put_in_place(old, mine)
    return out
