"""The HTTP collector's decisions (pure): Segment's tracking API bodies in, records to publish and a report out.

``POST /v1/track|identify|page|screen|alias|group`` carry one event; ``/v1/batch`` carries ``{"batch": [...]}``
with optional batch-level ``context`` and ``sentAt``. Limits follow Segment's: 32 KB per event, 500 KB per
request. A batch accepts its good events and reports the bad ones; nothing is published unless valid.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from core import exact_json
from schemas.events import Event, EventType, field_errors

MAX_EVENT_BYTES = 32 * 1024
MAX_REQUEST_BYTES = 500 * 1024
KINDS = {t.value for t in EventType} | {"batch"}


@dataclass
class CollectResult:
    status: int
    records: list[tuple[bytes | None, bytes]] = field(default_factory=list)  # (key, value) to publish
    rejected: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def response(self) -> dict[str, Any]:
        if self.error:
            return {"success": False, "error": self.error, "rejected": self.rejected}
        return {"success": True, "accepted": len(self.records), "rejected": self.rejected}


def write_key_of(authorization: str | None) -> str | None:
    """The write key from ``Authorization: Basic base64(writeKey:)``, as Segment's SDKs send it."""
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0]


def authorized(authorization: str | None, write_keys: list[str]) -> bool:
    """Constant-time check of the write key against every configured key; no keys configured: open."""
    if not write_keys:
        return True
    key = write_key_of(authorization)
    if key is None:
        return False
    ok = False
    for k in write_keys:
        ok |= hmac.compare_digest(key.encode(), k.encode())
    return ok


def record_key(ev: Any) -> bytes | None:
    """The Kafka key an event is published under (userId, else anonymousId): the one choice for the collector and
    ``cdp send``. Any key works downstream; this one keeps a person's events in order on the raw topic."""
    if not isinstance(ev, dict):
        return None
    k = ev.get("userId") or ev.get("user_id") or ev.get("anonymousId") or ev.get("anonymous_id")
    return str(k).encode() if k is not None else None


def collect(kind: str, raw: bytes, received_at: str | None = None) -> CollectResult:
    """``raw`` is the request body as sent, after any Content-Encoding (gzip) was undone by the HTTP layer."""
    if kind not in KINDS:
        return CollectResult(404, error=f"unknown endpoint /v1/{kind}")
    if len(raw) > MAX_REQUEST_BYTES:
        return CollectResult(413, error=f"request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        doc = exact_json.loads(raw)  # integers past 64 bits kept whole, as the raw topic's path keeps them
    except orjson.JSONDecodeError as exc:
        return CollectResult(400, error=f"body is not JSON: {exc}")
    if not isinstance(doc, dict):
        return CollectResult(400, error="body must be a JSON object")
    if kind == "batch":
        items = doc.get("batch")
        if not isinstance(items, list):
            return CollectResult(400, error="a batch body needs a 'batch' list")
        shared_context = doc.get("context") if isinstance(doc.get("context"), dict) else {}
        shared_sent_at = doc.get("sentAt")
    else:
        if len(raw) > MAX_EVENT_BYTES:
            return CollectResult(413, error=f"event larger than {MAX_EVENT_BYTES} bytes")
        items, shared_context, shared_sent_at = [{**doc, "type": doc.get("type") or kind}], {}, None
    res = CollectResult(200)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            res.rejected.append({"index": i, "errors": [{"field": "$", "error": "an event must be an object"}]})
            continue
        ctx = item.get("context")
        if shared_context and (not ctx or isinstance(ctx, dict)):
            # An event's own context that is not an object is left for validation to report, not merged.
            item = {**item, "context": {**shared_context, **(ctx or {})}}
        if shared_sent_at and not item.get("sentAt"):
            item = {**item, "sentAt": shared_sent_at}
        if received_at and not item.get("receivedAt"):
            # Stamped at receipt, as Segment does: clock-skew correction stays right however late it is replayed.
            item = {**item, "receivedAt": received_at}
        mid = item.get("messageId") or item.get("message_id")
        try:
            value = exact_json.dumps(item)
        except TypeError as exc:  # nested deeper than 255 levels: no step after this could carry it either
            res.rejected.append({"index": i, "messageId": mid, "errors": [{"field": "$", "error": str(exc)}]})
            continue
        if len(value) > MAX_EVENT_BYTES:
            res.rejected.append({"index": i, "messageId": mid,
                                 "errors": [{"field": "$", "error": f"event larger than {MAX_EVENT_BYTES} bytes"}]})
            continue
        try:
            Event.model_validate(item)
        except ValidationError as exc:
            res.rejected.append({"index": i, "messageId": mid, "errors": field_errors(exc)})
            continue
        res.records.append((record_key(item), value))
    if not res.records and res.rejected:
        res.status = 400
        res.error = "no valid event in the request"
    return res
