"""`cdp profile`: a person found by any of their identifiers, in any spelling, resolved to the surviving OneID
through merges at any depth, with their identifiers (masked), links, refused links and why, events and actions;
nobody else's; an unknown identifier named masked. Against real chDB, with rows of core.identity_rows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from cdp_cli.main import main
from config.settings import Settings
from core.identity import IdentityRow, Link, Merge, Refusal
from core.identity_rows import identity_lines, link_lines, merge_lines, refusal_lines
from core.ids import identifier_hash, mask, oneid_for_hash
from core.rows import action_row
from ops.profile import REFUSAL_REASONS, format_profile, profile
from sinks.clickhouse import (
    ACTION_COLUMNS,
    EVENT_COLUMNS,
    IDENTITY_COLUMNS,
    IDENTITY_LINK_COLUMNS,
    IDENTITY_MERGE_COLUMNS,
    IDENTITY_REFUSAL_COLUMNS,
)

PHONE = "13800138000"
DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC


def text(ms: int) -> str:
    """A DateTime64(3, 'UTC') as ClickHouse's JSON output writes it."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:23]


class World:
    """One person (user u-1, anonymous a-1, device d-1, the phone) whose OneIDs were merged in a chain (device's
    into anonymous's into the user's), a second user whose link to the device was refused, and a stranger.
    Salted per test: the session's engine is shared, and another salt is another set of hashes and OneIDs."""

    def __init__(self, sink, data_dir: Path):
        tag = uuid.uuid4().hex[:12]
        self.salt = f"profile-{tag}"
        h = self.h = {k: identifier_hash(self.salt, t, v) for k, (t, v) in {
            "user": ("user_id", "u-1"), "anon": ("anonymous_id", "a-1"), "device": ("device_id", "d-1"),
            "phone": ("phone", PHONE), "user2": ("user_id", "u-2"), "stranger": ("user_id", "u-9"),
            "device2": ("device_id", "d-2")}.items()}
        o = self.o = {k: oneid_for_hash(self.salt, v) for k, v in h.items()}
        self.survivor, self.merged = o["user"], sorted([o["anon"], o["device"]])
        identities = [
            IdentityRow("anonymous_id", h["anon"], "a***", o["anon"], T0, T0),
            IdentityRow("device_id", h["device"], "d***", o["device"], T0 + 1, T0 + 1),
            # The phone joined the device's person; its row was not rewritten after the merges (the lookup
            # follows the chain of merges from the OneID it names).
            IdentityRow("phone", h["phone"], "138****8000", o["device"], T0 + 2, T0 + 2),
            IdentityRow("user_id", h["user"], "u***", o["user"], T0 + DAY, T0 + DAY),
            # The anonymous id moved to the user's person: its latest version wins
            IdentityRow("anonymous_id", h["anon"], "a***", o["user"], T0, T0 + DAY),
            IdentityRow("user_id", h["user2"], "u***", o["user2"], T0 + 2 * DAY, T0 + 2 * DAY),
            IdentityRow("user_id", h["stranger"], "u***", o["stranger"], T0, T0),
            # A device linked to the user, then split off by an operator: its own person again
            IdentityRow("device_id", h["device2"], "d***", o["user"], T0 + DAY, T0 + 3 * DAY),
            IdentityRow("device_id", h["device2"], "d***", o["device2"], T0 + DAY, T0 + 4 * DAY),
        ]
        merges = [Merge(o["device"], o["anon"], T0 + 3, "m-2", "link"),
                  Merge(o["anon"], o["user"], T0 + DAY, "m-3", "link")]
        links = [Link("phone", h["phone"], "device_id", h["device"], o["device"], T0 + 2, "m-1"),
                 Link("device_id", h["device"], "anonymous_id", h["anon"], o["anon"], T0 + 3, "m-2"),
                 Link("anonymous_id", h["anon"], "user_id", h["user"], o["user"], T0 + DAY, "m-3"),
                 Link("device_id", h["device2"], "user_id", h["user"], o["user"], T0 + 3 * DAY, "m-5"),
                 Link("anonymous_id", "h-other", "user_id", h["stranger"], o["stranger"], T0, "m-9")]
        # user2's event named the user's device: refused, the device stays the user's (oneid: where the event went)
        refusals = [Refusal("unique", "device_id", h["device"], "d***", o["user2"], o["user"], T0 + 2 * DAY, "m-4"),
                    Refusal("limit", "device_id", "h-other", "x-***", o["stranger"], "o_nobody", T0, "m-9")]
        ins = sink.insert_json
        ins("identities", identity_lines(identities), IDENTITY_COLUMNS, compact=True)
        ins("identity_merges", merge_lines(merges), IDENTITY_MERGE_COLUMNS, compact=True)
        ins("identity_links", link_lines(links, 7), IDENTITY_LINK_COLUMNS, compact=True)
        ins("identity_refusals", refusal_lines(refusals, 7), IDENTITY_REFUSAL_COLUMNS, compact=True)
        # Events under each of the person's OneIDs as they were sunk, and one of the stranger's.
        self.events = [(o["device"], "e-1", "track", "product_view", "", T0 + 10),
                       (o["anon"], "e-2", "page", "page", "Home", T0 + 20),
                       (o["user"], "e-3", "track", "product_view", "", T0 + DAY + 10),
                       (o["user"], "e-4", "track", "order_paid", "", T0 + DAY + 20),
                       (o["stranger"], "e-9", "track", "order_paid", "", T0 + 30)]
        ins("events", [orjson.dumps([oneid, f"{self.salt}-{mid}", t, ev, name, ts / 1000, ts / 1000,
                                     {"sku": "s-1"} if ev == "product_view" else {}, {}, 0, 0, "", "", "", ""])
                       for oneid, mid, t, ev, name, ts in self.events], EVENT_COLUMNS, compact=True)
        actions = [{"action_id": f"act-{self.salt}-{k}", "oneid": oid, "rule_id": "welcome", "rule_version": 2,
                    "channel": "sms", "template": "welcome_sms", "created_at": text(at), "not_before": text(at),
                    "expires_at": text(at + DAY), "reason": {"events": ["e-1"]}}
                   for k, oid, at in [("1", o["anon"], T0 + 30), ("9", o["stranger"], T0 + 40)]]
        ins("actions", [action_row(a) for a in actions], ACTION_COLUMNS)
        ins("profiles", [orjson.dumps({"oneid": o["user"], "tags": ["buyer"], "scores": {"intent": 3.5},
                                       "lifecycle": "active", "rfm": "", "updated_at": text(T0 + DAY + 20)})],
            ["oneid", "tags", "scores", "lifecycle", "rfm", "updated_at"])
        self.settings = Settings(clickhouse_url=sink.url, pii_salt=self.salt, data_dir=data_dir,
                                 topic_prefix=f"profile{tag}")


