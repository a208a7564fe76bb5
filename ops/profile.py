"""``cdp profile TYPE:VALUE``: one person as ClickHouse knows them, found by one of their identifiers.

The identifier is normalised and hashed as the ingest does (the raw value goes no further than this process), its
latest row in ``cdp.identities`` names a OneID, ``cdp.oneid_current`` the person's surviving OneID. Then, for the
survivor and every OneID merged into it: the merges, the identifiers (masked), the links the link writer made and
those it refused with the reason, the events (counts by name, first and last seen, the most recent), the actions,
and the current profile row. Queries are built here, pure (``*_query``: SQL with bound ``{name:Type}`` values),
and run read-only on one connection, as ``ops.worker.query`` runs one (directly, or through the worker that holds
the embedded engine).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from config.settings import Settings
from core.ids import identifier_hash, mask
from core.normalize import normalize_identifier

# The most rows of each list a profile shows (the newest); the counts are of all.
RECENT_EVENTS = 10
RECENT_ACTIONS = 20
MAX_LINKS = 500
MAX_REFUSALS = 100

# What a refusal's reason means (docs/identity.md, "Semantics").
REFUSAL_REASONS = {
    "unique": "the person already has another identifier of this type, which is unique",
    "limit": "the person already has as many identifiers of this type as it may",
    "limit_window": "the person already has as many identifiers of this type, first seen within its window, as it may",
    "max_identifiers": "the person would hold more identifiers than any person may",
    "max_merges": "the person has been merged as often as any person may",
    "split": "an operator split this link",
}


class Query(NamedTuple):
    """SQL with ClickHouse's ``{name:Type}`` placeholders and the values they are bound to (never spliced)."""

    sql: str
    params: dict[str, Any]


def person_query(id_type: str, id_hash: str) -> Query:
    """The identifier's OneID (its latest version) and that OneID's current survivor; no row when unknown."""
    return Query(
        "SELECT f.oneid AS found, if(c.oneid != '', c.oneid, f.oneid) AS oneid "
        "FROM (SELECT argMax(oneid, updated_at) AS oneid FROM cdp.identities "
        "WHERE identifier_type = {type:String} AND identifier_hash = {hash:String} HAVING count() > 0) AS f "
        "LEFT JOIN cdp.oneid_current AS c ON c.from_oneid = f.oneid", {"type": id_type, "hash": id_hash})


def merged_query(oneid: str) -> Query:
    """Every OneID currently merged into ``oneid``, at any depth."""
    return Query("SELECT from_oneid FROM cdp.oneid_current WHERE oneid = {oneid:String} ORDER BY from_oneid",
                 {"oneid": oneid})


def merges_query(oneids: list[str]) -> Query:
    """The merge and split rows of the person's OneIDs, oldest first."""
    return Query("SELECT from_oneid, into_oneid, at, reason, op, message_id FROM cdp.identity_merges FINAL "
                 "WHERE from_oneid IN {oneids:Array(String)} OR into_oneid IN {oneids:Array(String)} "
                 "ORDER BY at, from_oneid", {"oneids": oneids})


def identifiers_query(oneids: list[str]) -> Query:
    """The identifiers whose latest version belongs to one of ``oneids``, first seen first."""
    # The inner lookup finds every identifier that ever had one of the OneIDs; the latest version decides.
    return Query(
        "SELECT identifier_type AS type, identifier_hash AS hash, argMax(identifier_masked, updated_at) AS masked, "
        "min(first_seen) AS seen, argMax(oneid, updated_at) AS current FROM cdp.identities "
        "WHERE identifier_hash IN (SELECT identifier_hash FROM cdp.identities WHERE oneid IN {oneids:Array(String)}) "
        "GROUP BY identifier_type, identifier_hash HAVING current IN {oneids:Array(String)} "
        "ORDER BY seen, type, hash", {"oneids": oneids})


def masks_query(hashes: list[str]) -> Query:
    """The masked value of each identifier hash (its latest version)."""
    return Query("SELECT identifier_hash AS hash, argMax(identifier_masked, updated_at) AS masked "
                 "FROM cdp.identities WHERE identifier_hash IN {hashes:Array(String)} GROUP BY identifier_hash",
                 {"hashes": hashes})


def links_query(oneids: list[str], hashes: list[str], limit: int = MAX_LINKS) -> Query:
    """The links made to or from the person's OneIDs or identifiers, oldest first."""
    return Query("SELECT at, message_id, id_type, id_hash, other_type, other_hash, oneid, rule_version "
                 "FROM cdp.identity_links FINAL WHERE oneid IN {oneids:Array(String)} "
                 "OR id_hash IN {hashes:Array(String)} OR other_hash IN {hashes:Array(String)} "
                 "ORDER BY at, message_id, id_hash LIMIT {limit:UInt32}",
                 {"oneids": oneids, "hashes": hashes, "limit": limit})


