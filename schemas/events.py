"""The event JSON of the public contract: a superset of Segment's tracking spec.

One pydantic model validates every call type. Segment's camelCase names and snake_case spellings are both
accepted (``messageId`` / ``message_id``); the model dumps the snake_case form the pipeline uses internally.
Validation is strict where a wrong value would corrupt a person (ids, types, timestamps) and lenient where apps
differ harmlessly (extra top-level keys are kept in ``extra`` rather than rejected).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, NotRequired, cast

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

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


def event_json_schema() -> dict[str, Any]:
    return Event.model_json_schema(by_alias=True)


def now_utc() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------------------------
# The same schema as a TypedDict, for the ingest: pydantic-core validates straight into a dict, with no model
# instance, no Python field validators and no second pass to build the pipeline's dict (6.0 -> 3.7 µs per event;
# docs/performance.md). ``Event`` stays the schema of record: whatever this path accepts, ``Event`` accepts with
# the same result, and whatever it declines goes through ``Event``, which also writes every error message
# (tests/schemas/test_event_dict.py).

_TEXT = ConfigDict(extra="ignore", str_strip_whitespace=True, coerce_numbers_to_str=True)
# Times as Segment's SDKs write them (RFC 3339), checked by pydantic-core and parsed by ``datetime.fromisoformat``:
# both read this form alike, and the standard library's tzinfo keeps the ingest's three ``timestamp()`` calls per
# event cheap (pydantic-core's own tzinfo made each three times dearer; docs/performance.md). Any other form
# (numbers, a space, more digits, an impossible date) is left to ``Event``.
_RFC3339 = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)?$"
_Rfc3339 = Annotated[str, StringConstraints(strip_whitespace=False, pattern=_RFC3339)]


@with_config(_TEXT)
class _EventDict(TypedDict):
    type: Literal["track", "identify", "page", "screen", "alias", "group"]
    message_id: Annotated[str, Field(validation_alias=_alias("messageId", "message_id"), min_length=1,
                                     max_length=MAX_MESSAGE_ID_LEN)]
    event: NotRequired[Annotated[str | None, Field(max_length=200)]]
    name: NotRequired[Annotated[str | None, Field(max_length=500)]]
    user_id: NotRequired[Annotated[str | None, Field(validation_alias=_alias("userId", "user_id"),
                                                     max_length=MAX_ID_LEN)]]
    anonymous_id: NotRequired[Annotated[str | None, Field(validation_alias=_alias("anonymousId", "anonymous_id"),
                                                          max_length=MAX_ID_LEN)]]
    previous_id: NotRequired[Annotated[str | None, Field(validation_alias=_alias("previousId", "previous_id"),
                                                         max_length=MAX_ID_LEN)]]
    group_id: NotRequired[Annotated[str | None, Field(validation_alias=_alias("groupId", "group_id"),
                                                      max_length=MAX_ID_LEN)]]
    identities: NotRequired[dict[str, str | None]]
    traits: NotRequired[dict[str, Any]]
    properties: NotRequired[dict[str, Any]]
    context: NotRequired[dict[str, Any]]
    # Times as text in the one form apps send (see _RFC3339), parsed below.
    timestamp: NotRequired[_Rfc3339 | None]
    sent_at: NotRequired[Annotated[_Rfc3339 | None, Field(validation_alias=_alias("sentAt", "sent_at"))]]
    received_at: NotRequired[Annotated[_Rfc3339 | None, Field(validation_alias=_alias("receivedAt",
                                                                                      "received_at"))]]


_EVENT_DICT = TypeAdapter(_EventDict)
_TIMES = ("timestamp", "sent_at", "received_at")


def event_dict_from_json(raw: bytes) -> dict[str, Any]:
    """``pipeline_dict(Event.model_validate_json(raw))``, faster; raises ``ValidationError`` exactly when that
    does, with ``Event``'s own errors."""
    try:
        d = cast(dict[str, Any], _EVENT_DICT.validate_json(raw))
        for k in _TIMES:
            v = d.get(k)
            if v is not None:
                t = datetime.fromisoformat(v)
                d[k] = t if t.tzinfo is not None else t.replace(tzinfo=UTC)  # naive is UTC, as in Event
    except (ValidationError, ValueError):
        # Declined here (an invalid event, or one this path does not read: a time as a number, ...): the schema
        # of record decides, with its own errors.
        return pipeline_dict(Event.model_validate_json(raw))
    ids = d.get("identities")
    if ids and not all(ids.values()):
        d["identities"] = {k: v for k, v in ids.items() if v}
    # Every field that can be empty is optional (type and message_id cannot be): drop the empty ones.
    for k in [k for k, v in d.items() if not v]:
        del d[k]
    t = d["type"]
    if (t == "track" and "event" not in d) or (t == "alias" and "previous_id" not in d) or not (
            "user_id" in d or "anonymous_id" in d or "identities" in d):
        Event.model_validate_json(raw)  # raises the model's per-type error
    return d
