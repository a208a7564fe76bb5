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
from core.normalize import PLACEHOLDERS, app_id_of, normalize_email, normalize_phone, rules_index
from rules.loader import IdentityRules

Ident = tuple[str, str, str]  # (type, hash, masked)

# The event fields whose raw values an envelope can carry beside its row: an event whose identifiers are all read
# from these alone needs no body to be rebuilt (core.envelope).
TOP_LEVEL_FIELDS = ("user_id", "anonymous_id")
EXTERNAL_IDS_PATH = ("context", "externalIds")


# A trie of the rules' paths: key -> (the (type, normalisation, priority) read at that key, the keys below it).
_Node = dict[str, tuple[list[tuple[str, str, int]], "dict[str, Any]"]]


class _Plan:
    """The rules' paths as a trie, so an event is looked at once per key it has on the way to any path (most
    events have no ``identities`` and a ``context`` without ``traits`` or ``device``: one lookup each)."""

    __slots__ = ("external", "is_blocked", "root", "rules")

    def __init__(self, rules: IdentityRules):
        self.rules = rules
        self.is_blocked = rules_index(rules).is_blocked
        root: _Node = {}
        for name, t in rules.types.items():
            for path in t.read_from:
                node = root
                *parents, last = path.split(".")
                for part in parents:
                    node = node.setdefault(part, ([], {}))[1]
                node.setdefault(last, ([], {}))[0].append((name, t.normalize, t.priority))
        self.root = root
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


class _Collected:
    """What one event's walk found: (type, normalised value, priority), possibly repeated, and whether any was read
    from outside ``TOP_LEVEL_FIELDS``."""

    __slots__ = ("beyond_top", "dropped", "found", "is_blocked", "norm")

    def __init__(self, ev: dict[str, Any], plan: _Plan, dropped: Counter[str] | None):
        self.found: list[tuple[str, str, int]] = []
        self.beyond_top = False
        self.dropped = dropped
        self.is_blocked = plan.is_blocked
        self.norm = _Normaliser(ev)

    def take(self, value: Any, name: str, kind: str, priority: int, beyond_top: bool) -> None:
        raw = _text(value)
        v = self.norm(kind, raw) if raw is not None else None
        if v is None or self.is_blocked(name, v):
            if self.dropped is not None:
                self.dropped[name] += 1
            return
        self.found.append((name, v, priority))
        if beyond_top:
            self.beyond_top = True

    def walk(self, node: _Node, obj: dict[str, Any], nested: bool) -> None:
        # Whichever is smaller: an event's identities hold one or two of the seven keys the rules read there.
        if len(obj) < len(node):
            pairs = [(k, node[k], v) for k, v in obj.items() if k in node]
        else:
            pairs = [(k, n, obj[k]) for k, n in node.items() if k in obj]
        for key, (leaves, below), value in pairs:
            if value is None:
                continue
            for name, kind, priority in leaves:
                self.take(value, name, kind, priority, nested or key not in TOP_LEVEL_FIELDS)
            if below and isinstance(value, dict):
                self.walk(below, value, True)


def _collect(ev: dict[str, Any], rules: IdentityRules,
             dropped: Counter[str] | None) -> tuple[list[tuple[str, str, int]], bool]:
    """Every (type, normalised value, priority) the event holds, in no particular order and possibly repeated, and
    whether any was read from outside ``TOP_LEVEL_FIELDS``."""
    plan = _plan(rules)
    got = _Collected(ev, plan, dropped)
    got.walk(plan.root, ev, False)
    if plan.external:
        ctx = ev.get("context")
        ext = ctx.get("externalIds") if isinstance(ctx, dict) else None
        if isinstance(ext, list):
            for item in ext:
                if not isinstance(item, dict):
                    continue
                mapped = plan.external.get(item.get("type"))  # type: ignore[arg-type]
                if mapped is not None:
                    got.take(item.get("id"), mapped[0], mapped[1], mapped[2], True)
    return got.found, got.beyond_top


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
