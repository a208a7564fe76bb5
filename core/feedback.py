"""Delivery feedback from senders (pure): messages in, ClickHouse rows or bad rows out."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from pydantic import ValidationError

from schemas.actions import Feedback
from schemas.bad_rows import BadRow, Stage
from schemas.events import field_errors


def feedback_row(value: bytes, received_ms: int) -> bytes | BadRow:
    """A JSONEachRow line for ``cdp.action_feedback``, or the bad row to keep when the message is not feedback."""
    received = datetime.fromtimestamp(received_ms / 1000, UTC)
    try:
        fb = Feedback.model_validate_json(value)
    except ValidationError as exc:
        return BadRow.of(value, Stage.validate, "feedback_schema", field_errors(exc), received.isoformat())
    try:
        detail = fb.detail if isinstance(fb.detail, str) else orjson.dumps(fb.detail).decode() if fb.detail else ""
        return orjson.dumps({"action_id": fb.action_id, "status": fb.status.value, "at": fb.at.timestamp(),
                             "detail": detail, "received_at": received_ms / 1000})
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. an integer past 64 bits in ``detail``
        return BadRow.of(value, Stage.process, "unprocessable", [{"field": "$", "error": repr(exc)}],
                         received.isoformat())
