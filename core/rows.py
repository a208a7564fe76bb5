"""ClickHouse rows for events and actions. PII is masked here, before it leaves the process.

Event rows are JSON arrays in ``EVENT_ROW_COLUMNS`` order (ClickHouse's JSONCompactEachRow): ClickHouse parses them
for about 1 µs of CPU per row less than the same row as an object with named fields (JSONEachRow), and they are a
third smaller to carry in envelopes (docs/performance.md). Action rows stay objects (few of them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from core.ids import mask

if TYPE_CHECKING:  # core.envelope imports this module to build rows
    from core.envelope import Entry

_EMPTY: dict[str, Any] = {}

# The events table's columns in the order of an event row; the ingest writes all but the first (``event_row_body``).
# ``id_hash`` is the event's primary identifier's hash (the one that chose its person): a split reassigns the
# event by it (docs/identity.md).
EVENT_ROW_COLUMNS = ("oneid", "message_id", "type", "event", "name", "ts", "received_at", "properties", "identities",
                     "raw_partition", "raw_offset", "campaign_source", "campaign_medium", "campaign_name", "id_hash")


def event_row_body(ev: dict[str, Any], ts: int, rcv: int, raw_partition: int, raw_offset: int,
                   id_hash: str = "") -> bytes:
    """An event's row, all but the OneID (the person stage adds it: ``with_oneid``). Built by the ingest, which
    has the event decoded already, so the person stage only splices in the OneID."""
    t = ev.get("type", "track")
    given = ev.get("identities")
    ids = {k: mask(k, v) for k, v in given.items()} if given else {}
    v = ev.get("user_id")
    if v:
        ids["user_id"] = mask("user_id", v)
    v = ev.get("anonymous_id")
    if v:
        ids["anonymous_id"] = mask("anonymous_id", v)
    # UTM data (Segment's context.campaign) makes the event a marketing touchpoint.
    ctx = ev.get("context")
    campaign = ctx.get("campaign") if ctx else None
    if not (campaign and isinstance(campaign, dict)):
        campaign = _EMPTY
    return orjson.dumps([
        ev["message_id"],
        t,
        (ev.get("event") or t) if t == "track" else t,
        ev.get("name") or "",
        # DateTime64 columns take seconds with a fraction
        ts / 1000,
        rcv / 1000,
        # An object: ClickHouse stores its text in the String column (sinks.clickhouse's insert settings).
        ev.get("properties") or _EMPTY,
        ids,
        raw_partition,
        raw_offset,
        campaign.get("source") or "",
        campaign.get("medium") or "",
        campaign.get("name") or "",
        id_hash,
    ])


def row_dict(row: bytes) -> dict[str, Any]:
    """An event row (with its OneID) by column name, for tools and tests."""
    return dict(zip(EVENT_ROW_COLUMNS, orjson.loads(row), strict=True))


def with_oneid(row: bytes, oneid: str) -> bytes:
    # A OneID is "o_" and hex digits: nothing in it needs escaping.
    return b'["' + oneid.encode() + b'",' + row[1:]


def event_row(en: Entry, oneid: str) -> bytes:
    return with_oneid(en.row, oneid)


def event_rows(entries: list[Entry], oneid: str) -> list[bytes]:
    """``event_row`` of one person's entries, the OneID encoded once for all of them."""
    head = b'["' + oneid.encode() + b'",'
    return [head + en.row[1:] for en in entries]


def action_row(action: dict[str, Any]) -> bytes:
    # Times stay ISO-8601 text; the sink inserts with best-effort date parsing.
    return orjson.dumps({
        "action_id": action["action_id"],
        "oneid": action["oneid"],
        "rule_id": action["rule_id"],
        "rule_version": action["rule_version"],
        "channel": action["channel"],
        "template": action["template"],
        "created_at": action["created_at"],
        "not_before": action["not_before"],
        "expires_at": action["expires_at"],
        "reason": orjson.dumps(action["reason"]).decode(),
    })
