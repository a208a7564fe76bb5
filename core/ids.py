"""Identifiers: the contract's hashing of identifiers, OneIDs, action ids, routing, and masking of PII."""

from __future__ import annotations

import hashlib
import zlib


def identifier_hash(salt: str, id_type: str, value: str) -> str:
    """The contract's ``identifier_hash``: ``hex(SHA256(CDP_PII_SALT || type || ':' || value))``."""
    return hashlib.sha256((salt + id_type + ":" + value).encode()).hexdigest()


def oneid_for_hash(salt: str, id_hash: str) -> str:
    """The OneID of a person whose anchor is this identifier: opaque, and without the salt no phone number can be
    tried against it."""
    return "o_" + hashlib.sha256(("oneid" + salt + id_hash).encode()).hexdigest()[:24]


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
