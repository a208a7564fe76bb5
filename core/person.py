"""Per-person state and the person stage (pure): events and watermarks in, new state, sink rows and actions out.

One ``PersonState`` per person is the only per-person state the pipeline keeps; later stages (identity, tags,
scores, journeys) extend it. It is written once per person per checkpoint (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from core.clock import iso
from core.envelope import Entry
from core.ids import action_id, oneid_for
from core.rows import event_rows
from rules.loader import RuleSet, TriggerRule

STATE_VERSION = 3
# messageId de-duplication: ids kept per person, and for how long (event time; CDP_DEDUPE_WINDOW_S).
# Every event of a person is routed to one partition, so this is correct with any number of workers.
DEDUPE_MAX_IDS = 1000
DEDUPE_WINDOW_MS = 7 * 86_400_000
CONTACT_TYPES = ("phone", "email", "wechat_openid", "wechat_unionid", "miniapp_openid", "device_id", "crm_id")


@dataclass(slots=True)
class Pending:
    """An armed trigger: ``since`` is the event time of the ``when`` event, ``deadline`` when it fires."""

    since: int
    deadline: int
    message_id: str


@dataclass(slots=True)
class PersonState:
    oneid: str
    key: str
    n_events: int = 0
    first_ts: int = 0
    last_ts: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    last_seen: dict[str, int] = field(default_factory=dict)  # event name -> latest event time
    contacts: dict[str, str] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)  # message-id digest -> event time
    pending: dict[str, Pending] = field(default_factory=dict)  # rule id -> armed trigger
    fired: dict[str, int] = field(default_factory=dict)  # rule id -> event time it last fired
    # contact type -> event time of the event that gave its value: a contact is the latest event's, however late
    # an older one arrives (none for a contact a version 1 or 2 state holds: any event's value replaces it).
    contacts_at: dict[str, int] = field(default_factory=dict)

    @classmethod
    def new(cls, key: str) -> PersonState:
        return cls(oneid=oneid_for(key), key=key)

    def next_deadline(self) -> int | None:
        if not self.pending:  # the common case, asked twice per person per envelope
            return None
        return min(p.deadline for p in self.pending.values())

    def to_bytes(self) -> bytes:
        # A JSON array in field order (version 3; 2 had no contacts_at): a third cheaper to write than an object
        # with named fields, and it is written for every person in every sink batch.
        return orjson.dumps([
            STATE_VERSION, self.oneid, self.key, self.n_events, self.first_ts, self.last_ts, self.counts,
            self.last_seen, self.contacts, self.seen,
            {r: (p.since, p.deadline, p.message_id) for r, p in self.pending.items()} if self.pending else {},
            self.fired, self.contacts_at,
        ])

    @classmethod
    def from_bytes(cls, raw: bytes) -> PersonState:
        d = orjson.loads(raw)
        if isinstance(d, dict):  # version 1: an object with named fields
            d = [1, d["oneid"], d["key"], d["n"], d["first"], d["last"], d["counts"], d["last_seen"],
                 d["contacts"], d["seen"], d["pending"], d["fired"]]
        if len(d) == 12:  # versions 1 and 2: no contacts_at
            d.append({})
        _, oneid, key, n, first, last, counts, last_seen, contacts, seen, pending, fired, contacts_at = d
        return cls(oneid, key, n, first, last, counts, last_seen, contacts, seen,
                   {r: Pending(*p) for r, p in pending.items()} if pending else {}, fired, contacts_at)


@dataclass(slots=True)
class ActionOut:
    channel: str
    oneid: str
    action: dict[str, Any]


@dataclass(slots=True)
class Dropped:
    reason: str
    detail: dict[str, Any]


@dataclass(slots=True)
class PersonResult:
    state: PersonState
    accepted: list[Entry] = field(default_factory=list)  # new events, to be sunk
    duplicates: int = 0
    actions: list[ActionOut] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)


def _event_time(en: Entry) -> int:
    return en.ts


def apply_events(state: PersonState, entries: list[Entry], rules: RuleSet,
                 dedupe_window_ms: int = DEDUPE_WINDOW_MS) -> PersonResult:
    """Fold one person's new events into their state. Out-of-order events are handled by event time."""
    res = PersonResult(state=state)
    triggers = rules.triggers_by_event
    # Locals: this loop runs for every event the person stage takes.
    seen, counts, last_seen, accepted = state.seen, state.counts, state.last_seen, res.accepted
    n0, first0, last0 = n, first, last = state.n_events, state.first_ts, state.last_ts
    duplicates = 0
    try:
        for en in sorted(entries, key=_event_time) if len(entries) > 1 else entries:
            mid = en.digest
            if mid in seen:
                duplicates += 1
                continue
            ts = en.ts
            seen[mid] = ts
            accepted.append(en)
            name = en.name
            n += 1
            if first == 0 or ts < first:
                first = ts
            if ts > last:
                last = ts
            counts[name] = counts.get(name, 0) + 1
            if ts > last_seen.get(name, 0):
                last_seen[name] = ts
            if en.needs_body:
                ev = en.event
                _update_contacts(state, ev.get("identities") or {}, ev.get("traits") or {}, ts)
            rules_of_event = triggers.get(name)
            if rules_of_event:
                for rule in rules_of_event:
                    _trigger_on_event(state, rule, name, en, res)
        state.n_events, state.first_ts, state.last_ts = n, first, last
        _prune_seen(state, dedupe_window_ms)
    except Exception:
        # The caller dead-letters these events (a bug, or a stored state that reads but is wrong). Whatever
        # marked them as taken is undone, so that replaying them after the fix (``cdp dlq replay``) is not
        # dropped as a duplicate: their ids leave the seen set and the event count and times are as before.
        for en in accepted:
            seen.pop(en.digest, None)
        state.n_events, state.first_ts, state.last_ts = n0, first0, last0
        raise
    res.duplicates = duplicates
    return res


