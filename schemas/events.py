"""The event JSON of the public contract: a superset of Segment's tracking spec.

One pydantic model validates every call type. Segment's camelCase names and snake_case spellings are both
accepted (``messageId`` / ``message_id``); the model dumps the snake_case form the pipeline uses internally.
Validation is strict where a wrong value would corrupt a person (ids, types, timestamps) and lenient where apps
differ harmlessly (extra top-level keys are kept in ``extra`` rather than rejected).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

MAX_MESSAGE_ID_LEN = 100
MAX_ID_LEN = 256


class EventType(StrEnum):
    track = "track"
    identify = "identify"
    page = "page"
    screen = "screen"
    alias = "alias"
    group = "group"


def _alias(camel: str, snake: str) -> AliasChoices:
    return AliasChoices(camel, snake)


class Event(BaseModel):
    """One behaviour event, as an app sends it."""

    # Numbers are accepted where ids are text (SDKs send numeric user ids; 42 and "42" are one person), booleans
    # are not. Validation stays in pydantic-core (Rust) wherever it can: this model runs once per raw event.
    model_config = ConfigDict(populate_by_name=True, extra="ignore", str_strip_whitespace=True,
                              coerce_numbers_to_str=True)

    type: EventType
    message_id: str = Field(
        validation_alias=_alias("messageId", "message_id"), min_length=1, max_length=MAX_MESSAGE_ID_LEN
    )
    event: str | None = Field(default=None, max_length=200)
    name: str | None = Field(default=None, max_length=500)
    user_id: str | None = Field(default=None, validation_alias=_alias("userId", "user_id"), max_length=MAX_ID_LEN)
    anonymous_id: str | None = Field(
        default=None, validation_alias=_alias("anonymousId", "anonymous_id"), max_length=MAX_ID_LEN
    )
    previous_id: str | None = Field(
        default=None, validation_alias=_alias("previousId", "previous_id"), max_length=MAX_ID_LEN
    )
    group_id: str | None = Field(default=None, validation_alias=_alias("groupId", "group_id"), max_length=MAX_ID_LEN)
    # A null identity value means "not known" and is ignored.
    identities: dict[str, str | None] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)
    properties: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    timestamp: datetime | None = None
    sent_at: datetime | None = Field(default=None, validation_alias=_alias("sentAt", "sent_at"))
    # When a collector first received it (Segment's field; our collector sets it). Replays and imports of
    # archived events keep it, so clock-skew correction uses the original receipt, not the replay's.
    received_at: datetime | None = Field(default=None, validation_alias=_alias("receivedAt", "received_at"))

    @field_validator("timestamp", "sent_at", "received_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        # Naive timestamps are taken as UTC, as Segment does.
        if v is not None and v.tzinfo is None:
            return v.replace(tzinfo=UTC)
        return v

    @model_validator(mode="after")
    def _per_type(self) -> Event:
        if self.type is EventType.track and not self.event:
            raise ValueError("a track call needs 'event' (the event name)")
        if self.type is EventType.alias and not self.previous_id:
            raise ValueError("an alias call needs 'previousId'")
        if not (self.user_id or self.anonymous_id or any(self.identities.values())):
            raise ValueError("an event needs 'userId', 'anonymousId' or at least one of 'identities'")
        return self


_OPTIONAL_TEXT = ("event", "name", "user_id", "anonymous_id", "previous_id", "group_id")


def pipeline_dict(ev: Event) -> dict[str, Any]:
    """The event as the pipeline carries it: snake_case, empty fields and null identities left out.

    Cheaper than ``model_dump`` (it runs once per event) and orjson encodes the datetimes itself."""
    d: dict[str, Any] = {"type": ev.type.value, "message_id": ev.message_id}
    for f in _OPTIONAL_TEXT:
        v = getattr(ev, f)
        if v:
            d[f] = v
    ids = {k: v for k, v in ev.identities.items() if v}
    if ids:
        d["identities"] = ids
    if ev.traits:
        d["traits"] = ev.traits
    if ev.properties:
        d["properties"] = ev.properties
    if ev.context:
        d["context"] = ev.context
    if ev.timestamp is not None:
        d["timestamp"] = ev.timestamp
    if ev.sent_at is not None:
        d["sent_at"] = ev.sent_at
    if ev.received_at is not None:
        d["received_at"] = ev.received_at
    return d


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic's errors as the bad row's ``errors`` list: one entry per field, in the app's own field names."""
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ())) or "$"
        out.append({"field": loc, "error": err.get("msg", ""), "type": err.get("type", "")})
    return out


