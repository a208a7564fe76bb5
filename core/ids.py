"""Identifiers: person keys, OneIDs, action ids, routing, and the contract's hashing and masking of PII."""

from __future__ import annotations

import hashlib
import zlib

# Provisional OneID order: the first present of these names the person until identity resolution (roadmap 1).
PERSON_KEY_ORDER = ("user_id", "crm_id", "phone", "email", "wechat_unionid", "miniapp_openid", "wechat_openid",
                    "device_id", "anonymous_id")


def person_key(user_id: str | None, anonymous_id: str | None, identities: dict[str, str]) -> str | None:
    """``type:value`` of the identifier that names this event's person, or None when there is none."""
    if user_id:
        return f"user_id:{user_id}"
    for t in PERSON_KEY_ORDER[1:-1]:
        v = identities.get(t)
        if v:
            return f"{t}:{v}"
    if anonymous_id:
        return f"anonymous_id:{anonymous_id}"
    for t in sorted(identities):
        if identities[t]:
            return f"{t}:{identities[t]}"
    return None


def identifier_hash(salt: str, id_type: str, value: str) -> str:
    """The contract's ``identifier_hash``: ``hex(SHA256(CDP_PII_SALT || type || ':' || value))``."""
    return hashlib.sha256((salt + id_type + ":" + value).encode()).hexdigest()


def oneid_for_hash(salt: str, id_hash: str) -> str:
    """The OneID of a person whose anchor is this identifier: opaque, and without the salt no phone number can be
    tried against it."""
    return "o_" + hashlib.sha256(("oneid" + salt + id_hash).encode()).hexdigest()[:24]


def oneid_for(key: str) -> str:
    """Deterministic OneID for a person key: the same person gets the same id on every worker and replay."""
    return "o_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def partition_for(key: str, partitions: int) -> int:
    """Stable routing of a person to a partition (crc32: fast, and the same in every process)."""
    return zlib.crc32(key.encode()) % partitions


def action_id(rule_id: str, trigger_message_id: str, window_start_ms: int) -> str:
    """Same rule, same triggering event, same window: same id, so redelivery never becomes a second SMS. No OneID
    in it: a trigger armed before its person was merged into another fires after the merge with the id it would
    have had (docs/identity.md)."""
    return "act_" + hashlib.sha256(f"{rule_id}|{trigger_message_id}|{window_start_ms}".encode()).hexdigest()[:32]


def mask(identifier_type: str, value: str) -> str:
    """Masked form that may reach ClickHouse: ``138****8000``, ``a***@example.com``, ``ab***yz`` otherwise."""
    if not value:
        return ""
    if identifier_type == "email" and "@" in value:
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    if identifier_type == "phone" and len(value) >= 7:
        return f"{value[:3]}****{value[-4:]}"
    if len(value) <= 4:
        return value[:1] + "***"
    return f"{value[:2]}***{value[-2:]}"
