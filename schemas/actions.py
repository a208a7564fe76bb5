"""Action JSON (what senders consume from ``cdp.actions.<channel>``) and delivery feedback."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class Channel(StrEnum):
    sms = "sms"
    email = "email"
    push = "push"
    wechat = "wechat"
    crm = "crm"
    webhook = "webhook"


class Action(BaseModel):
    """One thing a sender must do for one person. ``action_id`` is the idempotency key end to end."""

    model_config = ConfigDict(extra="forbid")

    action_id: str = Field(description="deterministic: same rule, person and window give the same id")
    rule_id: str
    rule_version: int
    oneid: str
    channel: Channel
    template: str
    params: dict[str, Any] = Field(default_factory=dict)
    to: dict[str, str] = Field(default_factory=dict, description="contact identifiers the sender needs, by type")
    reason: dict[str, Any] = Field(default_factory=dict, description="the rule, events and values that fired it")
    # Times with their zone (the core writes UTC, ``...Z``): a sender compares them with its own clock.
    created_at: AwareDatetime
    not_before: AwareDatetime
    expires_at: AwareDatetime


class FeedbackStatus(StrEnum):
    delivered = "delivered"
    failed = "failed"
    opened = "opened"
    clicked = "clicked"
    bounced = "bounced"
    unsubscribed = "unsubscribed"


class Feedback(BaseModel):
    action_id: str
    status: FeedbackStatus
    at: datetime
    detail: dict[str, Any] | str | None = None
