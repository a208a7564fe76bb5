"""`cdp identity split TYPE:VALUE`: ask the link writer to detach an identifier from its person, and wait for it.

The link writer re-forms the persons, rebuilds their state from their events and reassigns the events
(docs/identity.md); this only sends the request (the identifier hashed: no raw value on the topic) and waits until
the pipeline has carried it out.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from config.settings import Settings
from core.identifiers import raw_identifiers
from core.ids import identifier_hash, mask
from core.split import split_request
from ops.topics import publish_lines, wait_processed
from rules.loader import IdentityRules, load_rules
from streams.kafka import sync_salt


def normalized(rules: IdentityRules, id_type: str, value: str) -> str | None:
    """``value`` as the ingest would read it for ``id_type`` (normalised; None if refused), read from where the
    type's first ``read_from`` path puts it (an openid given as ``appid:openid``)."""
    ev: dict = {}
    node = ev
    *parents, last = rules.types[id_type].read_from[0].split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    found = [v for t, v in raw_identifiers(ev, rules) if t == id_type]
    return found[0] if found else None


@dataclass(frozen=True)
class SplitRequest:
    id_type: str
    masked: str
    id_hash: str
    error: str = ""


def _hash(s: Settings, rules: IdentityRules, id_type: str, value: str) -> tuple[str, str, str]:
    """(hash, masked, error) of an identifier as the ingest reads it."""
    if id_type not in rules.types:
        return "", mask(id_type, value), f"unknown identifier type {id_type!r}"
    normal = normalized(rules, id_type, value)
    if normal is None:
        return "", mask(id_type, value), f"{mask(id_type, value)} is not a valid {id_type}"
    return identifier_hash(s.salt, id_type, normal), mask(id_type, normal), ""


def split_identifier(s: Settings, id_type: str, value: str, other: tuple[str, str] | None = None,
                     timeout_s: float = 300.0) -> SplitRequest:
    """Send the split of ``id_type:value`` (from everything, or only its links with ``other``) and wait until it
    is carried out; ``error`` says why it was not sent."""
    rules = load_rules(s.resolved_rules_dir).identity
    sync_salt(s)
    h, masked, error = _hash(s, rules, id_type, value)
    if error:
        return SplitRequest(id_type, masked, "", error)
    other_hash = None
    if other is not None:
        other_hash, _, error = _hash(s, rules, *other)
        if error:
            return SplitRequest(id_type, masked, h, error)
    asyncio.run(publish_lines(s, [split_request(h, int(time.time() * 1000), other_hash)], topic=s.identity_topic))
    asyncio.run(wait_processed(s, timeout_s=timeout_s))
    return SplitRequest(id_type, masked, h)
