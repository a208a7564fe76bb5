"""Per-person state and the person stage (pure): events and watermarks in, new state, sink rows and actions out.

One ``PersonState`` per person is the only per-person state the pipeline keeps; later stages (identity, tags,
scores, journeys) extend it. It is written once per person per checkpoint (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.clock import iso
from core.envelope import Entry
from core.ids import action_id
from core.person_state import Pending, PersonState
from core.rows import event_rows
from rules.loader import RuleSet, TriggerRule

# messageId de-duplication: ids kept per person, and for how long (event time; CDP_DEDUPE_WINDOW_S).
# Every event of a person is routed to one partition, so this is correct with any number of workers.
DEDUPE_MAX_IDS = 1000
DEDUPE_WINDOW_MS = 7 * 86_400_000


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
    contact_types = rules.contact_types
    # Locals: this loop runs for every event the person stage takes.
    seen, counts, last_seen, accepted = state.seen, state.counts, state.last_seen, res.accepted
    n0, first0, last0 = n, first, last = state.n_events, state.first_ts, state.last_ts
    # What a failed fold must put back: these dicts are small (one entry per event name, contact type or rule);
    # the seen set is not, and is undone by the accepted events' ids instead.
    counts0, last_seen0, pending0, fired0 = dict(counts), dict(last_seen), dict(state.pending), dict(state.fired)
    contacts0, contacts_at0 = dict(state.contacts), dict(state.contacts_at)
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
                _update_contacts(state, ev.get("identities") or {}, ev.get("traits") or {}, ts, contact_types)
            rules_of_event = triggers.get(name)
            if rules_of_event:
                for rule in rules_of_event:
                    _trigger_on_event(state, rule, name, en, res)
        state.n_events, state.first_ts, state.last_ts = n, first, last
        _prune_seen(state, dedupe_window_ms)
    except Exception:
        # The caller dead-letters these events (a bug, or a stored state that reads but is wrong). The state is
        # left as it was before the call, so that replaying them after the fix (``cdp dlq replay``) is neither
        # dropped as a duplicate (their ids leave the seen set) nor counted twice.
        for en in accepted:
            seen.pop(en.digest, None)
        state.n_events, state.first_ts, state.last_ts = n0, first0, last0
        state.counts, state.last_seen, state.contacts, state.contacts_at = counts0, last_seen0, contacts0, contacts_at0
        state.pending, state.fired = pending0, fired0
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


def _update_contacts(state: PersonState, ids: dict[str, Any], traits: dict[str, Any], ts: int,
                     contact_types: tuple[str, ...]) -> None:
    contacts, contacts_at = state.contacts, state.contacts_at
    for t in contact_types:
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
        state.seen = _pruned(state.seen, horizon)


def _pruned(seen: dict[str, int], horizon: int) -> dict[str, int]:
    """The latest ``DEDUPE_MAX_IDS`` ids seen at or after ``horizon``, oldest first."""
    keep = sorted(((ts, m) for m, ts in seen.items() if ts >= horizon), reverse=True)[:DEDUPE_MAX_IDS]
    return {m: ts for ts, m in sorted(keep)}


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
            "action_id": action_id(rid, pend.message_id, pend.since),
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


# Merging persons (docs/identity.md): when identity resolution merges a OneID into another, the merged-away
# person's state is folded into the survivor's by one function per field. Each keeps what folding both persons'
# events into one state would have given (tests/core/test_person.py states it as a property).
MergeField = Callable[[PersonState, PersonState], None]


def _keep(into: PersonState, other: PersonState) -> None:
    """The survivor's own value (its OneID, and that it is live)."""


def _merge_n_events(into: PersonState, other: PersonState) -> None:
    into.n_events += other.n_events


def _merge_first_ts(into: PersonState, other: PersonState) -> None:
    if other.first_ts and (into.first_ts == 0 or other.first_ts < into.first_ts):  # 0: no event yet
        into.first_ts = other.first_ts


