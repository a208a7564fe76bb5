"""core.identity: the cases a user would name (the reference model's property tests are test_identity_reference)."""

from __future__ import annotations

from core.identity import IdentityGraph, Resolution
from core.ids import oneid_for_hash
from tests.core.test_identity_reference import (
    BLOCKED_DEVICE,
    RULES,
    SALT,
    WINDOW_MS,
    event_ids,
    h,
    ident,
    oneid,
)


def resolve(graph: IdentityGraph, raw: list[tuple[str, str]], ts: int, mid: str) -> Resolution:
    res = graph.resolve(event_ids(raw), ts, mid)
    graph.take_writes()
    return res


def test_identify_with_a_blocked_device_makes_no_mega_user() -> None:
    graph = IdentityGraph(RULES, SALT)
    for i in range(5):  # five visitors whose SDK reports the all-zero device id
        resolve(graph, [("anonymous_id", f"a{i}"), ("device_id", BLOCKED_DEVICE)], 10 + i, f"m{i}")
    persons = {graph.person_of(h("anonymous_id", f"a{i}")) for i in range(5)}
    assert persons == {oneid("anonymous_id", f"a{i}") for i in range(5)}
    assert graph.person_of(h("device_id", BLOCKED_DEVICE)) is None
    # Unfiltered, the shared value would have been one person of all five (anonymous ids have no limit).
    unfiltered = IdentityGraph(RULES, SALT)
    for i in range(5):
        unfiltered.resolve([ident("anonymous_id", f"a{i}"), ident("device_id", BLOCKED_DEVICE)], 10 + i, f"m{i}")
    assert len({unfiltered.person_of(h("anonymous_id", f"a{i}")) for i in range(5)}) == 1


def test_two_user_ids_sharing_a_tablet_stay_two_persons() -> None:
    graph = IdentityGraph(RULES, SALT)
    resolve(graph, [("user_id", "alice"), ("device_id", "tablet")], 1, "m1")
    res = resolve(graph, [("user_id", "bob"), ("device_id", "tablet")], 2, "m2")
    assert res.oneid == oneid("user_id", "bob")
    assert [(r.reason, r.id_type, r.id_hash) for r in res.refusals] == [
        ("unique:user_id", "device_id", h("device_id", "tablet"))]
    assert res.refusals[0].oneid == oneid("user_id", "bob") and res.refusals[0].other_oneid == oneid("user_id", "alice")
    assert graph.person_of(h("device_id", "tablet")) == oneid("user_id", "alice")
    assert graph.members(oneid("user_id", "bob")) == [("user_id", h("user_id", "bob"))]
    assert res.merges == []


def test_a_mistyped_phone_on_one_order_does_not_merge_two_customers() -> None:
    graph = IdentityGraph(RULES, SALT)
    resolve(graph, [("crm_id", "c-ann"), ("phone", "13800000001"), ("anonymous_id", "ann-web")], 1, "m1")
    resolve(graph, [("crm_id", "c-ben"), ("phone", "13800000002")], 2, "m2")
    # Ben's order carries Ann's number, mistyped by one digit.
    res = resolve(graph, [("crm_id", "c-ben"), ("phone", "13800000001")], 3, "m3")
    assert res.oneid == oneid("crm_id", "c-ben")
    assert [(r.reason, r.id_type) for r in res.refusals] == [("unique:crm_id", "phone")]
    assert graph.person_of(h("phone", "13800000001")) == oneid("crm_id", "c-ann")
    assert graph.person_of(h("anonymous_id", "ann-web")) == oneid("crm_id", "c-ann")
    assert {m for _t, m in graph.members(oneid("crm_id", "c-ben"))} == {h("crm_id", "c-ben"), h("phone", "13800000002")}


def test_anonymous_browsing_then_login_is_one_person_with_the_user_ids_oneid() -> None:
    graph = IdentityGraph(RULES, SALT)
    browsing = [resolve(graph, [("anonymous_id", "anon-1")], ts, f"view{ts}") for ts in (1, 2, 3)]
    assert {r.oneid for r in browsing} == {oneid("anonymous_id", "anon-1")}
    login = resolve(graph, [("user_id", "u-42"), ("anonymous_id", "anon-1")], 4, "login")
    assert login.oneid == oneid("user_id", "u-42")
    assert [(m.from_oneid, m.into_oneid) for m in login.merges] == [(oneid("anonymous_id", "anon-1"),
                                                                     oneid("user_id", "u-42"))]
    assert graph.person_of(h("anonymous_id", "anon-1")) == oneid("user_id", "u-42")
    assert graph.survivor(oneid("anonymous_id", "anon-1")) == oneid("user_id", "u-42")
    # Later anonymous events of the same browser reach the user's person.
    assert resolve(graph, [("anonymous_id", "anon-1")], 5, "view5").oneid == oneid("user_id", "u-42")