def refusals_query(oneids: list[str], hashes: list[str], limit: int = MAX_REFUSALS) -> Query:
    """The links refused to or from the person's OneIDs or identifiers, newest first, with their total."""
    return Query("SELECT at, message_id, reason, id_type, id_hash, id_masked, oneid, other_oneid, rule_version, "
                 "count() OVER () AS total FROM cdp.identity_refusals FINAL "
                 "WHERE oneid IN {oneids:Array(String)} OR other_oneid IN {oneids:Array(String)} "
                 "OR id_hash IN {hashes:Array(String)} ORDER BY at DESC, message_id, id_hash LIMIT {limit:UInt32}",
                 {"oneids": oneids, "hashes": hashes, "limit": limit})


# Events whose sunk OneID is one of the person's: exactly the rows cdp.events_resolved gives the survivor, read
# through the events table's key (oneid first) instead of resolving every event.
def event_counts_query(oneids: list[str]) -> Query:
    """Events by name (a track's event, else its type): how many, first and last seen; most frequent first."""
    return Query("SELECT event, count() AS n, min(ts) AS first, max(ts) AS last FROM cdp.events FINAL "
                 "WHERE oneid IN {oneids:Array(String)} GROUP BY event ORDER BY n DESC, event", {"oneids": oneids})


def recent_events_query(oneids: list[str], limit: int = RECENT_EVENTS) -> Query:
    return Query("SELECT ts, type, event, name, message_id, oneid AS oneid_original, properties FROM cdp.events FINAL "
                 "WHERE oneid IN {oneids:Array(String)} ORDER BY ts DESC, message_id LIMIT {limit:UInt32}",
                 {"oneids": oneids, "limit": limit})


def actions_query(oneids: list[str], limit: int = RECENT_ACTIONS) -> Query:
    return Query("SELECT created_at, action_id, rule_id, rule_version, channel, template, not_before, reason, oneid, "
                 "count() OVER () AS total FROM cdp.actions FINAL WHERE oneid IN {oneids:Array(String)} "
                 "ORDER BY created_at DESC, action_id LIMIT {limit:UInt32}", {"oneids": oneids, "limit": limit})


def profile_row_query(oneid: str) -> Query:
    return Query("SELECT tags, scores, lifecycle, rfm, updated_at FROM cdp.profiles FINAL WHERE oneid = {oneid:String}",
                 {"oneid": oneid})


Run = Callable[[Query], list[dict[str, Any]]]


def _rows(out: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.splitlines() if line.strip()]


