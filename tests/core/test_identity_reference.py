"""core.identity held to docs/identity.md's semantics by a reference model.

``ReferenceGraph`` restates the semantics as plain code over explicit components (person -> its identifiers),
checking every rule by brute force over both persons' full member lists. It shares nothing with core/identity.py
but the contract's hashes (``identifier_hash``, ``oneid_for_hash``). The property tests run random identifier
graphs over small pools (so unique ids conflict, limits and windows are hit, caps are reached) through both and
compare everything the graph answers after every event.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.identity import (
    IdentityGraph,
    MemoryStore,
    Resolution,
    decode_id,
    decode_person,
    directory_resolve,
    encode_record,
)
from core.ids import identifier_hash, mask, oneid_for_hash
from rules.loader import IdentifierType, IdentityRules

SALT = "test-salt"
WINDOW_MS = 1_000  # device_id's window: event times span a few windows
# Times on a grid of quarter windows (so some land exactly on a window's edge), or anywhere; in no order.
TS = st.one_of(st.integers(0, 14).map(lambda k: k * WINDOW_MS // 4), st.integers(0, 3_500))

# (priority, unique, limit, window_ms)
TYPES: dict[str, tuple[int, bool, int | None, int | None]] = {
    "user_id": (100, True, None, None),
    "crm_id": (90, True, None, None),
    "phone": (80, False, 2, None),
    "device_id": (20, False, 2, WINDOW_MS),
    "anonymous_id": (10, False, None, None),
}
NO_LIMITS = {name: (prio, False, None, None) for name, (prio, *_rest) in TYPES.items()}

BLOCKED_PHONE = "00000000000"
BLOCKED_DEVICE = "00000000-0000-0000-0000-000000000000"
BLOCKED = frozenset({("phone", BLOCKED_PHONE), ("device_id", BLOCKED_DEVICE)})
POOLS = {
    "user_id": ["u0", "u1", "u2"],
    "crm_id": ["c0", "c1"],
    "phone": ["13800000000", "13800000001", "13800000002", BLOCKED_PHONE],
    "device_id": ["d0", "d1", "d2", BLOCKED_DEVICE],
    "anonymous_id": ["a0", "a1", "a2", "a3"],
}


READ_FROM = {"user_id": "user_id", "crm_id": "identities.crm_id", "phone": "identities.phone",
             "device_id": "identities.device_id", "anonymous_id": "anonymous_id"}


def make_rules(types: Mapping[str, tuple[int, bool, int | None, int | None]], max_identifiers: int,
               max_merges: int) -> IdentityRules:
    """Small caps, so that they are reached; blocked values as the rule files list them."""
    return IdentityRules(
        version=1,
        types={n: IdentifierType(name=n, priority=p, unique=u, limit=lim, window=w, read_from=(READ_FROM[n],),
                                 blocked=frozenset(v for t, v in BLOCKED if t == n))
               for n, (p, u, lim, w) in types.items()},
        max_identifiers=max_identifiers, max_merges=max_merges, digest="test")


RULES = make_rules(TYPES, max_identifiers=6, max_merges=3)
RULES_FEW_MERGES = make_rules(TYPES, max_identifiers=8, max_merges=2)
RULES_NO_MERGE_CAP = make_rules(TYPES, max_identifiers=6, max_merges=1_000)
RULES_NO_CAPS = make_rules(TYPES, max_identifiers=1_000, max_merges=1_000)
RULES_CONFLICT_FREE = make_rules(NO_LIMITS, max_identifiers=1_000, max_merges=1_000)


def h(t: str, v: str) -> str:
    return identifier_hash(SALT, t, v)


def ident(t: str, v: str) -> tuple[str, str, str]:
    return (t, h(t, v), mask(t, v))


def oneid(t: str, v: str) -> str:
    return oneid_for_hash(SALT, h(t, v))


def event_ids(raw: Iterable[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """The identifiers resolve sees: blocked values left out first, as the ingest does."""
    return [ident(t, v) for t, v in raw if not RULES.is_blocked(t, v)]


# -- the reference model ---------------------------------------------------------------------------------------


@dataclass
class RefOutcome:
    oneid: str
    refusals: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # reason, type, hash, p, q OneIDs
    merges: list[tuple[str, str]] = field(default_factory=list)  # from, into
    links: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # type, hash, ptype, phash, OneID
    identities: dict[str, str] = field(default_factory=dict)  # hash -> OneID, for every hash whose person changed


class ReferenceGraph:
    """Persons as explicit sets of identifier hashes; every rule checked over the full member lists."""

    def __init__(self, rules: Any, salt: str):
        self.salt = salt
        self.types = sorted(rules.types.items(), key=lambda kv: -kv[1].priority)
        self.priority = {name: spec.priority for name, spec in rules.types.items()}
        self.max_identifiers = rules.max_identifiers
        self.max_merges = rules.max_merges
        self.type_of: dict[str, str] = {}
        self.joined: dict[str, int] = {}  # when the identifier joined its current person
        self.person: dict[str, int] = {}  # hash -> person key
        self.members: dict[int, set[str]] = {}
        self.merge_count: dict[int, int] = {}
        self.links: list[tuple[str, str, bool]] = []  # (hash, primary hash, was a merge of two known persons)
        self.cut: set[frozenset[str]] = set()  # identifier pairs an operator split apart
        self._keys = itertools.count()

    # persons
    def key(self, hsh: str) -> tuple[int, str]:
        return (-self.priority[self.type_of[hsh]], hsh)

    def anchor(self, person: int) -> str:
        return min(self.members[person], key=self.key)

    def oneid_of_person(self, person: int) -> str:
        return oneid_for_hash(self.salt, self.anchor(person))

    def oneid_of(self, hsh: str) -> str:
        return self.oneid_of_person(self.person[hsh])

    def partition(self) -> dict[str, frozenset[str]]:
        return {self.oneid_of_person(k): frozenset(m) for k, m in self.members.items()}

    def _new_person(self, t: str, hsh: str, ts: int) -> None:
        k = next(self._keys)
        self.type_of[hsh] = t
        self.joined[hsh] = ts
        self.person[hsh] = k
        self.members[k] = {hsh}
        self.merge_count[k] = 0

    # rules
    def _refused(self, p: int, q: int, ts: int, fresh: bool) -> str | None:
        pm, qm = self.members[p], self.members[q]
        if any(frozenset((a, b)) in self.cut for a in pm for b in qm):
            return "split"
        for name, spec in self.types:
            q_of_type = [m for m in qm if self.type_of[m] == name]
            if not q_of_type:
                continue
            limit = 1 if spec.unique else spec.limit
            if limit is None:
                continue
            p_of_type = [m for m in pm if self.type_of[m] == name
                         and (not spec.window_ms or self.joined[m] > ts - spec.window_ms)]
            if len(p_of_type) + len(q_of_type) > limit:
                kind = "unique" if spec.unique else ("limit_window" if spec.window_ms else "limit")
                return f"{kind}:{name}"
        if len(pm) + len(qm) > self.max_identifiers:
            return "max_identifiers"
        if not fresh and self.merge_count[p] + self.merge_count[q] + 1 > self.max_merges:
            return "max_merges"
        return None

    def resolve(self, ids: Sequence[tuple[str, str]], ts: int) -> RefOutcome:
        before = {m: self.oneid_of(m) for m in self.person}
        by_hash = {hsh: t for t, hsh in ids}
        order = sorted(by_hash, key=lambda x: (-self.priority[by_hash[x]], x))
        primary = order[0]
        # A person this event makes is an identifier joining, not a person merged, until it joins another.
        p_fresh = primary not in self.person
        if p_fresh:
            self._new_person(by_hash[primary], primary, ts)
        out = RefOutcome(oneid="")
        for hsh in order[1:]:
            q_fresh = hsh not in self.person
            if q_fresh:
                self._new_person(by_hash[hsh], hsh, ts)
            p, q = self.person[primary], self.person[hsh]
            if p == q:
                continue
            fresh = p_fresh or q_fresh
            reason = self._refused(p, q, ts, fresh)
            if reason is not None:
                out.refusals.append((reason, by_hash[hsh], hsh, self.oneid_of_person(p), self.oneid_of_person(q)))
                p_fresh = False  # named in the refusal: a OneID known outside
                continue
            p_oneid, q_oneid = self.oneid_of_person(p), self.oneid_of_person(q)
            for m in self.members[q]:
                self.joined[m] = ts  # q's identifiers join the primary's person now
                self.person[m] = p
            self.members[p] |= self.members.pop(q)
            self.merge_count[p] += self.merge_count.pop(q) + (0 if fresh else 1)
            self.links.append((hsh, primary, not fresh))
            merged = self.oneid_of_person(p)
            out.links.append((by_hash[hsh], hsh, by_hash[primary], primary, merged))
            loser_fresh = q_fresh if merged == p_oneid else p_fresh
            if not loser_fresh:  # a OneID known before this event: merged into the survivor
                out.merges.append((q_oneid if merged == p_oneid else p_oneid, merged))
            p_fresh = False
        out.oneid = self.oneid_of(primary)
        out.identities = {m: o for m in self.person if before.get(m) != (o := self.oneid_of(m))}
        return out

    def split(self, hsh: str) -> dict[str, frozenset[str]] | None:
        """Detach ``hsh``: its links are removed and never made again; the rest of its person are the connected
        components of the remaining links."""
        if hsh not in self.person:
            return None
        k = self.person[hsh]
        old = self.members.pop(k)
        self.merge_count.pop(k)
        for a, b, _ in self.links:
            if hsh in (a, b):
                self.cut.add(frozenset((a, b)))
        self.links = [lk for lk in self.links if hsh not in lk[:2]]
        groups: list[set[str]] = [{hsh}]
        rest = old - {hsh}
        while rest:
            group = {rest.pop()}
            grew = True
            while grew:
                grew = False
                for a, b, _ in self.links:
                    if (a in group) != (b in group) and {a, b} <= old:
                        group |= {a, b}
                        grew = True
            rest -= group
            groups.append(group)
        out = {}
        for group in groups:
            g = next(self._keys)
            self.members[g] = group
            for m in group:
                self.person[m] = g
            # The merges that formed the group are the merge links it keeps.
            self.merge_count[g] = sum(1 for a, _b, was_merge in self.links if a in group and was_merge)
            out[self.oneid_of_person(g)] = frozenset(group)
        return out


# -- streams -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    raw: tuple[tuple[str, str], ...]
    ts: int
    mid: str


@st.composite
def streams(draw: Any, pools: dict[str, list[str]] = POOLS, max_events: int = 20,
            times: st.SearchStrategy[int] = TS) -> list[Event]:
    """Events over a part of each pool (the smaller, the more collisions) and the blocked values, at times in no
    order, some read again later (duplicates, replays)."""
    blocked = sorted(BLOCKED)
    pool = [(t, v) for t, vs in pools.items() if (usable := [v for v in vs if (t, v) not in BLOCKED])
            for v in usable[:draw(st.integers(1, len(usable)))]]
    some = st.sampled_from(pool + blocked if pools is POOLS else pool)
    # Sizes drawn evenly: events of one identifier make persons that later events merge, the others link.
    n_events = draw(st.sampled_from(range(min(4, max_events), max_events + 1)))
    raws = [(draw(st.lists(some, min_size=n, max_size=n)), draw(times))
            for n in draw(st.lists(st.sampled_from([1, 1, 2, 2, 3, 4]), min_size=n_events, max_size=n_events))]
    events = [Event(tuple(ids), ts, f"m{i}") for i, (ids, ts) in enumerate(raws)]
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(events) - 1))
        events.insert(draw(st.integers(i + 1, len(events))), events[i])
    return events


FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(FAST, max_examples=120)  # the tests that read two streams or one twice


# -- comparing -----------------------------------------------------------------------------------------------------


class Directory:
    """The directory records (``i:<hash>``, ``m:<oneid>``) as the link writer publishes them from resolutions."""

    def __init__(self) -> None:
        self.oneid_of_hash: dict[str, str] = {}
        self.into: dict[str, str] = {}

    def apply(self, identities: Iterable[Any], merges: Iterable[Any]) -> None:
        for row in identities:
            self.oneid_of_hash[row.id_hash] = row.oneid
        for mg in merges:
            self.into[mg.from_oneid] = mg.into_oneid if mg.op == "merge" else ""

    def resolve(self, hashes: Sequence[str]) -> str | None:
        return directory_resolve(hashes, self.oneid_of_hash.get, self.into.get)


class Harness:
    """One graph and the reference, fed the same events, compared after each one."""

    def __init__(self, rules: Any, store: MemoryStore | None = None):
        self.rules = rules
        self.graph = IdentityGraph(rules, SALT, store or MemoryStore())
        self.ref = ReferenceGraph(rules, SALT)
        self.directory = Directory()
        self.oneids_issued: set[str] = set()
        self.anchor_of_oneid: dict[str, str] = {}
        self.refused: Counter[tuple[str, str, str]] = Counter()
        self.ref_refused: Counter[tuple[str, str, str]] = Counter()

    def feed(self, ev: Event) -> Resolution | None:
        ids = event_ids(ev.raw)
        if not ids:  # an event left with no identifier is a bad row, never resolved
            return None
        res = self.graph.resolve(ids, ev.ts, ev.mid)
        self.graph.take_writes()
        self.graph.forget()  # later reads go through the store
        out = self.ref.resolve([(t, hsh) for t, hsh, _ in ids], ev.ts)
        self.check_resolution(ids, res, out)
        self.directory.apply(res.identities, res.merges)
        self.note_oneids(ids, res)
        self.check_partition()
        self.check_directory(ids, res)
        return res

    def note_oneids(self, ids: Sequence[tuple[str, str, str]], res: Resolution) -> None:
        for _t, hsh, _m in ids:
            self.anchor_of_oneid[oneid_for_hash(SALT, hsh)] = hsh
        self.oneids_issued.add(res.oneid)
        self.oneids_issued.update(r.oneid for r in res.identities)
        self.oneids_issued.update(o for m in res.merges for o in (m.from_oneid, m.into_oneid))
        self.oneids_issued.update(o for r in res.refusals for o in (r.oneid, r.other_oneid))

    def check_resolution(self, ids: Sequence[tuple[str, str, str]], res: Resolution, out: RefOutcome) -> None:
        masked = {hsh: m for _t, hsh, m in ids}
        assert res.oneid == out.oneid
        got_refusals = Counter((r.reason, r.id_type, r.id_hash, r.oneid, r.other_oneid) for r in res.refusals)
        assert got_refusals == Counter(out.refusals)
        assert all(r.masked == masked[r.id_hash] for r in res.refusals)
        self.refused.update((r.reason, r.id_type, r.id_hash) for r in res.refusals)
        self.ref_refused.update(r[:3] for r in out.refusals)
        assert [(m.from_oneid, m.into_oneid) for m in res.merges] == out.merges
        assert [(lk.id_type, lk.id_hash, lk.other_type, lk.other_hash, lk.oneid) for lk in res.links] == out.links
        assert {r.id_hash: r.oneid for r in res.identities} == out.identities

    def check_partition(self) -> None:
        """(a) the same persons with the same OneIDs; (g) never two user_ids in one person."""
        for hsh in self.ref.person:
            assert self.graph.person_of(hsh) == self.ref.oneid_of(hsh)
        for o, members in self.ref.partition().items():
            got = self.graph.members(o)
            assert {m for _t, m in got} == members and len(got) == len(members)
            assert self.graph.survivor(o) == o
            if self.rules.types["user_id"].unique:
                assert sum(1 for t, _m in got if t == "user_id") <= 1

    def check_directory(self, ids: Sequence[tuple[str, str, str]], res: Resolution) -> None:
        """(f) the directory built from the resolutions answers as the graph does."""
        for hsh in self.ref.person:
            assert self.directory.resolve([hsh]) == self.graph.person_of(hsh)
        hashes = [hsh for _t, hsh, _m in ids]
        persons = {self.graph.person_of(x) for x in hashes}
        assert self.directory.resolve(hashes) == (res.oneid if len(persons) == 1 else None)

    def check_survivors(self) -> None:
        """(f) every OneID ever issued resolves to the current person of the identifier it is the OneID of."""
        for o in self.oneids_issued:
            assert self.graph.survivor(o) == self.graph.person_of(self.anchor_of_oneid[o])


def rebuilt(store: MemoryStore) -> MemoryStore:
    """A fresh store holding only the records as decoded from their encoded bytes."""
    fresh = MemoryStore()
    fresh.ids = {k: decode_id(encode_record(v)) for k, v in store.ids.items()}
    fresh.persons = {k: decode_person(encode_record(v)) for k, v in store.persons.items()}
    return fresh


# -- properties ----------------------------------------------------------------------------------------------------


@FAST
@given(events=streams(), cut=st.integers(0, 20), rules=st.sampled_from([RULES, RULES_FEW_MERGES]))
def test_graph_matches_the_reference_after_every_event(events: list[Event], cut: int, rules: IdentityRules) -> None:
    """(a, b, c, f, g, h): partition, OneIDs, each event's person, refusals, merges, links, identity rows and the
    directory agree with the reference after every event; at some event the graph is rebuilt from its encoded
    records alone."""
    hs = Harness(rules)
    for i, ev in enumerate(events):
        if i == cut:
            store = hs.graph.store
            assert isinstance(store, MemoryStore)
            hs.graph = IdentityGraph(rules, SALT, rebuilt(store))
            hs.check_partition()
            hs.check_survivors()
        hs.feed(ev)
    hs.check_survivors()
    assert hs.refused == hs.ref_refused


WINDOW_POOLS = {"user_id": ["u0"], "device_id": ["d0", "d1", "d2", "d3"], "anonymous_id": ["a0", "a1", "a2"]}


@QUICK
@given(events=streams(pools=WINDOW_POOLS, times=st.integers(0, 6).map(lambda k: k * WINDOW_MS // 2)))
def test_windowed_limit_matches_the_reference(events: list[Event]) -> None:
    """A person's devices, counted by when each joined it (the other person's all join at the event's time), hit
    the windowed limit exactly when the reference does, at the window's edge too."""
    hs = Harness(RULES_NO_CAPS)
    for ev in events:
        hs.feed(ev)
    assert hs.refused == hs.ref_refused


