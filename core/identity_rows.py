"""ClickHouse rows of the link writer's decisions: a ``core.identity.Resolution``'s identities, merges, links and
refusals as JSONCompactEachRow lines (JSON arrays in the ``*_COLUMNS`` order, as event rows are: core/rows.py).

Times are epoch milliseconds in, seconds with a fraction out (what a DateTime64(3) column takes). Identifier
values appear only hashed or masked: the rows carry what the graph holds, never a raw value."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import orjson

# The tables' columns in the order of their rows (sinks/migrations 0004 and 0007).
IDENTITY_COLUMNS = ("identifier_type", "identifier_hash", "identifier_masked", "oneid", "first_seen", "updated_at")
MERGE_COLUMNS = ("from_oneid", "into_oneid", "at", "reason", "op", "message_id")
LINK_COLUMNS = ("at", "message_id", "id_type", "id_hash", "other_type", "other_hash", "oneid", "rule_version")
REFUSAL_COLUMNS = ("at", "message_id", "reason", "id_type", "id_hash", "id_masked", "oneid", "other_oneid",
                   "rule_version")

# Table -> its columns, for whoever inserts the lines of ``resolution_lines`` (lists, as inserts take them).
IDENTITY_TABLES: dict[str, list[str]] = {
    "identities": list(IDENTITY_COLUMNS), "identity_merges": list(MERGE_COLUMNS),
    "identity_links": list(LINK_COLUMNS), "identity_refusals": list(REFUSAL_COLUMNS)}


class IdentityRowLike(Protocol):
    """An identifier's current person (``core.identity.IdentityRow``)."""

    @property
    def id_type(self) -> str: ...
    @property
    def id_hash(self) -> str: ...
    @property
    def masked(self) -> str: ...
    @property
    def oneid(self) -> str: ...
    @property
    def first_seen(self) -> int: ...
    @property
    def updated_at(self) -> int: ...


class MergeLike(Protocol):
    """A OneID merged into another (``core.identity.Merge``)."""

    @property
    def from_oneid(self) -> str: ...
    @property
    def into_oneid(self) -> str: ...
    @property
    def at(self) -> int: ...
    @property
    def message_id(self) -> str: ...
    @property
    def reason(self) -> str: ...


class LinkLike(Protocol):
    """A link made (``core.identity.Link``)."""

    @property
    def id_type(self) -> str: ...
    @property
    def id_hash(self) -> str: ...
    @property
    def other_type(self) -> str: ...
    @property
    def other_hash(self) -> str: ...
    @property
    def oneid(self) -> str: ...
    @property
    def at(self) -> int: ...
    @property
    def message_id(self) -> str: ...


class RefusalLike(Protocol):
    """A link refused, and why (``core.identity.Refusal``)."""

    @property
    def reason(self) -> str: ...
    @property
    def id_type(self) -> str: ...
    @property
    def id_hash(self) -> str: ...
    @property
    def masked(self) -> str: ...
    @property
    def oneid(self) -> str: ...
    @property
    def other_oneid(self) -> str: ...
    @property
    def at(self) -> int: ...
    @property
    def message_id(self) -> str: ...


class ResolutionLike(Protocol):
    """What one event's resolution changed (``core.identity.Resolution``)."""

    @property
    def identities(self) -> Iterable[IdentityRowLike]: ...
    @property
    def merges(self) -> Iterable[MergeLike]: ...
    @property
    def links(self) -> Iterable[LinkLike]: ...
    @property
    def refusals(self) -> Iterable[RefusalLike]: ...


def ch_time(ms: int) -> float:
    """A DateTime64(3) value of epoch milliseconds: seconds with a fraction (exact to the millisecond: the
    shortest float text of ms / 1000 has at most three decimals)."""
    return ms / 1000


def identity_line(r: IdentityRowLike) -> bytes:
    return orjson.dumps([r.id_type, r.id_hash, r.masked, r.oneid, ch_time(r.first_seen), ch_time(r.updated_at)])


def merge_line(m: MergeLike) -> bytes:
    return orjson.dumps([m.from_oneid, m.into_oneid, ch_time(m.at), m.reason, getattr(m, "op", "merge"),
                         m.message_id])


def link_line(link: LinkLike, rule_version: int) -> bytes:
    return orjson.dumps([ch_time(link.at), link.message_id, link.id_type, link.id_hash, link.other_type,
                         link.other_hash, link.oneid, rule_version])


def refusal_line(r: RefusalLike, rule_version: int) -> bytes:
    return orjson.dumps([ch_time(r.at), r.message_id, r.reason, r.id_type, r.id_hash, r.masked, r.oneid,
                         r.other_oneid, rule_version])


def identity_lines(rows: Iterable[IdentityRowLike]) -> list[bytes]:
    return [identity_line(r) for r in rows]


def merge_lines(merges: Iterable[MergeLike]) -> list[bytes]:
    return [merge_line(m) for m in merges]


def link_lines(links: Iterable[LinkLike], rule_version: int) -> list[bytes]:
    return [link_line(x, rule_version) for x in links]


def refusal_lines(refusals: Iterable[RefusalLike], rule_version: int) -> list[bytes]:
    return [refusal_line(r, rule_version) for r in refusals]


def resolution_lines(resolutions: Iterable[ResolutionLike], rule_version: int) -> dict[str, list[bytes]]:
    """Every row of a batch of resolutions, by table (``IDENTITY_TABLES``; a table without rows is left out)."""
    out: dict[str, list[bytes]] = {"identities": [], "identity_merges": [], "identity_links": [],
                                   "identity_refusals": []}
    for res in resolutions:
        out["identities"].extend(identity_line(r) for r in res.identities)
        out["identity_merges"].extend(merge_line(m) for m in res.merges)
        out["identity_links"].extend(link_line(x, rule_version) for x in res.links)
        out["identity_refusals"].extend(refusal_line(r, rule_version) for r in res.refusals)
    return {table: lines for table, lines in out.items() if lines}
