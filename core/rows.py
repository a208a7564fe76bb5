"""ClickHouse rows (JSONEachRow lines) for events and actions. PII is masked here, before it leaves the process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from core.ids import mask

if TYPE_CHECKING:  # core.envelope imports this module to build rows
    from core.envelope import Entry

# Identifier fields of an event that are masked in the events table.
_ID_FIELDS = (("user_id", "user_id"), ("anonymous_id", "anonymous_id"))
_EMPTY: dict[str, Any] = {}


def event_row_body(ev: dict[str, Any], ts: int, rcv: int, src: tuple[int, int]) -> bytes:
    """An event's row, all but the OneID (the person stage adds it: ``with_oneid``). Built by the ingest, which
    has the event decoded already and spare time, so the person stage only splices in the OneID."""
    t = ev.get("type", "track")
    ids = {k: mask(k, v) for k, v in (ev.get("identities") or {}).items()}
    for field_name, id_type in _ID_FIELDS:
        if ev.get(field_name):
            ids[id_type] = mask(id_type, ev[field_name])
    # UTM data (Segment's context.campaign) makes the event a marketing touchpoint.
    campaign = (ev.get("context") or _EMPTY).get("campaign")
    if not isinstance(campaign, dict):
        campaign = _EMPTY
    row: dict[str, Any] = {
        "message_id": ev["message_id"],
        "type": t,
        "event": (ev.get("event") or t) if t == "track" else t,
        # DateTime64 columns take seconds with a fraction
        "ts": ts / 1000,
        "received_at": rcv / 1000,
        # An object: ClickHouse stores its text in the String column (sinks.clickhouse's insert settings).
        "properties": ev.get("properties") or _EMPTY,
        "raw_partition": src[0],
        "raw_offset": src[1],
    }
    # Empty columns are left out (ClickHouse fills in their defaults: '' and {}): most events have no name,
    # campaign or identifiers beyond the anonymous id, and every byte left out is neither carried nor parsed.
    if ids:
        row["identities"] = ids
    name = ev.get("name")
    if name:
        row["name"] = name
    if campaign:
        for k in ("source", "medium", "name"):
            v = campaign.get(k)
            if v:
                row[f"campaign_{k}"] = v
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
