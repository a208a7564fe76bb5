"""Builders shared by the core tests."""

from __future__ import annotations

from config.settings import PACKAGE_RULES_DIR
from core.envelope import Entry
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