# ---------------------------------------------------------------------------------------------------------------
# The ingest's decoder: the form apps and SDKs send (camelCase names, text ids without padding, RFC 3339 times) is
# decoded and checked by msgspec in one pass in C, straight from the bytes (4.5 -> 2 µs per event with the pipeline
# dict built; docs/performance.md). ``Event`` stays the schema of record: whatever this path accepts, ``Event``
# accepts with the same result; anything else (snake_case spellings, numbers as ids, padded text, more than six
# digits of a second, an invalid event) goes through ``Event``, which also writes every error message
# (tests/schemas/test_event_dict.py).

_Id = Annotated[str, msgspec.Meta(max_length=MAX_ID_LEN)]
_UNSET: Any = msgspec.UNSET


class _WireEvent(msgspec.Struct, gc=False):  # holds no cycles; not tracked by the garbage collector
    type: Literal["track", "identify", "page", "screen", "alias", "group"]
    messageId: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MESSAGE_ID_LEN)]
    event: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    name: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    userId: _Id | None = None
    anonymousId: _Id | None = None
    previousId: _Id | None = None
    groupId: _Id | None = None
    identities: dict[str, str | None] = {}
    traits: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    context: dict[str, Any] = {}
    timestamp: datetime | None = None
    sentAt: datetime | None = None
    receivedAt: datetime | None = None
    # The snake_case spellings ``Event`` also reads: when one is present, ``Event`` decides (which spelling wins).
    message_id: Any = msgspec.field(default=_UNSET)
    user_id: Any = msgspec.field(default=_UNSET)
    anonymous_id: Any = msgspec.field(default=_UNSET)
    previous_id: Any = msgspec.field(default=_UNSET)
    group_id: Any = msgspec.field(default=_UNSET)
    sent_at: Any = msgspec.field(default=_UNSET)
    received_at: Any = msgspec.field(default=_UNSET)


_WIRE = msgspec.json.Decoder(_WireEvent)
# More than six digits after a point: in a time's seconds, msgspec rounds them to the microsecond and pydantic
# truncates them. Found by a plain search; the match is then checked to follow ``d:dd`` (a time, not a number
# such as a coordinate, whose events must not leave this path).
_LONG_FRACTION = re.compile(rb"\.\d{7}")
_DIGITS = b"0123456789"
_ESCAPED_ASCII = re.compile(rb"\\u00[23]")
# pydantic's JSON parser refuses nesting deeper than about 200 levels (an invalid event for ``Event``; orjson
# would not re-encode it past 255 either); msgspec has no such limit. Nesting that deep takes as many opening
# brackets, so an event with fewer is decoded here, and any other is left to ``Event``.
_MAX_OPENINGS = 190


def _long_time_fraction(raw: bytes) -> bool:
    if raw.find(b"\\") >= 0 and _ESCAPED_ASCII.search(raw) is not None:
        return True  # digits or punctuation written as escapes: not what the search below sees; let Event decide
    m = _LONG_FRACTION.search(raw)
    while m is not None:
        i = m.start()
        if i >= 4 and raw[i - 3] == 58 and raw[i - 4] in _DIGITS and raw[i - 2] in _DIGITS and raw[i - 1] in _DIGITS:
            return True
        m = _LONG_FRACTION.search(raw, i + 1)
    return False


