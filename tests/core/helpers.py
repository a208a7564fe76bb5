"""Builders shared by the core tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from config.settings import PACKAGE_RULES_DIR
from core.envelope import Entry
from core.ids import identifier_hash, oneid_for_hash
from rules.loader import load_rules

RULES = load_rules(PACKAGE_RULES_DIR)
HOUR = 3_600_000
T0 = 1_790_000_000_000


def entry(event: str, ts: int, mid: str, pk: str = "user_id:u1", **extra) -> Entry:
    ev = {"type": "track", "message_id": mid, "event": event, "user_id": pk.split(":", 1)[1], **extra}
    return Entry.of_event(pk=pk, ts=ts, rcv=ts, src=(0, 0), event=ev)


def identify(ts: int, mid: str, phone: str, pk: str = "user_id:u1") -> Entry:
    ev = {"type": "identify", "message_id": mid, "user_id": pk.split(":", 1)[1], "identities": {"phone": phone}}
    return Entry.of_event(pk=pk, ts=ts, rcv=ts, src=(0, 0), event=ev)


def oneid_of(id_type: str, value: str, salt: str = "") -> str:
    """The OneID of a person whose anchor (strongest identifier) is this one."""
    return oneid_for_hash(salt, identifier_hash(salt, id_type, value))


def every_identifier_known(salt: str = "") -> Callable[[Sequence[str]], str]:
    """A directory replica that knows every identifier, each event's as the person of its primary (first) one:
    the ingest's resolve for tests that read the entries of person partitions."""
    return lambda hashes: oneid_for_hash(salt, hashes[0])


def keyed_by_user_id(*users: str, salt: str = "") -> Callable[[Sequence[str]], str | None]:
    """A directory replica that knows these userIds, each as the person keyed ``user_id:<id>`` (a pk is opaque to
    the person stage, so tests keep readable keys); an event whose primary identifier is none of them is
    unresolved."""
    persons = {identifier_hash(salt, "user_id", u): f"user_id:{u}" for u in users}
    return lambda hashes: persons.get(hashes[0])