@pytest.fixture(scope="module")
def world(chdb_sink, tmp_path_factory):
    """Read, never changed, by every test of the module."""
    chdb_sink.migrate()
    return World(chdb_sink, tmp_path_factory.mktemp("profile"))


@pytest.mark.parametrize("id_type,value", [("phone", PHONE), ("phone", "+86 138-0013-8000"), ("device_id", " d-1 "),
                                           ("anonymous_id", "a-1"), ("user_id", "u-1")])
def test_any_identifier_in_any_spelling_finds_the_surviving_oneid_and_every_oneid_merged_into_it(world, id_type,
                                                                                                value):
    p = profile(world.settings, id_type, value)
    assert p["found"] is True
    assert p["oneid"] == world.survivor
    assert p["merged_oneids"] == world.merged
    assert p["identifier"]["hash"] == world.h[{"phone": "phone", "device_id": "device", "anonymous_id": "anon",
                                               "user_id": "user"}[id_type]]


def test_the_person_has_its_identifiers_masked_links_merges_and_refused_links_with_the_reason(world):
    p = profile(world.settings, "phone", PHONE)
    h, o = world.h, world.o
    assert [(x["type"], x["masked"], x["first_seen"]) for x in p["identifiers"]] == [
        ("anonymous_id", "a***", text(T0)), ("device_id", "d***", text(T0 + 1)),
        ("phone", "138****8000", text(T0 + 2)), ("user_id", "u***", text(T0 + DAY))]
    assert [(m["from_oneid"], m["into_oneid"], m["message_id"]) for m in p["merges"]] == [
        (o["device"], o["anon"], "m-2"), (o["anon"], o["user"], "m-3")]
    assert [(x["id_type"], x["id_masked"], x["other_type"], x["other_masked"], x["message_id"], x["rule_version"])
            for x in p["links"]] == [("phone", "138****8000", "device_id", "d***", "m-1", 7),
                                     ("device_id", "d***", "anonymous_id", "a***", "m-2", 7),
                                     ("anonymous_id", "a***", "user_id", "u***", "m-3", 7),
                                     # split off since: no longer an identifier of the person, named still
                                     ("device_id", "d***", "user_id", "u***", "m-5", 7)]
    assert [(r["reason"], r["id_hash"], r["id_masked"], r["oneid"], r["other_oneid"], r["meaning"])
            for r in p["refusals"]] == [("unique", h["device"], "d***", o["user2"], o["user"],
                                         REFUSAL_REASONS["unique"])]
    assert p["refusals_total"] == 1
    assert PHONE not in orjson.dumps(p).decode()  # never the raw value


def test_the_other_side_of_a_refused_link_sees_it_too(world):
    p = profile(world.settings, "user_id", "u-2")
    assert p["oneid"] == world.o["user2"] and p["merged_oneids"] == []
    assert [(r["reason"], r["id_type"], r["oneid"], r["other_oneid"]) for r in p["refusals"]] == [
        ("unique", "device_id", world.o["user2"], world.o["user"])]
    assert p["links"] == [] and p["events"]["total"] == 0 and p["actions"] == []


