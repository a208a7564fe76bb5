"""Load and validate rule files. Errors name the file, the line and the field, so a marketer can fix them.

Every ``*.yaml`` in the rules directory is one document with a ``version`` and any of ``aliases``,
``blocked_identifiers``, ``triggers`` and ``identity``; a directory loads into one immutable ``RuleSet``. At most one
file defines ``identity`` (the OneID rules, docs/identity.md); without one, the package's ``identity.yaml`` applies.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from schemas.actions import Channel

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def parse_duration_ms(value: Any) -> int:
    """``90s``, ``10m``, ``1h``, ``7d``, ``2w``, or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration like '10m', '1h' or '7d' is expected")
    if isinstance(value, int | float):
        return int(value * 1000)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration like '10m', '1h' or '7d'")
    return int(float(m.group(1)) * _UNIT_MS[m.group(2)])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ActionSpec(_Strict):
    channel: Channel
    template: str = Field(min_length=1)
    to: str = Field(min_length=1, description="identifier type the sender needs, e.g. phone, email")
    params: dict[str, Any] = Field(default_factory=dict)
    expires_after_ms: int = Field(default=86_400_000, alias="expires_after")

    @field_validator("expires_after_ms", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> int:
        return parse_duration_ms(v)


class TriggerRule(_Strict):
    """Fire ``action`` when ``when`` happened and ``unless`` did not follow within ``wait``."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    version: int = Field(ge=1)
    description: str = ""
    when: str = Field(min_length=1)
    unless: str | None = None
    wait_ms: int = Field(alias="wait", ge=0)
    cooldown_ms: int = Field(default=0, alias="cooldown", ge=0)
    enabled: bool = True
    action: ActionSpec

    @field_validator("wait_ms", "cooldown_ms", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> int:
        return parse_duration_ms(v)


def _quoted_text(v: Any) -> Any:
    # YAML reads 13800000000 as a number and 0123 as octal 83: a blocked value must be written as text.
    if isinstance(v, int | float) and not isinstance(v, bool):
        raise ValueError(f"write the value in quotes ('{v}'): unquoted, YAML reads it as a number")
    return v


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
    return pattern


BlockedValue = Annotated[str, BeforeValidator(_quoted_text)]
BlockedPattern = Annotated[str, AfterValidator(_compiles)]
# A dotted path into the pipeline event dict: user_id, identities.phone, context.device.id.
EventPath = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")]
Normalize = Literal["trim", "lower", "phone", "email", "openid"]
_FROM_FILE = "rule_file"  # validation context key: the data is a rule file's
# "any" in blocked_identifiers means every type, so no type may be called that.
_RESERVED_TYPES = frozenset({"any"})


class IdentifierType(_Strict):
    """One identifier type: how strong it is, how many values a person holds, how it is read and cleaned."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    priority: int = Field(ge=1, le=1000)
    unique: bool = False
    # Declared after ``unique`` and before ``window``: each validator reads the fields validated before it.
    limit: int | None = Field(default=None, ge=1, validate_default=True)
    window_ms: int | None = Field(default=None, alias="window", gt=0)
    normalize: Normalize = "trim"
    read_from: tuple[EventPath, ...] = Field(min_length=1)
    blocked: frozenset[BlockedValue] = frozenset()
    blocked_patterns: tuple[BlockedPattern, ...] = ()
    contact: bool = False

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v in _RESERVED_TYPES:
            raise ValueError(f"{v!r} is reserved (it means every type in blocked_identifiers)")
        return v

    @field_validator("limit")
    @classmethod
    def _unique_is_limit_one(cls, v: int | None, info: ValidationInfo) -> int | None:
        if info.data.get("unique"):
            if v is not None and v > 1:
                raise ValueError(f"a unique type holds one value; limit {v} contradicts unique: true")
            return 1
        return v

    @field_validator("window_ms", mode="before")
    @classmethod
    def _dur(cls, v: Any, info: ValidationInfo) -> Any:
        # A rule file's number is seconds, as every duration there; in code, window_ms is milliseconds.
        from_file = bool(info.context and info.context.get(_FROM_FILE))
        return v if v is None or (not from_file and not isinstance(v, str)) else parse_duration_ms(v)

    @field_validator("window_ms")
    @classmethod
    def _window_needs_limit(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is None:
            return v
        if info.data.get("unique"):
            raise ValueError("a unique type holds one value ever; a window does not apply to it")
        # A limit that failed its own check is not in info.data: that error is reported already.
        if "limit" in info.data and info.data["limit"] is None:
            raise ValueError("a window counts identifiers against a limit: set limit too")
        return v

    @field_validator("blocked")
    @classmethod
    def _trimmed(cls, v: frozenset[str]) -> frozenset[str]:
        return frozenset(x.strip() for x in v)


class IdentitySection(_Strict):
    """The ``identity:`` section of a rule file, as written."""

    max_identifiers: int = Field(default=200, ge=1)
    max_merges: int = Field(default=100, ge=1)
    blocked: frozenset[BlockedValue] = frozenset()
    blocked_patterns: tuple[BlockedPattern, ...] = ()
    types: dict[str, IdentifierType] = Field(min_length=1)
    external_ids: dict[str, str] = Field(default_factory=dict)

    @field_validator("types", mode="before")
    @classmethod
    def _named_by_key(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        return {k: {**spec, "name": k} if isinstance(spec, dict) else spec for k, spec in v.items()}


@dataclass(frozen=True, eq=False)
class IdentityRules:
    """The OneID rules: identifier types (strongest first), Segment externalIds names, and the hard caps."""

    version: int
    types: dict[str, IdentifierType]
    external_ids: dict[str, str] = field(default_factory=dict)
    max_identifiers: int = 200
    max_merges: int = 100
    digest: str = ""
    # Blocked for every type, also for a type the rules do not declare (already merged into each declared type).
    blocked_any: frozenset[str] = frozenset()
    blocked_any_patterns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        ordered = dict(sorted(self.types.items(), key=lambda kv: (-kv[1].priority, kv[0])))
        object.__setattr__(self, "types", ordered)

    def priority(self, id_type: str) -> int:
        t = self.types.get(id_type)
        return t.priority if t is not None else 0

    @cached_property
    def _patterns(self) -> dict[str, tuple[re.Pattern[str], ...]]:
        out = {name: tuple(re.compile(p) for p in t.blocked_patterns) for name, t in self.types.items()}
        out[""] = tuple(re.compile(p) for p in self.blocked_any_patterns)
        return out

    def is_blocked(self, id_type: str, value: str) -> bool:
        """Whether a normalised value is blocked for its type: listed (for the type or every type) or matching a
        pattern whole. An openid is also checked without its app scope, so a listed openid is blocked in every app."""
        t = self.types.get(id_type)
        if t is None:
            values, patterns = self.blocked_any, self._patterns[""]
        else:
            values, patterns = t.blocked, self._patterns[id_type]
        candidates = [value]
        if t is not None and t.normalize == "openid" and ":" in value:
            candidates.append(value.split(":", 1)[1])
        for v in candidates:
            if t is not None and t.normalize in ("lower", "email"):
                v = v.lower()
            if v in values or any(p.fullmatch(v) for p in patterns):
                return True
        return False


class RuleFile(_Strict):
    version: int = Field(ge=1)
    aliases: dict[str, str] = Field(default_factory=dict)
    # Identifier values never to use (test numbers, shared devices), by identifier type or "any".
    blocked_identifiers: dict[str, list[str]] = Field(default_factory=dict)
    triggers: list[TriggerRule] = Field(default_factory=list)
    identity: IdentitySection | None = None


@dataclass(frozen=True)
class RuleError:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}"


class RuleLoadError(Exception):
    def __init__(self, errors: list[RuleError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def _package_identity() -> IdentityRules:
    return default_identity()


@dataclass(frozen=True, eq=False)
class RuleSet:
    aliases: dict[str, str] = field(default_factory=dict)
    triggers: tuple[TriggerRule, ...] = ()
    blocked_identifiers: dict[str, frozenset[str]] = field(default_factory=dict)
    identity: IdentityRules = field(default_factory=_package_identity)
    files: tuple[str, ...] = ()
    # Content hash of all files: tells which rule set produced an output.
    digest: str = ""

    @cached_property
    def active_triggers(self) -> tuple[TriggerRule, ...]:
        """The enabled triggers (computed once: the person stage asks for every person it touches)."""
        return tuple(t for t in self.triggers if t.enabled)

    @cached_property
    def contact_types(self) -> tuple[str, ...]:
        """The identifier types whose latest value a person keeps as a contact (``contact: true``)."""
        return tuple(name for name, t in self.identity.types.items() if t.contact)

    @cached_property
    def triggers_by_event(self) -> dict[str, tuple[TriggerRule, ...]]:
        """The enabled triggers an event name arms or cancels (its ``when`` or ``unless``), in rule order: one
        lookup per event in the person stage instead of a pass over every rule."""
        out: dict[str, list[TriggerRule]] = {}
        for t in self.active_triggers:
            for name in dict.fromkeys(n for n in (t.when, t.unless) if n):
                out.setdefault(name, []).append(t)
        return {name: tuple(ts) for name, ts in out.items()}


def _line_index(node: yaml.Node, path: tuple[Any, ...] = (), out: dict[tuple[Any, ...], int] | None = None):
    """Map each path (keys and list indexes) in a YAML document to its 1-based line."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[(*path, key)] = k.start_mark.line + 1
            _line_index(v, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_index(v, (*path, i), out)
    return out


def _line_for(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    # The deepest prefix of the error's location that exists in the file (a missing field points at its parent).
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _parse(raw: bytes) -> tuple[Any, yaml.Node | None]:
    """The document and its node tree from one parse: the node tree gives the lines errors point at."""
    loader = yaml.SafeLoader(raw.decode("utf-8"))
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    finally:
        loader.dispose()


def load_file(path: Path, raw: bytes) -> tuple[RuleFile | None, dict[tuple[Any, ...], int], list[RuleError]]:
    """One rule file from its bytes: the validated file (None if invalid), each path's line, and its errors."""
    try:
        data, node = _parse(raw)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        return None, {}, [RuleError(str(path), mark.line + 1 if mark else None, "$", f"not valid YAML: {exc}")]
    if not isinstance(data, dict):
        return None, {}, [RuleError(str(path), 1, "$", "a rule file must be a mapping with 'version'")]
    lines = _line_index(node) if node is not None else {}
    # YAML keeps the last of two equal keys silently: in the identity section that would drop a type unseen.
    errs = _duplicate_keys(str(path), node, ("identity",)) if node is not None else []
    try:
        rf = RuleFile.model_validate(data, context={_FROM_FILE: True})
    except ValidationError as exc:
        for e in exc.errors(include_url=False):
            loc = tuple(e["loc"])
            errs.append(RuleError(str(path), _line_for(lines, loc), ".".join(map(str, loc)) or "$", e["msg"]))
        return None, lines, errs
    if rf.identity is not None:
        errs.extend(_identity_errors(str(path), rf.identity, lines))
    return (None if errs else rf), lines, errs


def _duplicate_keys(file: str, root: yaml.Node, under: tuple[str, ...]) -> list[RuleError]:
    """Keys written twice in one mapping, anywhere below the path ``under`` of the document."""
    node: yaml.Node | None = root
    for key in under:
        if not isinstance(node, yaml.MappingNode):
            return []
        node = next((v for k, v in node.value if k.value == key), None)
    errs: list[RuleError] = []

    def walk(n: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(n, yaml.MappingNode):
            first: dict[str, int] = {}
            for k, v in n.value:
                where = ".".join((*path, str(k.value)))
                if k.value in first:
                    errs.append(RuleError(file, k.start_mark.line + 1, where,
                                          f"{k.value!r} is written twice (first at line {first[k.value]})"))
                else:
                    first[k.value] = k.start_mark.line + 1
                walk(v, (*path, str(k.value)))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, (*path, str(i)))

    if node is not None:
        walk(node, under)
    return errs


def _identity_errors(file: str, section: IdentitySection, lines: dict[tuple[Any, ...], int]) -> list[RuleError]:
    """What each type's own checks cannot see: names across types and the external_ids mapping."""
    errs = []
    loc: tuple[Any, ...]
    for seg_type, ours in section.external_ids.items():
        if ours not in section.types:
            loc = ("identity", "external_ids", seg_type)
            errs.append(RuleError(file, _line_for(lines, loc), ".".join(map(str, loc)),
                                  f"{ours!r} is not a declared identifier type ({', '.join(section.types)})"))
    reader: dict[str, str] = {}
    for name, t in section.types.items():
        for i, path in enumerate(t.read_from):
            if path in reader:
                loc = ("identity", "types", name, "read_from", i)
                errs.append(RuleError(file, _line_for(lines, loc), ".".join(map(str, loc)),
                                      f"{path!r} is read by {reader[path]!r} already: a value has one type"))
            reader.setdefault(path, name)
    return errs


def identity_rules(version: int, section: IdentitySection,
                   blocked_identifiers: dict[str, frozenset[str]] | None = None) -> IdentityRules:
    """The identity rules of a section, with the section's and ``blocked_identifiers``' values ("any": every
    type) merged into each type's blocked values and patterns."""
    extra = blocked_identifiers or {}
    any_values = frozenset(v.strip() for v in section.blocked | extra.get("any", frozenset()))
    types = {}
    for name, t in section.types.items():
        values = t.blocked | any_values | {v.strip() for v in extra.get(name, ())}
        if t.normalize in ("lower", "email"):
            values = frozenset(v.lower() for v in values)
        types[name] = t.model_copy(update={
            "blocked": frozenset(values),
            "blocked_patterns": tuple(dict.fromkeys((*t.blocked_patterns, *section.blocked_patterns)))})
    # Of the rules in effect (comments and key order aside): tells which identity rules decided a link.
    canon = {"version": version, "max_identifiers": section.max_identifiers, "max_merges": section.max_merges,
             "external_ids": section.external_ids, "blocked_any": sorted(any_values),
             "blocked_any_patterns": list(section.blocked_patterns),
             "types": {n: {**t.model_dump(mode="json"), "blocked": sorted(t.blocked)} for n, t in types.items()}}
    digest = hashlib.sha256(json.dumps(canon, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
    return IdentityRules(version=version, types=types, external_ids=dict(section.external_ids),
                         max_identifiers=section.max_identifiers, max_merges=section.max_merges, digest=digest,
                         blocked_any=any_values, blocked_any_patterns=section.blocked_patterns)


PACKAGE_IDENTITY_FILE = Path(__file__).resolve().parent / "identity.yaml"


def _load_identity_file(path: Path) -> tuple[RuleFile | None, list[RuleError]]:
    rf, _, errs = load_file(path, path.read_bytes())
    if rf is not None and rf.identity is None:
        errs = [RuleError(str(path), 1, "identity", "the default identity rules file has no identity section")]
    return (rf if not errs else None), errs


@cache
def default_identity() -> IdentityRules:
    """The package's default identity rules (rules/identity.yaml), without any deployment's blocked values."""
    rf, errs = _load_identity_file(PACKAGE_IDENTITY_FILE)
    if rf is None or rf.identity is None:
        raise RuleLoadError(errs)
    return identity_rules(rf.version, rf.identity)


def load_rules(directory: Path) -> RuleSet:
    """Load every ``*.yaml`` in ``directory``; raise ``RuleLoadError`` listing every problem found."""
    files = sorted(Path(directory).glob("*.yaml"))
    errors: list[RuleError] = []
    aliases: dict[str, str] = {}
    blocked: dict[str, set[str]] = {}
    triggers: list[TriggerRule] = []
    seen: dict[str, str] = {}
    identity: tuple[RuleFile, str] | None = None
    h = hashlib.sha256()
    if not files:
        raise RuleLoadError([RuleError(str(directory), None, "$", "no rule files (*.yaml) found")])
    for f in files:
        raw = f.read_bytes()  # read once: parsed, validated and hashed from the same bytes
        h.update(f.name.encode() + b"\0" + raw)
        rf, lines, errs = load_file(f, raw)
        errors.extend(errs)
        if rf is None:
            continue
        aliases.update(rf.aliases)
        if rf.identity is not None:
            if identity is not None:
                errors.append(RuleError(str(f), lines.get(("identity",)), "identity",
                                        f"identity rules are defined once (first in {identity[1]})"))
            else:
                identity = (rf, str(f))
        for id_type, values in rf.blocked_identifiers.items():
            blocked.setdefault(id_type, set()).update(values)
        for i, t in enumerate(rf.triggers):
            if t.id in seen:
                errors.append(RuleError(str(f), lines.get(("triggers", i, "id")), f"triggers.{i}.id",
                                        f"duplicate rule id {t.id!r} (first in {seen[t.id]})"))
            seen[t.id] = str(f)
            triggers.append(t)
    if identity is None:
        default, errs = _load_identity_file(PACKAGE_IDENTITY_FILE)
        errors.extend(errs)
        if default is not None:
            identity = (default, str(PACKAGE_IDENTITY_FILE))
    if errors or identity is None:
        raise RuleLoadError(errors)
    blocked_identifiers = {t: frozenset(v) for t, v in blocked.items()}
    assert identity[0].identity is not None  # only files with an identity section are kept above
    return RuleSet(aliases=aliases, triggers=tuple(triggers), files=tuple(str(f) for f in files),
                   digest=h.hexdigest()[:16], blocked_identifiers=blocked_identifiers,
                   identity=identity_rules(identity[0].version, identity[0].identity, blocked_identifiers))