@QUICK
@given(events=streams(), replay=st.data())
def test_reading_an_event_again_changes_nothing(events: list[Event], replay: st.DataObject) -> None:
    """(d) any event read again: no merge, link or identity row, the same persons; a link it had refused may be
    refused again, no other."""
    hs = Harness(RULES)
    first: dict[str, Resolution | None] = {}
    for ev in events:
        res = hs.feed(ev)
        first.setdefault(ev.mid, res)
    again = replay.draw(st.sampled_from(events))
    before = hs.ref.partition()
    store = hs.graph.store
    assert isinstance(store, MemoryStore)
    records_before = (dict(store.ids), dict(store.persons))
    res = hs.feed(again)
    if res is None:
        return
    assert res.merges == [] and res.links == [] and res.identities == []
    assert hs.ref.partition() == before
    assert (store.ids, store.persons) == records_before
    original = first[again.mid]
    assert original is not None
    assert {r.id_hash for r in res.refusals} <= {r.id_hash for r in original.refusals}


CONFLICT_FREE_POOLS = {"user_id": ["u0", "u1"], "crm_id": ["c0"], "phone": ["13800000000"], "device_id": ["d0", "d1"],
                       "anonymous_id": ["a0", "a1", "a2"]}


@QUICK
@given(events=streams(pools=CONFLICT_FREE_POOLS, max_events=10), order=st.data())
def test_conflict_free_graph_in_any_order_ends_the_same(events: list[Event], order: st.DataObject) -> None:
    """(e) with no rule reachable, any order of the events gives the same persons and the same OneIDs."""
    permuted = order.draw(st.permutations(events))
    finals = []
    for evs in (events, permuted):
        hs = Harness(RULES_CONFLICT_FREE)
        for ev in evs:
            res = hs.feed(ev)
            assert res is None or res.refusals == []
        hs.check_survivors()
        finals.append(({hsh: hs.graph.person_of(hsh) for hsh in hs.ref.person}, hs.ref.partition()))
    assert finals[0] == finals[1]