def _merge_last_ts(into: PersonState, other: PersonState) -> None:
    into.last_ts = max(into.last_ts, other.last_ts)


def _merge_counts(into: PersonState, other: PersonState) -> None:
    counts = into.counts
    for name, c in other.counts.items():
        counts[name] = counts.get(name, 0) + c


def _merge_latest(into: dict[str, int], other: dict[str, int]) -> None:
    for k, ts in other.items():
        if ts > into.get(k, ts - 1):
            into[k] = ts


def _merge_last_seen(into: PersonState, other: PersonState) -> None:
    _merge_latest(into.last_seen, other.last_seen)


def _merge_contacts(into: PersonState, other: PersonState) -> None:
    """Per contact type, the value of the later event (of two at one time, the greater), as ``_update_contacts``
    chooses; a value without a time (a version 1 or 2 state's) loses to one with a time."""
    contacts, contacts_at = into.contacts, into.contacts_at
    for t, v in other.contacts.items():
        at = other.contacts_at.get(t)
        mine = contacts.get(t)
        if mine is None or _contact_rank(at, v) > _contact_rank(contacts_at.get(t), mine):
            contacts[t] = v
            if at is None:
                contacts_at.pop(t, None)
            else:
                contacts_at[t] = at


def _contact_rank(at: int | None, value: str) -> tuple[bool, int, str]:
    return (at is not None, at or 0, value)


def _merge_seen(into: PersonState, other: PersonState) -> None:
    """The union (an id in both: the later time); ``merge_states`` then prunes it as a fold does, once
    ``last_ts`` is merged."""
    _merge_latest(into.seen, other.seen)


def _merge_pending(into: PersonState, other: PersonState) -> None:
    """Per rule, the earlier arming (by event time, then messageId): the one a fold of both persons' events keeps."""
    pending = into.pending
    for rid, p in other.pending.items():
        mine = pending.get(rid)
        if mine is None or (p.since, p.message_id) < (mine.since, mine.message_id):
            pending[rid] = p


def _merge_fired(into: PersonState, other: PersonState) -> None:
    _merge_latest(into.fired, other.fired)


def _merge_absorbed(into: PersonState, other: PersonState) -> None:
    into.absorbed = sorted({*into.absorbed, *other.absorbed, other.oneid} - {into.oneid})


# One merge function for every field of PersonState (a test checks none is missing), in the order they run.
MERGE_FIELDS: dict[str, MergeField] = {
    "oneid": _keep,
    "n_events": _merge_n_events,
    "first_ts": _merge_first_ts,
    "last_ts": _merge_last_ts,
    "counts": _merge_counts,
    "last_seen": _merge_last_seen,
    "contacts": _merge_contacts,
    "contacts_at": _keep,  # merged with the contacts they date (``_merge_contacts``)
    "seen": _merge_seen,
    "pending": _merge_pending,
    "fired": _merge_fired,
    "absorbed": _merge_absorbed,
    "merged_into": _keep,
}


def merge_states(into: PersonState, other: PersonState, dedupe_window_ms: int = DEDUPE_WINDOW_MS) -> None:
    """Merge ``other``'s state into ``into``'s, field by field (``MERGE_FIELDS``). ``other`` is left as it was.
    Merging the same state twice counts it twice: callers go through ``absorb``."""
    for merge in MERGE_FIELDS.values():
        merge(into, other)
    into.seen = _pruned(into.seen, into.last_ts - dedupe_window_ms)


def absorb(into: PersonState, other: PersonState, dedupe_window_ms: int = DEDUPE_WINDOW_MS) -> bool:
    """Merge ``other`` into ``into`` once: False (and nothing changed) when ``into`` already absorbed that OneID,
    or is it."""
    if other.oneid == into.oneid or other.oneid in into.absorbed:
        return False
    merge_states(into, other, dedupe_window_ms)
    return True
