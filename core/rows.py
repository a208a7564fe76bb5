"""ClickHouse rows (JSONEachRow lines) for events and actions. PII is masked here, before it leaves the process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from core.ids import mask

if TYPE_CHECKING:  # core.envelope imports this module to build rows
    from core.envelope import Entry

_EMPTY: dict[str, Any] = {}
_CAMPAIGN_COLUMNS = (("source", "campaign_source"), ("medium", "campaign_medium"), ("name", "campaign_name"))


def event_row_body(ev: dict[str, Any], ts: int, rcv: int, raw_partition: int, raw_offset: int) -> bytes:
    """An event's row, all but the OneID (the person stage adds it: ``with_oneid``). Built by the ingest, which
    has the event decoded already and spare time, so the person stage only splices in the OneID."""
    t = ev.get("type", "track")
    row: dict[str, Any] = {
        "message_id": ev["message_id"],
        "type": t,
        "event": (ev.get("event") or t) if t == "track" else t,
        # DateTime64 columns take seconds with a fraction
        "ts": ts / 1000,
        "received_at": rcv / 1000,
        # An object: ClickHouse stores its text in the String column (sinks.clickhouse's insert settings).
        "properties": ev.get("properties") or _EMPTY,
        "raw_partition": raw_partition,
        "raw_offset": raw_offset,
    }
    # Empty columns are left out (ClickHouse fills in their defaults: '' and {}): most events have no name,
    # campaign or identifiers beyond the anonymous id, and every byte left out is neither carried nor parsed.
    given = ev.get("identities")
    ids = {k: mask(k, v) for k, v in given.items()} if given else {}
    v = ev.get("user_id")
    if v:
        ids["user_id"] = mask("user_id", v)
    v = ev.get("anonymous_id")
    if v:
        ids["anonymous_id"] = mask("anonymous_id", v)
    if ids:
        row["identities"] = ids
    v = ev.get("name")
    if v:
        row["name"] = v
    # UTM data (Segment's context.campaign) makes the event a marketing touchpoint.
    ctx = ev.get("context")
    campaign = ctx.get("campaign") if ctx else None
    if campaign and isinstance(campaign, dict):
        for key, column in _CAMPAIGN_COLUMNS:
            v = campaign.get(key)
            if v:
                row[column] = v
    return orjson.dumps(row)


def with_oneid(row: bytes, oneid: str) -> bytes:
    # A OneID is "o_" and hex digits: nothing in it needs escaping.
    return b'{"oneid":"' + oneid.encode() + b'",' + row[1:]


def event_row(en: Entry, oneid: str) -> bytes:
    return with_oneid(en.row, oneid)


def event_rows(entries: list[Entry], oneid: str) -> list[bytes]:
    """``event_row`` of one person's entries, the OneID encoded once for all of them."""
    head = b'{"oneid":"' + oneid.encode() + b'",'
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