def profile(settings: Settings, id_type: str, value: str, run: Run | None = None,
            on_wait: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The person holding ``id_type:value``. ``found`` False (and ``message``) for an identifier no person has;
    the identifier is named masked, never as given. ``run`` runs a query (default: read-only on the configured
    ClickHouse, every query of the profile on one connection). Raises ops.worker's ClickHouseUnavailable or
    QueryFailed."""
    normal = normalize_identifier(id_type, value)
    if normal is None:  # no identifier at all: nothing to look up
        masked = mask(id_type, str(value).strip())
        return {"found": False, "identifier": {"type": id_type, "masked": masked, "hash": None},
                "message": f"no person has {id_type} {masked}: it is not a valid {id_type}"}
    if run is not None:
        return person_profile(run, settings.salt, id_type, normal)
    from ops.worker import _on_clickhouse, worker_query
    from streams.kafka import sync_salt

    sync_salt(settings)  # hashed as the pipeline hashes (the deployment's salt)
    return _on_clickhouse(
        settings,
        lambda info: person_profile(lambda q: _rows(worker_query(info, q.sql, "JSONEachRow", q.params)),
                                    settings.salt, id_type, normal),
        lambda sink: person_profile(lambda q: _rows(sink.read_query(q.sql, "JSONEachRow", q.params)),
                                    settings.salt, id_type, normal),
        on_wait)


def person_profile(run: Run, salt: str, id_type: str, normal: str) -> dict[str, Any]:
    """``profile`` of an identifier's normalised value, its queries run by ``run``."""
    id_hash = identifier_hash(salt, id_type, normal)
    ident = {"type": id_type, "masked": mask(id_type, normal), "hash": id_hash}
    person = run(person_query(id_type, id_hash))
    if not person:
        return {"found": False, "identifier": ident, "message": f"no person has {id_type} {ident['masked']}"}
    ident["oneid"] = person[0]["found"]
    survivor = person[0]["oneid"]
    merged = [r["from_oneid"] for r in run(merged_query(survivor))]
    oneids = [survivor, *merged]

    identifiers = [{"type": r["type"], "masked": r["masked"], "first_seen": r["seen"], "hash": r["hash"],
                    "oneid": r["current"]} for r in run(identifiers_query(oneids))]
    hashes = [x["hash"] for x in identifiers]
    masks = {x["hash"]: x["masked"] for x in identifiers}
    links = run(links_query(oneids, hashes))
    unknown = sorted({h for x in links for h in (x["id_hash"], x["other_hash"])} - masks.keys())
    if unknown:  # identifiers that left the person (a split) still name their links
        masks.update({r["hash"]: r["masked"] for r in run(masks_query(unknown))})
    for x in links:
        x["id_masked"] = masks.get(x["id_hash"], "")
        x["other_masked"] = masks.get(x["other_hash"], "")
    refusals = run(refusals_query(oneids, hashes))
    for r in refusals:
        r["meaning"] = REFUSAL_REASONS.get(r["reason"], "")
    counts = run(event_counts_query(oneids))
    recent = run(recent_events_query(oneids))
    for e in recent:
        e["properties"] = _json(e["properties"])
    actions = run(actions_query(oneids))
    for a in actions:
        a["reason"] = _json(a["reason"])
    rows = run(profile_row_query(survivor))
    return {
        "found": True,
        "identifier": ident,
        "oneid": survivor,
        "merged_oneids": merged,
        "merges": run(merges_query(oneids)),
        "identifiers": identifiers,
        "links": links,
        "refusals": [{k: v for k, v in r.items() if k != "total"} for r in refusals],
        "refusals_total": int(refusals[0]["total"]) if refusals else 0,
        "events": {
            "total": sum(int(c["n"]) for c in counts),
            "first_seen": min((c["first"] for c in counts), default=None),
            "last_seen": max((c["last"] for c in counts), default=None),
            "by_name": [{"event": c["event"], "count": int(c["n"]), "first_seen": c["first"],
                         "last_seen": c["last"]} for c in counts],
            "recent": recent,
        },
        "actions": [{k: v for k, v in a.items() if k != "total"} for a in actions],
        "actions_total": int(actions[0]["total"]) if actions else 0,
        "profile": rows[0] if rows else None,
    }


def _json(text: Any) -> Any:
    """A JSON text column as its value (left as text if it does not parse)."""
    if not isinstance(text, str):
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def format_profile(p: dict[str, Any]) -> str:
    """The profile as a person reads it: sections, one line per item, times in UTC."""
    if not p["found"]:
        return p["message"]
    ident = p["identifier"]
    out = [f"person {p['oneid']}  (found by {ident['type']} {ident['masked']})"]
    if p["merged_oneids"]:
        out.append(f"  merged into it: {', '.join(p['merged_oneids'])}")
    if p["merges"]:
        out += ["", f"merges ({len(p['merges'])})"]
        for m in p["merges"]:
            verb = "merged into" if m["op"] == "merge" else "split from"
            out.append(f"  {m['at']}  {m['from_oneid']} {verb} {m['into_oneid']}  ({m['reason']}"
                       + (f", event {m['message_id']})" if m["message_id"] else ")"))
    out += ["", f"identifiers ({len(p['identifiers'])})"]
    width = max((len(x["type"]) for x in p["identifiers"]), default=0)
    for x in p["identifiers"]:
        out.append(f"  {x['type']:<{width}}  {x['masked']:<24}  first seen {x['first_seen']}")
    out += ["", f"links ({len(p['links'])})"]
    for x in p["links"]:
        out.append(f"  {x['at']}  {x['id_type']} {x['id_masked']} -> {x['other_type']} {x['other_masked']}  "
                   f"(event {x['message_id']}, rules v{x['rule_version']})")
    shown = f", the latest {len(p['refusals'])}" if p["refusals_total"] > len(p["refusals"]) else ""
    out += ["", f"refused links ({p['refusals_total']}{shown})"]
    for r in p["refusals"]:
        out.append(f"  {r['at']}  {r['id_type']} {r['id_masked']} of {r['other_oneid']} not linked to {r['oneid']}: "
                   f"{r['reason']}" + (f" ({r['meaning']})" if r["meaning"] else "")
                   + f"  (event {r['message_id']}, rules v{r['rule_version']})")
    ev = p["events"]
    out += ["", f"events ({ev['total']})" + (f": first {ev['first_seen']}, last {ev['last_seen']}" if ev["total"]
                                              else "")]
    width = max((len(c["event"]) for c in ev["by_name"]), default=0)
    for c in ev["by_name"]:
        out.append(f"  {c['event']:<{width}}  {c['count']:>6}  {c['first_seen']} .. {c['last_seen']}")
    if ev["recent"]:
        out += ["", f"recent events ({len(ev['recent'])})"]
        for e in ev["recent"]:
            label = e["event"] + (f" {e['name']}" if e["name"] else "")
            out.append(f"  {e['ts']}  {label}  ({e['message_id']})")
    shown = f", the latest {len(p['actions'])}" if p["actions_total"] > len(p["actions"]) else ""
    out += ["", f"actions ({p['actions_total']}{shown})"]
    for a in p["actions"]:
        out.append(f"  {a['created_at']}  {a['channel']}  {a['rule_id']} v{a['rule_version']}  {a['template']}  "
                   f"{a['action_id']}")
    prof = p["profile"]
    if prof is not None:
        scores = ", ".join(f"{k}={v:g}" for k, v in sorted(prof["scores"].items()))
        out += ["", f"profile (updated {prof['updated_at']})",
                f"  tags: {', '.join(prof['tags']) or '-'}", f"  scores: {scores or '-'}",
                f"  lifecycle: {prof['lifecycle'] or '-'}" + (f", rfm {prof['rfm']}" if prof["rfm"] else "")]
    return "\n".join(out)