def neighbours(ref: ReferenceGraph, hsh: str) -> set[str]:
    return {b if a == hsh else a for a, b, _ in ref.links if hsh in (a, b)}


@QUICK
@given(before=streams(), after=streams(max_events=6), pick=st.data())
def test_split_detaches_and_is_never_linked_again(before: list[Event], after: list[Event],
                                                  pick: st.DataObject) -> None:
    """(i) after split(h): h is alone, the rest of its person are the components of the remaining links, a later
    event linking h to a former neighbour is refused with "split", and later events still match the reference."""
    hs = Harness(RULES_NO_MERGE_CAP)
    for ev in before:
        hs.feed(ev)
    if not hs.ref.person:
        return
    target = pick.draw(st.sampled_from(sorted(hs.ref.person)))
    former = neighbours(hs.ref, target)
    was = hs.graph.person_of(target)
    result = hs.graph.split(target, 5_000)
    hs.graph.take_writes()
    hs.graph.forget()
    expected = hs.ref.split(target)
    assert result is not None and expected is not None
    assert result.previous_oneid == was
    assert {o: frozenset(m) for o, m in result.persons.items()} == expected
    assert hs.graph.members(hs.graph.person_of(target) or "") == [(hs.ref.type_of[target], target)]
    hs.directory.apply(result.identities, result.merges)
    hs.check_partition()
    for hsh in hs.ref.person:
        assert hs.directory.resolve([hsh]) == hs.graph.person_of(hsh)
    relink(hs, target, former, 5_001)
    for ev in after:
        hs.feed(Event(ev.raw, ev.ts + 6_000, "after-" + ev.mid))
        assert all(hs.graph.person_of(target) != hs.graph.person_of(x) for x in former)
    relink(hs, target, former, 10_000)


def relink(hs: Harness, target: str, former: set[str], ts: int) -> None:
    """An event of ``target`` and each identifier it was split from: refused with "split", whatever else holds."""
    type_of = hs.ref.type_of
    for other in sorted(former):
        pair = sorted([target, other], key=lambda x: (-hs.ref.priority[type_of[x]], x))
        res = hs.graph.resolve([(type_of[x], x, "") for x in pair], ts, "relink")
        hs.graph.take_writes()
        assert [(r.reason, r.id_hash) for r in res.refusals] == [("split", pair[1])]
        assert hs.graph.person_of(target) != hs.graph.person_of(other)
        out = hs.ref.resolve([(type_of[x], x) for x in pair], ts)
        assert [r[:3] for r in out.refusals] == [("split", type_of[pair[1]], pair[1])]


def test_split_of_an_unknown_identifier_is_none() -> None:
    assert IdentityGraph(RULES, SALT).split(h("user_id", "nobody"), 1) is None
