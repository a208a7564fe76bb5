"""Identity resolution (pure): which person each event belongs to, which links merge persons, which are refused.

The semantics are docs/identity.md's; ``tests/core/test_identity_reference.py`` states them again as a plain
union-find and holds this to it. ``IdentityGraph`` works over records it reads from a ``GraphStore`` (the link
writer's RocksDB table) and keeps every record it changed until ``take_writes``, so the adapter writes each once
per batch. Identifiers are ``(type, hash, masked)``: no raw value reaches this module.

A person's OneID is the OneID of its anchor (its highest-priority identifier, ties by hash), so the survivor of a
merge depends only on the identifiers the persons hold, not on the order events were read in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import msgspec

from core.ids import oneid_for_hash

if TYPE_CHECKING:
    from rules.loader import IdentityRules

Ident = tuple[str, str, str]  # (type, hash, masked)
MAX_CHAIN = 64  # merge pointers followed at most (a cycle written by mistake cannot loop forever)


# Records are msgpack arrays (compact in RocksDB: bytes per identifier is a figure we report). A field added later
# goes at the end with a default, so a record written before it still decodes.
class IdRecord(msgspec.Struct, array_like=True):
    """One identifier: its type, its person's current OneID, when it was first seen, its masked value, and the
    version of its ``identities`` row (monotonic, so a later row always replaces an earlier one)."""

    t: str
    o: str
    f: int
    m: str = ""
    v: int = 0


class Member(msgspec.Struct, array_like=True):
    """An identifier of a person: hash, type, when it joined this person (limits with a window count these), and
    the identifiers an operator split it from (never linked again)."""

    h: str
    t: str
    j: int
    u: list[str] = []


class LinkRecord(msgspec.Struct, array_like=True):
    """A link that joined ``h`` to ``other`` (the proposing event's primary), with that event; ``m``: it merged two
    persons known before the event (not a new identifier joining)."""

    h: str
    other: str
    mid: str
    at: int
    m: bool = False


class PersonRecord(msgspec.Struct, array_like=True):
    """A live person (``into`` empty): its identifiers, the links that joined them, the merges that formed it; or
    a OneID merged away (``into`` names where it went). ``at``: the time of its last identity_merges row."""

    o: str
    into: str = ""
    ids: list[Member] = []
    links: list[LinkRecord] = []
    merges: int = 0
    at: int = 0


_id_enc = msgspec.msgpack.Encoder()
_id_dec = msgspec.msgpack.Decoder(IdRecord)
_person_dec = msgspec.msgpack.Decoder(PersonRecord)


def encode_record(rec: IdRecord | PersonRecord) -> bytes:
    return _id_enc.encode(rec)


def decode_id(raw: bytes) -> IdRecord:
    return _id_dec.decode(raw)


def decode_person(raw: bytes) -> PersonRecord:
    return _person_dec.decode(raw)


@dataclass(slots=True)
class Merge:
    from_oneid: str
    into_oneid: str
    at: int
    message_id: str
    reason: str = "link"  # link, split (op = split: from_oneid stands alone again, into_oneid is the one it left)
    op: str = "merge"


@dataclass(slots=True)
class Link:
    id_type: str
    id_hash: str
    other_type: str
    other_hash: str
    oneid: str
    at: int
    message_id: str


@dataclass(slots=True)
class Refusal:
    """A link refused: ``reason`` is ``<rule>:<type>`` for a type's rule (``unique:user_id``, ``limit:phone``,
    ``limit_window:device_id``), else ``max_identifiers``, ``max_merges`` or ``split``. The identifier named is the
    one left out (the lower-priority one of the event); ``oneid`` the person it would have joined."""

    reason: str
    id_type: str
    id_hash: str
    masked: str
    oneid: str
    other_oneid: str
    at: int
    message_id: str


@dataclass(slots=True)
class IdentityRow:
    id_type: str
    id_hash: str
    masked: str
    oneid: str
    first_seen: int
    updated_at: int


@dataclass(slots=True)
class Resolution:
    oneid: str  # the person the event belongs to (its primary identifier's, after the event's merges)
    merges: list[Merge] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    identities: list[IdentityRow] = field(default_factory=list)  # identifiers whose person changed


@dataclass(slots=True)
class SplitResult:
    """``split``: the persons the identifier's person became (OneID -> its identifiers' hashes), the identity rows
    and merge-history rows (op = split) to write, and the links removed."""

    persons: dict[str, list[str]] = field(default_factory=dict)
    merges: list[Merge] = field(default_factory=list)
    identities: list[IdentityRow] = field(default_factory=list)
    removed_links: list[LinkRecord] = field(default_factory=list)
    previous_oneid: str = ""


class GraphStore(Protocol):
    def get_id(self, id_hash: str) -> IdRecord | None: ...
    def get_person(self, oneid: str) -> PersonRecord | None: ...


class MemoryStore:
    """A store in dicts (tests, tools): ``take_writes`` results applied with ``apply``."""

    def __init__(self) -> None:
        self.ids: dict[str, IdRecord] = {}
        self.persons: dict[str, PersonRecord] = {}

    def get_id(self, id_hash: str) -> IdRecord | None:
        return self.ids.get(id_hash)

    def get_person(self, oneid: str) -> PersonRecord | None:
        return self.persons.get(oneid)

    def apply(self, ids: dict[str, IdRecord], persons: dict[str, PersonRecord]) -> None:
        self.ids.update(ids)
        self.persons.update(persons)


class IdentityGraph:
    def __init__(self, rules: IdentityRules, salt: str = "", store: GraphStore | None = None):
        self.rules = rules
        self.salt = salt
        self.store: GraphStore = store if store is not None else MemoryStore()
        self._ids: dict[str, IdRecord] = {}  # records read or changed since the last ``forget``
        self._persons: dict[str, PersonRecord] = {}
        self._dirty_ids: set[str] = set()
        self._dirty_persons: set[str] = set()
        self._priority = {name: t.priority for name, t in rules.types.items()}

    # -- records -------------------------------------------------------------------------------------------------

    def _id(self, h: str) -> IdRecord | None:
        rec = self._ids.get(h)
        if rec is None:
            rec = self.store.get_id(h)
            if rec is not None:
                self._ids[h] = rec
        return rec

    def _person(self, oneid: str) -> PersonRecord | None:
        rec = self._persons.get(oneid)
        if rec is None:
            rec = self.store.get_person(oneid)
            if rec is not None:
                self._persons[oneid] = rec
        return rec

    def _put_id(self, h: str, rec: IdRecord) -> None:
        self._ids[h] = rec
        self._dirty_ids.add(h)

    def _put_person(self, rec: PersonRecord) -> None:
        self._persons[rec.o] = rec
        self._dirty_persons.add(rec.o)

    def take_writes(self) -> tuple[dict[str, IdRecord], dict[str, PersonRecord]]:
        """The records changed since the last call (the adapter stores them, once each)."""
        ids = {h: self._ids[h] for h in self._dirty_ids}
        persons = {o: self._persons[o] for o in self._dirty_persons}
        self._dirty_ids.clear()
        self._dirty_persons.clear()
        if isinstance(self.store, MemoryStore):
            self.store.apply(ids, persons)
        return ids, persons

    def forget(self) -> None:
        """Drop the records read (after ``take_writes``): memory stays bounded by a batch's identifiers."""
        if not self._dirty_ids and not self._dirty_persons:
            self._ids.clear()
            self._persons.clear()

    # -- queries -------------------------------------------------------------------------------------------------

    def person_of(self, id_hash: str) -> str | None:
        rec = self._id(id_hash)
        return rec.o if rec is not None else None

    def members(self, oneid: str) -> list[tuple[str, str]]:
        p = self._person(self.survivor(oneid))
        return [(m.t, m.h) for m in p.ids] if p is not None else []

    def record(self, oneid: str) -> PersonRecord | None:
        return self._person(oneid)

    def survivor(self, oneid: str) -> str:
        o = oneid
        for _ in range(MAX_CHAIN):
            p = self._person(o)
            if p is None or not p.into:
                return o
            o = p.into
        return o

    # -- resolution ----------------------------------------------------------------------------------------------

    def _anchor(self, ids: Iterable[Member]) -> tuple[int, str]:
        prio = self._priority
        return min((-prio.get(m.t, 0), m.h) for m in ids)

    def resolve(self, ids: Sequence[Ident], ts: int, message_id: str) -> Resolution:
        """Resolve one event's identifiers (at least one) to its person, making or refusing the links it proposes."""
        prio = self._priority
        unique: dict[str, Ident] = {}
        for ident in ids:
            unique.setdefault(ident[1], ident)
        order = sorted(unique.values(), key=lambda i: (-prio.get(i[0], 0), i[1]))
        res = Resolution(oneid="")
        primary = order[0]
        # A person made by this event (its primary seen for the first time) was never known outside: while it is
        # the primary alone, joining another person is that identifier joining, not a merge of two persons.
        p, p_fresh = self._person_or_new(primary, ts, res)
        for ident in order[1:]:
            q, q_fresh = self._person_or_new(ident, ts, res)
            if q.o == p.o:
                continue
            reason = self._refused(p, q, ts, p_fresh or q_fresh)
            if reason is not None:
                res.refusals.append(Refusal(reason, ident[0], ident[1], ident[2], p.o, q.o, ts, message_id))
                p_fresh = False  # its OneID is named in the refusal: known outside from now on
                continue
            p = self._merge(p, q, p_fresh, q_fresh, ident, primary, ts, message_id, res)
            p_fresh = False
        res.oneid = p.o
        return res

    def _person_or_new(self, ident: Ident, ts: int, res: Resolution) -> tuple[PersonRecord, bool]:
        """The identifier's person, or a new person of it alone (written at once: refused or not, every identifier
        seen is someone's)."""
        t, h, masked = ident
        rec = self._id(h)
        if rec is not None:
            p = self._person(rec.o)
            if p is not None:
                return p, False
        o = oneid_for_hash(self.salt, h)
        p = PersonRecord(o=o, ids=[Member(h, t, ts)])
        prev = self._person(o)
        if prev is not None:  # a OneID merged away before and its identifier record lost: live again
            p.at = prev.at
        self._put_person(p)
        self._put_id(h, IdRecord(t, o, ts, masked, ts))
        res.identities.append(IdentityRow(t, h, masked, o, ts, ts))
        return p, True

    def _refused(self, p: PersonRecord, q: PersonRecord, ts: int, fresh: bool) -> str | None:
        """Why merging ``q`` into ``p`` is refused, or None. Checked in this order: a link an operator split, the
        rules of each type ``q`` adds (in priority order), then the hard caps."""
        q_hashes = {m.h for m in q.ids}
        p_hashes = {m.h for m in p.ids}
        for m in p.ids:
            if m.u and not q_hashes.isdisjoint(m.u):
                return "split"
        for m in q.ids:
            if m.u and not p_hashes.isdisjoint(m.u):
                return "split"
        types = self.rules.types
        q_types = {m.t for m in q.ids}
        for name, spec in types.items():
            if name not in q_types:
                continue
            limit = 1 if spec.unique else spec.limit
            if limit is None:
                continue
            if spec.window_ms:
                # q's identifiers join now; p's count when they joined it within the window.
                horizon = ts - spec.window_ms
                n = sum(1 for m in p.ids if m.t == name and m.j > horizon) + sum(1 for m in q.ids if m.t == name)
            else:
                n = sum(1 for m in p.ids if m.t == name) + sum(1 for m in q.ids if m.t == name)
            if n > limit:
                kind = "unique" if spec.unique else ("limit_window" if spec.window_ms else "limit")
                return f"{kind}:{name}"
        if len(p.ids) + len(q.ids) > self.rules.max_identifiers:
            return "max_identifiers"
        if not fresh and p.merges + q.merges + 1 > self.rules.max_merges:
            return "max_merges"
        return None

    def _merge(self, p: PersonRecord, q: PersonRecord, p_fresh: bool, q_fresh: bool, ident: Ident, primary: Ident,
               ts: int, message_id: str, res: Resolution) -> PersonRecord:
        """``q`` (the linked identifier's person) joins ``p`` (the primary's); the survivor is the one whose anchor
        leads. Returns the merged person. A fresh side (a person made by this event) is an identifier joining."""
        joined = [Member(m.h, m.t, ts, m.u) for m in q.ids]
        ids = p.ids + joined
        known_both = not (p_fresh or q_fresh)
        links = [*p.links, *q.links, LinkRecord(ident[1], primary[1], message_id, ts, known_both)]
        p_wins = self._anchor(p.ids) <= self._anchor(q.ids)
        survivor, loser = (p, q) if p_wins else (q, p)
        loser_fresh = q_fresh if p_wins else p_fresh
        merged = PersonRecord(o=survivor.o, ids=ids, links=links,
                              merges=p.merges + q.merges + (1 if known_both else 0), at=survivor.at)
        self._put_person(merged)
        res.links.append(Link(ident[0], ident[1], primary[0], primary[1], merged.o, ts, message_id))
        if not loser_fresh:
            # The loser's OneID was known outside: merged into the survivor.
            at = max(ts, loser.at + 1)
            self._put_person(PersonRecord(o=loser.o, into=merged.o, at=at))
            res.merges.append(Merge(loser.o, merged.o, at, message_id))
        else:
            # The fresh person was never known outside: it is only the survivor's new identifier, and its identity
            # row names the survivor's OneID from the start.
            lost = loser.ids[0].h
            self._persons.pop(loser.o, None)
            self._dirty_persons.discard(loser.o)
            res.identities = [r for r in res.identities if r.id_hash != lost]
        moved = loser.ids
        for m in moved:
            rec = self._id(m.h)
            if rec is None:  # cannot happen for a stored person; keeps the graph whole if a record was lost
                rec = IdRecord(m.t, loser.o, m.j)
            v = max(ts, rec.v + 1)
            self._put_id(m.h, IdRecord(rec.t, merged.o, rec.f, rec.m, v))
            res.identities.append(IdentityRow(rec.t, m.h, rec.m, merged.o, rec.f, v))
        return merged

    # -- split -----------------------------------------------------------------------------------------------------

    def split(self, id_hash: str, ts: int, reason: str = "operator", other_hash: str | None = None,
              ) -> SplitResult | None:
        """Detach an identifier from its person: the links it took part in (only those with ``other_hash``, if
        given: one wrong link) are removed and never made again, and the person's identifiers re-form as the
        persons their remaining links connect. None if the identifier is unknown (or not ``other_hash``'s person)."""
        rec = self._id(id_hash)
        if rec is None:
            return None
        p = self._person(rec.o)
        if p is None or (other_hash is not None and other_hash not in {m.h for m in p.ids}):
            return None

        def cut(lk: LinkRecord) -> bool:
            if other_hash is None:
                return lk.h == id_hash or lk.other == id_hash
            return {lk.h, lk.other} == {id_hash, other_hash}

        out = SplitResult(previous_oneid=p.o)
        kept = [lk for lk in p.links if not cut(lk)]
        out.removed_links = [lk for lk in p.links if cut(lk)]
        cut_from = sorted({lk.other if lk.h == id_hash else lk.h for lk in out.removed_links})
        if other_hash is not None:
            cut_from = sorted({*cut_from, other_hash})
        # Components of the remaining links (union-find over the person's identifiers).
        parent = {m.h: m.h for m in p.ids}

        def find(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for lk in kept:
            if lk.h in parent and lk.other in parent:
                a, b = find(lk.h), find(lk.other)
                if a != b:
                    parent[max(a, b)] = min(a, b)
        groups: dict[str, list[Member]] = {}
        for m in p.ids:
            if m.h == id_hash:
                m = Member(m.h, m.t, m.j, sorted({*m.u, *cut_from}))
            groups.setdefault(find(m.h), []).append(m)
        for members in groups.values():
            anchor = self._anchor(members)
            o = oneid_for_hash(self.salt, anchor[1])
            hashes = {m.h for m in members}
            glinks = [lk for lk in kept if lk.h in hashes]
            prev = self._person(o) if o != p.o else None
            at = max(ts, (prev.at if prev is not None else p.at) + 1)
            self._put_person(PersonRecord(o=o, ids=members, links=glinks, merges=sum(1 for lk in glinks if lk.m),
                                          at=at))
            out.persons[o] = sorted(hashes)
            if o != p.o:
                out.merges.append(Merge(o, p.o, at, "", reason, "split"))
                for m in members:
                    r = self._id(m.h)
                    if r is None:
                        continue
                    v = max(ts, r.v + 1)
                    self._put_id(m.h, IdRecord(r.t, o, r.f, r.m, v))
                    out.identities.append(IdentityRow(r.t, m.h, r.m, o, r.f, v))
        # p's OneID is its anchor's, and the anchor is in one of the groups: that group keeps it. Any other OneID
        # once merged into p (one per identifier that led a person) now points to the group holding its identifier.
        group_of = {h: o for o, hs in out.persons.items() for h in hs}
        for m in p.ids:
            o = oneid_for_hash(self.salt, m.h)
            if o in out.persons or o == p.o:
                continue
            old = self._person(o)
            if old is None or not old.into or old.into == group_of[m.h]:
                continue
            at = max(ts, old.at + 1)
            self._put_person(PersonRecord(o=o, into=group_of[m.h], at=at))
            out.merges.append(Merge(o, group_of[m.h], at, "", reason, "merge"))
        return out


def directory_resolve(hashes: Sequence[str], oneid_of_hash: Callable[[str], str | None],
                      into_of: Callable[[str], str | None]) -> str | None:
    """The one person all ``hashes`` belong to, per a directory replica (``i:<hash>`` and ``m:<oneid>`` records),
    or None when one is unknown or they are several persons: the event then goes to the link writer."""
    survivor: str | None = None
    for h in hashes:
        o = oneid_of_hash(h)
        if o is None:
            return None
        for _ in range(MAX_CHAIN):
            nxt = into_of(o)
            if not nxt:
                break
            o = nxt
        if survivor is None:
            survivor = o
        elif o != survivor:
            return None
    return survivor