def test_hard_cap_on_identifiers_refuses_and_records() -> None:
    graph = IdentityGraph(RULES, SALT)  # max_identifiers 6
    for i in range(5):
        resolve(graph, [("user_id", "u"), ("anonymous_id", f"a{i}")], i, f"m{i}")
    res = resolve(graph, [("user_id", "u"), ("anonymous_id", "a5")], 10, "m10")
    assert [(r.reason, r.id_type, r.id_hash, r.masked, r.message_id) for r in res.refusals] == [
        ("max_identifiers", "anonymous_id", h("anonymous_id", "a5"), "a***", "m10")]
    assert len(graph.members(oneid("user_id", "u"))) == 6
    assert graph.person_of(h("anonymous_id", "a5")) == oneid("anonymous_id", "a5")  # its own person, recorded


def test_hard_cap_on_merges_refuses_and_records() -> None:
    graph = IdentityGraph(RULES, SALT)  # max_merges 3
    for i in range(5):
        resolve(graph, [("anonymous_id", f"a{i}")], i, f"visit{i}")
    # The first login is the user_id joining a0's person (a user_id never seen: no merge of two persons), the
    # next three merge known persons.
    for i in range(4):
        assert resolve(graph, [("user_id", "u"), ("anonymous_id", f"a{i}")], 10 + i, f"login{i}").merges
    record = graph.record(oneid("user_id", "u"))
    assert record is not None and record.merges == 3
    res = resolve(graph, [("user_id", "u"), ("anonymous_id", "a4")], 20, "login4")
    assert [(r.reason, r.id_hash) for r in res.refusals] == [("max_merges", h("anonymous_id", "a4"))]
    assert res.merges == []
    # A new identifier joining is no merge: the cap does not refuse it.
    assert resolve(graph, [("user_id", "u"), ("anonymous_id", "fresh")], 21, "m21").refusals == []


def test_device_limit_counts_devices_linked_within_its_window() -> None:
    graph = IdentityGraph(RULES, SALT)  # device_id: 2 per window
    resolve(graph, [("user_id", "u"), ("device_id", "d1")], 0, "m1")
    resolve(graph, [("user_id", "u"), ("device_id", "d2")], 10, "m2")
    res = resolve(graph, [("user_id", "u"), ("device_id", "d3")], 20, "m3")
    assert [(r.reason, r.id_type) for r in res.refusals] == [("limit_window:device_id", "device_id")]
    # A window later d1 and d2 no longer count: a new device joins.
    later = resolve(graph, [("user_id", "u"), ("device_id", "d4")], 10 + WINDOW_MS, "m4")
    assert later.refusals == [] and graph.person_of(h("device_id", "d4")) == oneid("user_id", "u")


def test_phone_limit_refuses_a_third_number() -> None:
    graph = IdentityGraph(RULES, SALT)  # phone: 2
    resolve(graph, [("user_id", "u"), ("phone", "13800000001")], 0, "m1")
    resolve(graph, [("user_id", "u"), ("phone", "13800000002")], 1, "m2")
    res = resolve(graph, [("user_id", "u"), ("phone", "13800000003")], 2, "m3")
    assert [(r.reason, r.id_type) for r in res.refusals] == [("limit:phone", "phone")]


# -- splits and new primaries -------------------------------------------------------------------------------


def test_a_split_does_not_add_to_the_merges_of_the_person_left_behind() -> None:
    graph = IdentityGraph(RULES, SALT)  # max_merges 3
    for i in range(4):  # new identifiers joining: no merge
        resolve(graph, [("user_id", "u"), ("anonymous_id", f"a{i}")], i, f"m{i}")
    record = graph.record(oneid("user_id", "u"))
    assert record is not None and record.merges == 0
    graph.split(h("anonymous_id", "a3"), 10)
    graph.take_writes()
    resolve(graph, [("anonymous_id", "other-browser")], 11, "visit")
    login = resolve(graph, [("user_id", "u"), ("anonymous_id", "other-browser")], 12, "login")
    assert login.refusals == []


def test_a_oneid_merged_before_a_split_resolves_to_its_identifiers_person() -> None:
    graph = IdentityGraph(RULES, SALT)
    first, second = sorted([ident("anonymous_id", "a0"), ident("anonymous_id", "a1")], key=lambda i: i[1])
    graph.resolve([second], 1, "m1")
    graph.resolve([ident("user_id", "u"), second], 2, "m2")  # second's OneID merged into the user's
    graph.resolve([first, second], 3, "m3")  # first joins the user's person through second
    graph.take_writes()
    graph.split(h("user_id", "u"), 4)  # first and second stay linked: a person of their own, anchored by first
    graph.take_writes()
    assert graph.person_of(second[1]) == oneid_of(first)
    assert graph.survivor(oneid_of(second)) == graph.person_of(second[1])


def oneid_of(i: tuple[str, str, str]) -> str:
    return oneid_for_hash(SALT, i[1])


def test_a_new_device_on_a_known_persons_event_is_no_merge() -> None:
    graph = IdentityGraph(RULES, SALT)
    resolve(graph, [("user_id", "u"), ("anonymous_id", "a")], 1, "login")
    res = resolve(graph, [("device_id", "new-phone"), ("anonymous_id", "a")], 2, "app-open")
    assert res.oneid == oneid("user_id", "u")
    record = graph.record(oneid("user_id", "u"))
    assert record is not None
    assert res.merges == [] and record.merges == 0
