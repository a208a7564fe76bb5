"""Load and validate rule files. Errors name the file, the line and the field, so a marketer can fix them.

Every ``*.yaml`` in the rules directory is one document with a ``version`` and any of ``aliases`` and
``triggers``; a directory loads into one immutable ``RuleSet``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


class RuleFile(_Strict):
    version: int = Field(ge=1)
    aliases: dict[str, str] = Field(default_factory=dict)
    # Identifier values never to use (test numbers, shared devices), by identifier type or "any".
    blocked_identifiers: dict[str, list[str]] = Field(default_factory=dict)
    triggers: list[TriggerRule] = Field(default_factory=list)


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


@dataclass(frozen=True, eq=False)
class RuleSet:
    aliases: dict[str, str] = field(default_factory=dict)
    triggers: tuple[TriggerRule, ...] = ()
    blocked_identifiers: dict[str, frozenset[str]] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    # Content hash of all files: tells which rule set produced an output.
    digest: str = ""

    @cached_property
    def active_triggers(self) -> tuple[TriggerRule, ...]:
        """The enabled triggers (computed once: the person stage asks for every person it touches)."""
        return tuple(t for t in self.triggers if t.enabled)

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
    try:
        return RuleFile.model_validate(data), lines, []
    except ValidationError as exc:
        errs = []
        for e in exc.errors(include_url=False):
            loc = tuple(e["loc"])
            errs.append(RuleError(str(path), _line_for(lines, loc), ".".join(map(str, loc)) or "$", e["msg"]))
        return None, lines, errs


def load_rules(directory: Path) -> RuleSet:
    """Load every ``*.yaml`` in ``directory``; raise ``RuleLoadError`` listing every problem found."""
    files = sorted(Path(directory).glob("*.yaml"))
    errors: list[RuleError] = []
    aliases: dict[str, str] = {}
    blocked: dict[str, set[str]] = {}
    triggers: list[TriggerRule] = []
    seen: dict[str, str] = {}
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
        for id_type, values in rf.blocked_identifiers.items():
            blocked.setdefault(id_type, set()).update(values)
        for i, t in enumerate(rf.triggers):
            if t.id in seen:
                errors.append(RuleError(str(f), lines.get(("triggers", i, "id")), f"triggers.{i}.id",
                                        f"duplicate rule id {t.id!r} (first in {seen[t.id]})"))
            seen[t.id] = str(f)
            triggers.append(t)
    if errors:
        raise RuleLoadError(errors)
    return RuleSet(aliases=aliases, triggers=tuple(triggers), files=tuple(str(f) for f in files),
                   digest=h.hexdigest()[:16],
                   blocked_identifiers={t: frozenset(v) for t, v in blocked.items()})