def test_events_of_every_merged_oneid_are_the_persons_as_the_merge_aware_view_says(world, chdb_sink):
    p = profile(world.settings, "device_id", "d-1")
    ev = p["events"]
    assert [(c["event"], c["count"]) for c in ev["by_name"]] == [("product_view", 2), ("order_paid", 1), ("page", 1)]
    assert (ev["total"], ev["first_seen"], ev["last_seen"]) == (4, text(T0 + 10), text(T0 + DAY + 20))
    assert [e["message_id"] for e in ev["recent"]] == [f"{world.salt}-e-{i}" for i in (4, 3, 2, 1)]
    assert ev["recent"][3]["oneid_original"] == world.o["device"]
    assert ev["recent"][1]["properties"] == {"sku": "s-1"}
    resolved = chdb_sink.rows("SELECT event, count() FROM cdp.events_resolved WHERE oneid = {o:String} "
                              "GROUP BY event", {"o": world.survivor})
    assert dict(resolved) == {c["event"]: c["count"] for c in ev["by_name"]}


def test_actions_of_every_merged_oneid_and_the_current_profile(world):
    p = profile(world.settings, "user_id", "u-1")
    assert [(a["action_id"], a["oneid"], a["channel"], a["reason"]) for a in p["actions"]] == [
        (f"act-{world.salt}-1", world.o["anon"], "sms", {"events": ["e-1"]})]
    assert p["actions_total"] == 1
    assert p["profile"] == {"tags": ["buyer"], "scores": {"intent": 3.5}, "lifecycle": "active", "rfm": "",
                            "updated_at": text(T0 + DAY + 20)}


@pytest.mark.parametrize("id_type,value,message", [
    ("phone", "13900139000", "no person has phone 139****9000"),
    ("email", "Nobody@Example.com", "no person has email n***@example.com"),
    ("phone", "123", "no person has phone 1***: it is not a valid phone"),
])
def test_an_unknown_identifier_is_named_masked(world, id_type, value, message):
    p = profile(world.settings, id_type, value)
    assert p["found"] is False
    assert p["message"] == message
    assert value not in orjson.dumps(p).decode()


def test_the_masks_here_are_the_ingests():
    assert [mask(t, v) for t, v in [("anonymous_id", "a-1"), ("device_id", "d-1"), ("user_id", "u-1"),
                                    ("phone", PHONE)]] == ["a***", "d***", "u***", "138****8000"]


def test_the_text_layout_names_each_section_and_never_the_raw_value(world):
    out = format_profile(profile(world.settings, "phone", PHONE))
    lines = out.splitlines()
    assert lines[0] == f"person {world.survivor}  (found by phone 138****8000)"
    assert lines[1] == f"  merged into it: {', '.join(world.merged)}"
    for section in ("merges (2)", "identifiers (4)", "links (4)", "refused links (1)", "events (4): first "
                    f"{text(T0 + 10)}, last {text(T0 + DAY + 20)}", "recent events (4)", "actions (1)"):
        assert section in lines, section
    assert any(f"device_id d*** of {world.o['user']} not linked to {world.o['user2']}: unique" in ln for ln in lines)
    assert "  tags: buyer" in lines
    assert PHONE not in out


@pytest.fixture()
def cli_env(world, monkeypatch):
    s = world.settings
    for k, v in {"CDP_CLICKHOUSE_URL": s.clickhouse_url, "CDP_PII_SALT": s.salt, "CDP_DATA_DIR": str(s.data_dir),
                 "CDP_TOPIC_PREFIX": s.topic_prefix}.items():
        monkeypatch.setenv(k, v)
    return world


def test_cdp_profile_json_is_the_profile(cli_env, capsys):
    assert main(["profile", f"phone:{PHONE}", "--json"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out == orjson.loads(orjson.dumps(profile(cli_env.settings, "phone", PHONE)))
    assert out["oneid"] == cli_env.survivor


def test_cdp_profile_prints_the_text_layout(cli_env, capsys):
    assert main(["profile", "device_id:d-1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"person {cli_env.survivor}  (found by device_id d***)"
    assert "refused links (1)" in out


def test_cdp_profile_of_an_unknown_identifier_says_so_and_fails(cli_env, capsys):
    assert main(["profile", "phone:13900139000"]) == 1
    assert capsys.readouterr().out.strip() == "no person has phone 139****9000"
    assert main(["profile", "phone:13900139000", "--json"]) == 1
    assert orjson.loads(capsys.readouterr().out)["found"] is False


@pytest.mark.parametrize("arg", ["13800138000", "phone:", ":13800138000"])
def test_cdp_profile_wants_type_and_value(cli_env, capsys, arg):
    assert main(["profile", arg]) == 2
    assert "expected TYPE:VALUE" in capsys.readouterr().err
