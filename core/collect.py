"""The HTTP collector's decisions (pure): Segment's tracking API bodies in, records to publish and a report out.

``POST /v1/track|identify|page|screen|alias|group`` carry one event; ``/v1/batch`` carries ``{"batch": [...]}``
with optional batch-level ``context`` and ``sentAt``. Segment's one-letter paths (``/v1/t|i|p|s|a|g|b``, what its
browser SDK analytics-next posts to) are the same endpoints. The write key comes as basic auth or as ``writeKey``
in the body, as Segment's API takes it; it is removed before an event is published. Limits follow Segment's: 32 KB
per event, 500 KB per request. A batch accepts its good events and reports the bad ones; nothing is published
unless valid.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from core import exact_json
from schemas.events import Event, EventType, field_errors

MAX_EVENT_BYTES = 32 * 1024
MAX_REQUEST_BYTES = 500 * 1024
# The one table of paths, for the worker's web server and `cdp collector` alike: the long names and the one-letter
# ones Segment's browser SDK posts to.
PATHS: dict[str, str] = {
    **{t.value: t.value for t in EventType}, "batch": "batch",
    "t": "track", "i": "identify", "p": "page", "s": "screen", "a": "alias", "g": "group", "b": "batch",
}
KINDS = set(PATHS.values())
# What Segment's SDKs send beyond the CORS-safelisted headers: a preflight asking for these (or any other well-formed
# names, which are echoed) is answered yes, or the browser drops the request and the SDK retries it in silence.
CORS_HEADERS = ("Authorization", "Content-Type", "Content-Encoding", "X-Retry-Count")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


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


def kind_of(path: str) -> str | None:
    """The endpoint ``/v1/<path>`` serves (``track``, ..., ``batch``), or None for a path that is not one."""
    return PATHS.get(path)


def cors_headers(origin: str | None, requested_headers: str | None = None) -> dict[str, str]:
    """The CORS headers of every answer, preflight or not: the caller's origin echoed (the write key, not the
    origin, is what admits a request), and the headers a preflight asked for echoed beside Segment's own."""
    allowed = list(CORS_HEADERS)
    seen = {h.lower() for h in allowed}
    for name in (requested_headers or "").split(","):
        name = name.strip()
        if name and _TOKEN.match(name) and name.lower() not in seen:  # a malformed name is left out, not echoed
            seen.add(name.lower())
            allowed.append(name)
    return {
        "Access-Control-Allow-Origin": origin or "*",
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": ", ".join(allowed),
        "Access-Control-Max-Age": "86400",
        # Caches must not hand one origin's answer, or one preflight's allowed headers, to another.
        "Vary": "Origin, Access-Control-Request-Headers",
    }


def write_key_of(authorization: str | None) -> str | None:
    """The write key from ``Authorization: Basic base64(writeKey:)``, as Segment's SDKs send it."""
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0]


def body_write_key(doc: Any) -> str | None:
    """The write key a body carries as ``writeKey`` (analytics-next puts it in every event and atop a batch; its
    requests sent as ``text/plain`` or by ``sendBeacon`` carry no Authorization header)."""
    if not isinstance(doc, dict):
        return None
    key = doc.get("writeKey")
    if key is None and isinstance(doc.get("batch"), list) and doc["batch"] and isinstance(doc["batch"][0], dict):
        key = doc["batch"][0].get("writeKey")
    return key if isinstance(key, str) and key else None


def authorized(authorization: str | None, write_keys: Sequence[str], body_key: str | None = None) -> bool:
    """Constant-time check of the write key (basic auth, else the body's) against every configured key; no keys
    configured: open."""
    if not write_keys:
        return True
    key = write_key_of(authorization) or body_key
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


UNAUTHORIZED = "missing or unknown write key"


def collect(path: str, raw: bytes, received_at: str | None = None, authorization: str | None = None,
            write_keys: Sequence[str] = ()) -> CollectResult:
    """The answer to ``POST /v1/<path>``. ``raw`` is the request body as sent (any content type: Segment's browser
    SDK posts JSON as ``text/plain``), after any Content-Encoding (gzip) was undone by the HTTP layer."""
    kind = kind_of(path)
    if kind is None:
        return CollectResult(404, error=f"unknown endpoint /v1/{path}")
    header_key = write_key_of(authorization)
    if header_key is not None and not authorized(authorization, write_keys):
        return CollectResult(401, error=UNAUTHORIZED)  # refused before the body is read
    if len(raw) > MAX_REQUEST_BYTES:
        return CollectResult(413, error=f"request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        doc = exact_json.loads(raw)  # integers past 64 bits kept whole, as the raw topic's path keeps them
    except orjson.JSONDecodeError as exc:
        if header_key is None and write_keys:
            return CollectResult(401, error=UNAUTHORIZED)  # no key to be found: the body's errors are not told
        return CollectResult(400, error=f"body is not JSON: {exc}")
    if header_key is None and not authorized(None, write_keys, body_write_key(doc)):
        return CollectResult(401, error=UNAUTHORIZED)
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
        if "writeKey" in item:  # a secret: never published
            item = {k: v for k, v in item.items() if k != "writeKey"}
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
