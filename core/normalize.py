"""Identifier hygiene and normalisation (pure).

Values such as ``null``, ``undefined``, ``0`` or an SDK's placeholder are never used as identifiers: joined on,
they make one "mega-person" of thousands of strangers (PostHog's and others' known failure). The event is kept and
the bad identifier dropped and counted.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from rules.loader import IdentityRules

# Compared lower-cased, after trimming.
PLACEHOLDERS = frozenset({
    "", "null", "undefined", "none", "nil", "nan", "0", "-1", "anonymous", "anonymousid", "anonymous_id",
    "unknown", "[object object]", "true", "false", "guest", "00000000-0000-0000-0000-000000000000",
})
_PHONE_JUNK = re.compile(r"[\s\-().]")
_MAINLAND = re.compile(r"^1[3-9]\d{9}$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
OPENID_TYPES = ("wechat_openid", "miniapp_openid")
_EVENT_ID_FIELDS = ("user_id", "anonymous_id", "previous_id")


def clean_id(value: Any) -> str | None:
    if value is None:
        return None
    v = str(value).strip()
    return None if v.lower() in PLACEHOLDERS else v


def normalize_phone(value: str) -> str | None:
    """Mainland mobiles as 11 digits (+86, 0086, spaces and dashes removed); others as E.164; else None."""
    v = _PHONE_JUNK.sub("", value)
    if v.startswith("00"):
        v = "+" + v[2:]
    if v.startswith("+86") and _MAINLAND.match(v[3:]):
        return v[3:]
    if v.startswith("86") and len(v) == 13 and _MAINLAND.match(v[2:]):
        return v[2:]
    if _MAINLAND.match(v):
        return v
    if _E164.match(v):
        return v
    return None


def normalize_email(value: str) -> str | None:
    v = value.strip().lower()
    return v if _EMAIL.match(v) else None


def normalize_identifier(id_type: str, value: Any, app_id: str | None = None) -> str | None:
    v = clean_id(value)
    if v is None:
        return None
    if id_type == "phone":
        return normalize_phone(v)
    if id_type == "email":
        return normalize_email(v)
    if id_type in OPENID_TYPES and app_id:
        # An openid is only unique within one WeChat app: scope it, so two apps' ids never collide.
        return v if v.startswith(f"{app_id}:") else f"{app_id}:{v}"
    return v


def app_id_of(ev: dict[str, Any]) -> str | None:
    """The WeChat app an event's openids belong to. A placeholder is no app id (``0``, ``null``): the identity
    cleaning drops it as such, and an openid scoped by it would be scoped again, differently, when the cleaned
    event is read a second time (a replay from the dead-letter topic)."""
    ctx = ev.get("context") or {}
    wechat = ctx.get("wechat")
    if not isinstance(wechat, dict):
        wechat = {}
    for v in ((ev.get("identities") or {}).get("wechat_appid"), wechat.get("appid"), wechat.get("app_id")):
        if v:
            app_id = clean_id(v)
            if app_id:
                return app_id
    return None


class RulesIndex:
    """What the per-event code asks of the identity rules, looked up once per rule set: the type read at each
    ``read_from`` path (a path has one type), and the blocked check."""

    __slots__ = ("_listed_only", "path_types", "rules")

    def __init__(self, rules: IdentityRules):
        self.rules = rules
        self.path_types = {p: name for name, t in rules.types.items() for p in t.read_from}
        # Types whose values are only trimmed and that have no pattern (user_id, anonymous_id by default: most
        # events' only identifiers): blocked means listed, a set lookup instead of ``is_blocked``'s general case.
        self._listed_only = {name: t.blocked for name, t in rules.types.items()
                             if t.normalize == "trim" and not t.blocked_patterns}

    def is_blocked(self, id_type: str, value: str) -> bool:
        listed = self._listed_only.get(id_type)
        return value in listed if listed is not None else self.rules.is_blocked(id_type, value)


_indexes: dict[int, RulesIndex] = {}


def rules_index(rules: IdentityRules) -> RulesIndex:
    got = _indexes.get(id(rules))
    if got is None or got.rules is not rules:
        if len(_indexes) > 16:  # rule sets are few (one per load); never a leak when tests make many
            _indexes.clear()
        got = _indexes[id(rules)] = RulesIndex(rules)
    return got


def clean_event(ev: dict[str, Any], rules: IdentityRules, dropped: Counter[str]) -> None:
    """Normalise the identifiers of an event (a ``pipeline_dict``) in place, dropping placeholders and what the
    identity rules block (by the type that reads the field; an undeclared ``identities`` key by its own name), so
    the event carried and its ClickHouse row hold no value that is no identifier; count what was dropped, by
    field (``identities`` by type)."""
    index = rules_index(rules)
    types = index.path_types
    is_blocked = index.is_blocked
    for f in _EVENT_ID_FIELDS:
        if f not in ev:
            continue
        v = clean_id(ev[f])
        if v is None or is_blocked(types.get(f, f), v):
            del ev[f]
            dropped[f] += 1
        else:
            ev[f] = v
    ids = ev.get("identities")
    if ids:
        # Only openids are scoped by their app; most events carry none.
        app_id = app_id_of(ev) if any(t in OPENID_TYPES for t in ids) else None
        out = {}
        for t, raw in ids.items():
            v = normalize_identifier(t, raw, app_id)
            if v is None or is_blocked(types.get("identities." + t, t), v):
                dropped[t] += 1
            else:
                out[t] = v
        if out:
            ev["identities"] = out
        else:
            del ev["identities"]
    traits = ev.get("traits")
    if traits:
        for t in ("phone", "email"):
            if isinstance(traits.get(t), str):
                v = normalize_identifier(t, traits[t])
                if v is None:
                    del traits[t]
                    dropped[f"traits.{t}"] += 1
                else:
                    traits[t] = v