@dataclass(slots=True)
class Fold:
    """The events of one envelope folded into their persons' states (``fold_entries``)."""

    event_lines: list[bytes] = field(default_factory=list)  # ClickHouse rows of the new events, person by person
    duplicates: int = 0
    dropped: list[Dropped] = field(default_factory=list)
    deadlines: list[tuple[str, int]] = field(default_factory=list)  # persons whose next deadline changed
    # Persons whose fold raised (a bug, or a stored state that cannot be read): their events and the error. The
    # other persons' events are folded all the same: one person never stops a partition.
    failed: list[tuple[str, list[Entry], Exception]] = field(default_factory=list)


def fold_entries(entries: Sequence[Entry], state_of: Callable[[str], PersonState], rules: RuleSet,
                 dedupe_window_ms: int = DEDUPE_WINDOW_MS) -> Fold:
    """Fold an envelope's events person by person (``apply_events``), in the order persons first appear.
    ``state_of`` gives a person's current state object (which this changes in place)."""
    by_person: dict[str, list[Entry]] = {}
    for en in entries:
        group = by_person.get(en.pk)
        if group is None:
            by_person[en.pk] = [en]
        else:
            group.append(en)
    out = Fold()
    lines = out.event_lines
    for pk, group in by_person.items():
        try:
            st = state_of(pk)
            before = st.next_deadline()
            res = apply_events(st, group, rules, dedupe_window_ms)
        except Exception as exc:  # a bug or a corrupt stored state: the adapter dead-letters these events
            out.failed.append((pk, group, exc))
            continue
        lines += event_rows(res.accepted, st.oneid)
        out.duplicates += res.duplicates
        if res.dropped:
            out.dropped += res.dropped
        after = st.next_deadline()
        if after is not None and after != before:
            out.deadlines.append((pk, after))
    return out


def _update_contacts(state: PersonState, ids: dict[str, Any], traits: dict[str, Any], ts: int) -> None:
    contacts, contacts_at = state.contacts, state.contacts_at
    for t in CONTACT_TYPES:
        v = ids.get(t) or traits.get(t)
        if isinstance(v, str) and v:
            at = contacts_at.get(t)
            # The latest event's value (of two at one time, the greater), whatever order they arrive in.
            if at is None or ts > at or (ts == at and v > contacts.get(t, "")):
                contacts[t] = v
                contacts_at[t] = ts


def _trigger_on_event(state: PersonState, rule: TriggerRule, name: str, en: Entry, res: PersonResult) -> None:
    pend = state.pending.get(rule.id)
    if name == rule.unless and pend is not None and pend.since <= en.ts <= pend.deadline:
        del state.pending[rule.id]
        return
    if name != rule.when:
        return
    if pend is not None and (pend.since < en.ts or (pend.since == en.ts and pend.message_id <= en.message_id)):
        # Already armed by an earlier 'when': the first one starts the clock (of two at the same time, the one
        # with the lower messageId, so the state does not depend on which arrived first).
        return
    # The 'unless' event may already have been seen, out of order, inside this window.
    if rule.unless and en.ts <= state.last_seen.get(rule.unless, -1) <= en.ts + rule.wait_ms:
        return
    last = state.fired.get(rule.id)
    if last is not None and rule.cooldown_ms and en.ts < last + rule.cooldown_ms:
        res.dropped.append(Dropped("cooldown", {"rule": rule.id, "message_id": en.message_id}))
        return
    state.pending[rule.id] = Pending(en.ts, en.ts + rule.wait_ms, en.message_id)


def _prune_seen(state: PersonState, window_ms: int) -> None:
    if not state.seen:
        return
    horizon = state.last_ts - window_ms
    if len(state.seen) > DEDUPE_MAX_IDS or next(iter(state.seen.values())) < horizon:
        keep = sorted(((ts, m) for m, ts in state.seen.items() if ts >= horizon), reverse=True)[:DEDUPE_MAX_IDS]
        state.seen = {m: ts for ts, m in sorted(keep)}


def fire_due(state: PersonState, watermark: int, rules: RuleSet, now_ms: int) -> PersonResult:
    """Fire every armed trigger whose deadline event time has passed the watermark."""
    res = PersonResult(state=state)
    by_id = {r.id: r for r in rules.triggers}
    for rid, pend in list(state.pending.items()):
        if pend.deadline > watermark:
            continue
        del state.pending[rid]
        rule = by_id.get(rid)
        if rule is None or not rule.enabled:
            res.dropped.append(Dropped("rule_removed", {"rule": rid}))
            continue
        state.fired[rid] = pend.deadline
        to_type = rule.action.to
        contact = state.contacts.get(to_type)
        if not contact:
            res.dropped.append(Dropped("no_contact", {"rule": rid, "needs": to_type, "oneid": state.oneid}))
            continue
        action = {
            "action_id": action_id(rid, state.oneid, pend.since),
            "rule_id": rid,
            "rule_version": rule.version,
            "oneid": state.oneid,
            "channel": rule.action.channel.value,
            "template": rule.action.template,
            "params": dict(rule.action.params),
            "to": {to_type: contact},
            "reason": {
                "rule": rid, "when": rule.when, "unless": rule.unless, "wait_ms": rule.wait_ms,
                "trigger_message_id": pend.message_id, "trigger_at": iso(pend.since), "deadline": iso(pend.deadline),
                "rules_digest": rules.digest,
            },
            "created_at": iso(now_ms),
            "not_before": iso(now_ms),
            "expires_at": iso(pend.deadline + rule.action.expires_after_ms),
        }
        res.actions.append(ActionOut(rule.action.channel.value, state.oneid, action))
    return res
