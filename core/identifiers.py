"""The identifiers of an event (pure), as the identity rules say where to read them and how to normalise them.

Each identifier type of ``rules.identity`` (``rules.loader.IdentityRules``) names dotted paths into the pipeline
event (``user_id``, ``identities.phone``, ``traits.email``, ``context.device.id``, ...), and Segment's
``context.externalIds`` (``[{id, type, collection, encoding}]``) is read through the rules' mapping of its ``type``
names onto ours. A value is normalised by its type (trimmed, lower-cased, a phone number, an email address, or an
openid scoped by the event's WeChat app id as ``core.normalize`` scopes it, never twice); a placeholder
(``core.normalize.PLACEHOLDERS``), a blocked value or one matching a blocked pattern is no identifier.

An identifier leaves here as ``(type, hash, masked)``: ``core.ids.identifier_hash`` of its normalised value and
``core.ids.mask`` of it, one per (type, hash), sorted by priority (highest first), ties by hash: the first is the
event's primary identifier (docs/identity.md).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from core.ids import identifier_hash, mask
from core.normalize import PLACEHOLDERS, app_id_of, normalize_email, normalize_phone
from rules.loader import IdentityRules

Ident = tuple[str, str, str]  # (type, hash, masked)

# The event fields whose raw values an envelope can carry beside its row: an event whose identifiers are all read
# from these alone needs no body to be rebuilt (core.envelope).
TOP_LEVEL_FIELDS = ("user_id", "anonymous_id")
EXTERNAL_IDS_PATH = ("context", "externalIds")


class _Plan:
    """The rules' paths grouped by the event field they start at, so an event is looked at once per field it
    has rather than once per path: field -> [(type, the rest of the path, normalisation, priority)]."""

    __slots__ = ("external", "paths", "rules")

    def __init__(self, rules: IdentityRules):
        self.rules = rules
        paths: dict[str, list[tuple[str, tuple[str, ...], str, int]]] = {}
        for name, t in rules.types.items():
            for path in t.read_from:
                head, *rest = path.split(".")
                paths.setdefault(head, []).append((name, tuple(rest), t.normalize, t.priority))
        self.paths = paths
        # Segment's externalIds type -> (our type, its normalisation, its priority)
        self.external = {ext: (name, rules.types[name].normalize, rules.types[name].priority)
                         for ext, name in rules.external_ids.items() if name in rules.types}


_plans: dict[int, _Plan] = {}


def _plan(rules: IdentityRules) -> _Plan:
    p = _plans.get(id(rules))
    if p is None or p.rules is not rules:
        if len(_plans) > 16:  # rule sets are few (one per load); never a leak when tests make many
            _plans.clear()
        p = _plans[id(rules)] = _Plan(rules)
    return p


def _text(value: Any) -> str | None:
    """An identifier's text: a string, or an integer (apps send numeric ids and phone numbers); nothing else."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


class _Normaliser:
    """Normalises one event's values; the WeChat app id is looked up once, and only for an openid."""

    __slots__ = ("_app_id", "_ev", "_looked_up")

    def __init__(self, ev: dict[str, Any]):
        self._ev = ev
        self._app_id: str | None = None
        self._looked_up = False

    def __call__(self, kind: str, raw: str) -> str | None:
        v = raw.strip()
        if v.lower() in PLACEHOLDERS:
            return None
        if kind == "trim":
            return v
        if kind == "lower":
            return v.lower()
        if kind == "phone":
            return normalize_phone(v)
        if kind == "email":
            return normalize_email(v)
        if kind == "openid":
            if not self._looked_up:
                self._app_id, self._looked_up = app_id_of(self._ev), True
            app_id = self._app_id
            # An openid is only unique within one WeChat app. The ingest's cleaning scoped those it found in
            # ``identities`` already: scoped once, never twice.
            if app_id and not v.startswith(app_id + ":"):
                return f"{app_id}:{v}"
            return v
        return v


def _collect(ev: dict[str, Any], rules: IdentityRules,
             dropped: Counter[str] | None) -> tuple[list[tuple[str, str, int]], bool]:
    """Every (type, normalised value, priority) the event holds, in no particular order and possibly repeated, and
    whether any was read from outside ``TOP_LEVEL_FIELDS``."""
    plan = _plan(rules)
    norm = _Normaliser(ev)
    found: list[tuple[str, str, int]] = []
    beyond_top = False
    for head, wanted in plan.paths.items():
        base = ev.get(head)
        if base is None:
            continue
        for name, rest, kind, priority in wanted:
            node: Any = base
            for part in rest:
                if not isinstance(node, dict):
                    node = None
                    break
                node = node.get(part)
            if node is None:
                continue
            raw = _text(node)
            v = norm(kind, raw) if raw is not None else None
            if v is None or rules.is_blocked(name, v):
                if dropped is not None:
                    dropped[name] += 1
                continue
            found.append((name, v, priority))
            if rest or head not in TOP_LEVEL_FIELDS:
                beyond_top = True
    if plan.external:
        ctx = ev.get("context")
        ext = ctx.get("externalIds") if isinstance(ctx, dict) else None
        if isinstance(ext, list):
            for item in ext:
                if not isinstance(item, dict):
                    continue
                mapped = plan.external.get(item.get("type"))  # type: ignore[arg-type]
                if mapped is None:
                    continue
                name, kind, priority = mapped
                raw = _text(item.get("id"))
                v = norm(kind, raw) if raw is not None else None
                if v is None or rules.is_blocked(name, v):
                    if dropped is not None:
                        dropped[name] += 1
                    continue
                found.append((name, v, priority))
                beyond_top = True
    return found, beyond_top


def event_identifiers(ev: dict[str, Any], rules: IdentityRules, salt: str,
                      dropped: Counter[str] | None = None) -> tuple[list[Ident], bool]:
    """``extract_identifiers`` and whether any identifier was read from outside ``TOP_LEVEL_FIELDS`` (then the
    event's body must travel for the event to be rebuilt with it); values refused are counted in ``dropped`` by
    type (the ingest's metric)."""
    found, beyond_top = _collect(ev, rules, dropped)
    if len(found) == 1:  # the common case: one identifier
        name, v, _ = found[0]
        return [(name, identifier_hash(salt, name, v), mask(name, v))], beyond_top
    keyed: dict[tuple[str, str], tuple[int, str, str, str]] = {}
    for name, v, priority in found:
        if (name, v) not in keyed:
            keyed[(name, v)] = (-priority, identifier_hash(salt, name, v), name, mask(name, v))
    return [(name, h, masked) for _, h, name, masked in sorted(keyed.values())], beyond_top


def extract_identifiers(ev: dict[str, Any], rules: IdentityRules, salt: str) -> list[Ident]:
    """Every identifier the event holds, as ``(type, hash, masked)``: normalised, placeholders and blocked values
    left out, one per (type, hash), sorted by (-priority, hash)."""
    return event_identifiers(ev, rules, salt)[0]


def raw_identifiers(ev: dict[str, Any], rules: IdentityRules, salt: str = "") -> list[tuple[str, str]]:
    """The same identifiers as ``(type, normalised value)``, in the order ``extract_identifiers`` gives them with
    the same salt (tests; the person stage's contacts)."""
    found, _ = _collect(ev, rules, None)
    keyed: dict[tuple[str, str], tuple[int, str]] = {}
    for name, v, priority in found:
        if (name, v) not in keyed:
            keyed[(name, v)] = (-priority, identifier_hash(salt, name, v))
    return [k for k, _ in sorted(keyed.items(), key=lambda kv: kv[1])]