def _unpadded_keys(d: dict[str, Any]) -> bool:
    # ``str.strip`` returns the string itself when there is nothing to strip. Python's whitespace includes all of
    # pydantic-core's, so text unpadded here is text ``Event`` would not change either. A loop, not ``all()`` over
    # a generator: that costs more than the check, twice per event.
    for k in d:  # noqa: SIM110
        if k.strip() is not k:
            return False
    return True


def _wire_dict(raw: bytes) -> dict[str, Any] | None:
    """The pipeline dict of an event in the wire form, or None when ``Event`` must decide.

    Written out field by field: it runs once per raw event, and loops over the field names (``_OPTIONAL_TEXT`` as
    ``pipeline_dict`` uses it) measured 0.35-0.45 µs/event more of ``ingest_records``' 7.3."""
    if len(raw) > 2 * _MAX_OPENINGS and raw.count(b"{") + raw.count(b"[") > _MAX_OPENINGS:
        return None  # possibly nested deeper than Event's JSON parser allows
    try:
        w = _WIRE.decode(raw)
    except msgspec.MsgspecError:
        return None
    # A snake_case spelling present: Event decides which spelling wins.
    if not (w.message_id is w.user_id is w.anonymous_id is w.previous_id is w.group_id is w.sent_at
            is w.received_at is _UNSET):
        return None
    kind = w.type  # a Literal: never padded
    mid = w.messageId
    if mid.strip() is not mid:
        return None
    d: dict[str, Any] = {"type": kind, "message_id": mid}
    # Padded text: ``Event`` strips it. Checked field by field as each is set: with ``gc=False`` on the struct,
    # 2.73 -> 2.59 µs per event against a loop over the dict's values afterwards (bench events).
    v = w.event
    if v:
        if v.strip() is not v:
            return None
        d["event"] = v
    v = w.name
    if v:
        if v.strip() is not v:
            return None
        d["name"] = v
    v = w.userId
    if v:
        if v.strip() is not v:
            return None
        d["user_id"] = v
    v = w.anonymousId
    if v:
        if v.strip() is not v:
            return None
        d["anonymous_id"] = v
    v = w.previousId
    if v:
        if v.strip() is not v:
            return None
        d["previous_id"] = v
    v = w.groupId
    if v:
        if v.strip() is not v:
            return None
        d["group_id"] = v
    if (kind == "track" and "event" not in d) or (kind == "alias" and "previous_id" not in d):
        return None  # Event raises its per-type error
    ids = w.identities
    if ids:
        for v in ids.values():
            if v and v.strip() is not v:
                return None
        if not _unpadded_keys(ids):
            return None
        ids = {k: v for k, v in ids.items() if v}
        if ids:
            d["identities"] = ids
    if not ("user_id" in d or "anonymous_id" in d or "identities" in d):
        return None
    m = w.traits
    if m:
        if not _unpadded_keys(m):
            return None
        d["traits"] = m
    m = w.properties
    if m:
        if not _unpadded_keys(m):
            return None
        d["properties"] = m
    m = w.context
    if m:
        if not _unpadded_keys(m):
            return None
        d["context"] = m
    # Naive times are UTC, as in Event.
    t = w.timestamp
    if t is not None:
        d["timestamp"] = t if t.tzinfo is not None else t.replace(tzinfo=UTC)
    t = w.sentAt
    if t is not None:
        d["sent_at"] = t if t.tzinfo is not None else t.replace(tzinfo=UTC)
    t = w.receivedAt
    if t is not None:
        d["received_at"] = t if t.tzinfo is not None else t.replace(tzinfo=UTC)
    if (t is not None or "timestamp" in d or "sent_at" in d) and _long_time_fraction(raw):
        return None
    return d


def event_dict_from_json(raw: bytes) -> dict[str, Any]:
    """``pipeline_dict(Event.model_validate_json(raw))``, faster; raises ``ValidationError`` exactly when that
    does, with ``Event``'s own errors."""
    d = _wire_dict(raw)
    return d if d is not None else pipeline_dict(Event.model_validate_json(raw))
