"""The shop traffic: the persons identity resolution must join appear, the same seed gives the same traffic and
ground truth, the shoppers' traffic is what it is without them, and the ground truth is one that resolution can
find: each person's identifiers connected through their own events, no two persons sharing one except the
shared tablets and the blocked values."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traffic.shop import MINIAPP_APPID, PERSON_KINDS, PLACEHOLDER_USER_IDS, TEST_PHONE, ShopTraffic

END = datetime(2026, 3, 1, 12, tzinfo=UTC)
Ident = tuple[str, str]  # (type, normalised value)


def identifiers(ev: dict[str, Any]) -> Iterator[Ident]:
    """An event's identifiers where rules/identity.yaml reads them, normalised as it says (phones as 11 digits,
    openids scoped by the WeChat app id); blocked values included."""
    if ev.get("userId") is not None:
        yield "user_id", ev["userId"]
    if ev.get("anonymousId"):
        yield "anonymous_id", ev["anonymousId"]
    ctx = ev.get("context") or {}
    if (ctx.get("device") or {}).get("id"):
        yield "device_id", ctx["device"]["id"]
    app_id = (ctx.get("wechat") or {}).get("appid")
    for name, value in (ev.get("identities") or {}).items():
        yield name, f"{app_id}:{value}" if name.endswith("openid") else value
    for source in (ev.get("traits") or {}, ctx.get("traits") or {}):
        if source.get("phone"):
            digits = re.sub(r"\D", "", source["phone"])
            yield "phone", digits[2:] if digits.startswith("86") and len(digits) == 13 else digits
        if source.get("email"):
            yield "email", source["email"].lower()


def blocked(ident: Ident) -> bool:
    kind, value = ident
    return ((kind == "user_id" and value in PLACEHOLDER_USER_IDS) or (kind == "phone" and value == TEST_PHONE)
            or (kind == "email" and value.endswith("@example.com")))


def traffic(users: int = 300, days: float = 3, seed: int = 3) -> ShopTraffic:
    return ShopTraffic(users, days, seed, end=END)


@pytest.fixture(scope="module")
def shop() -> ShopTraffic:
    return traffic()


def by_kind(shop: ShopTraffic) -> dict[str, list[dict[str, Any]]]:
    kinds, truth = shop.kinds(), shop.truth()
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ev in shop.events():
        out[kinds[truth[ev["messageId"]]]].append(ev)
    return out


def test_every_kind_of_person_appears(shop):
    assert set(shop.kinds()) == set(PERSON_KINDS)
    assert shop.kinds()[:300] == ["shopper"] * 300
    assert set(by_kind(shop)) == set(PERSON_KINDS)  # and each kind sends events


def test_login_shoppers_browse_anonymously_on_web_and_app_then_log_in_and_buy(shop):
    truth = shop.truth()
    evs = by_kind(shop)["login"]
    per_person: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ev in evs:
        per_person[truth[ev["messageId"]]].append(ev)
    two_devices = buyers_after_anonymous_views = 0
    for person_evs in per_person.values():
        first_login = min((i for i, e in enumerate(person_evs) if "userId" in e), default=len(person_evs))
        before, after = person_evs[:first_login], person_evs[first_login:]
        assert before and all("userId" not in e for e in before)  # anonymous browsing first
        assert after and after[0]["event"] == "login"
        # every anonymousId browsed with is logged in later, with its device's id
        assert {e["anonymousId"] for e in before} <= {e["anonymousId"] for e in after}
        assert {e["context"].get("device", {}).get("id") for e in before} <= \
            {e["context"].get("device", {}).get("id") for e in after}
        anon_ids = {e["anonymousId"] for e in person_evs}
        if len(anon_ids) == 2:
            two_devices += 1
            app = [e for e in person_evs if e["context"]["channel"] == "app"]
            assert len({e["context"]["device"]["id"] for e in app}) == 1
            assert any("userId" in e for e in app)  # logged in in the app too
        if any(e.get("event") == "product_view" for e in before) and \
                any(e.get("event") == "order_paid" for e in after):
            buyers_after_anonymous_views += 1
    assert two_devices >= 5 and buyers_after_anonymous_views >= 5


def test_miniapp_shoppers_have_an_openid_then_a_phone_then_maybe_a_web_order(shop):
    truth = shop.truth()
    evs = by_kind(shop)["miniapp"]
    mini = [e for e in evs if e["context"]["channel"] == "miniapp"]
    assert all("userId" not in e and e["identities"]["miniapp_openid"].startswith("o")
               and e["context"]["wechat"]["appid"] == MINIAPP_APPID for e in mini)
    phones = [e for e in mini if e["type"] == "identify"]
    assert phones and all(set(e["traits"]) == {"phone"} for e in phones)
    assert all(set(e["identities"]) == {"miniapp_openid"} for e in phones)  # the SDK's openid, nothing more
    assert any(e["traits"]["phone"].startswith("+86 ") for e in phones)  # as typed: normalised by the pipeline
    web_orders = [e for e in evs if e["context"]["channel"] == "web" and e.get("event") == "order_paid"]
    assert web_orders and all("userId" in e for e in web_orders)
    identified = {truth[e["messageId"]] for e in phones}
    web_identify = [e for e in evs if e["context"]["channel"] == "web" and e["type"] == "identify"]
    # The web login gives the same number the mini-program identify gave, after it.
    for e in web_identify:
        person = truth[e["messageId"]]
        assert person in identified
        [mini_phone] = {dict(identifiers(m))["phone"] for m in phones if truth[m["messageId"]] == person}
        assert dict(identifiers(e))["phone"] == mini_phone
        assert min(m["timestamp"] for m in phones if truth[m["messageId"]] == person) < e["timestamp"]


def test_a_shared_tablet_carries_two_user_ids_on_one_device_and_blocked_values_several_persons(shop):
    tablet = by_kind(shop)["tablet"]
    users_by_device: dict[str, set[str]] = defaultdict(set)
    for e in tablet:
        users_by_device[e["context"]["device"]["id"]].add(e["userId"])  # every tablet event is logged in
    assert users_by_device and all(len(u) == 2 for u in users_by_device.values())
    blocked_evs = by_kind(shop)["placeholder_user_id"]
    assert {e["userId"] for e in blocked_evs} == set(PLACEHOLDER_USER_IDS)
    assert all(e["anonymousId"] for e in blocked_evs)  # an identifier beside the placeholder: not a bad row
    qa = [e for e in by_kind(shop)["test_phone"] if e["type"] == "identify"]
    assert qa and all(e["traits"] == {"phone": TEST_PHONE} and "userId" not in e for e in qa)


def test_the_same_seed_gives_the_same_traffic_and_truth_and_another_seed_another():
    a, b, c = traffic(seed=5), traffic(seed=5), traffic(seed=6)
    assert a.events() == b.events() and a.truth() == b.truth() and a.kinds() == b.kinds()
    assert a.events() is a.events()  # generated once: truth() speaks of these events
    assert a.events() != c.events()


def test_the_shoppers_traffic_is_the_same_without_the_identity_persons(monkeypatch):
    shoppers = by_kind(traffic(200, 4, seed=9))["shopper"]
    monkeypatch.setattr(ShopTraffic, "_identity_persons", lambda self: iter(()))
    assert traffic(200, 4, seed=9).events() == shoppers


def check_ground_truth(shop: ShopTraffic) -> None:
    """Every event has its person; a person's identifiers (blocked ones and the shared tablets' aside) are all
    connected through that person's own events; no identifier but those is another person's too."""
    events, truth, kinds = shop.events(), shop.truth(), shop.kinds()
    assert set(truth) == {e["messageId"] for e in events} and len(truth) == len(events)
    assert all(0 <= truth[e["messageId"]] < len(kinds) for e in events)
    persons_of: dict[Ident, set[int]] = defaultdict(set)
    for e in events:
        for ident in identifiers(e):
            persons_of[ident].add(truth[e["messageId"]])
    shared = set()
    for ident, persons in persons_of.items():
        if len(persons) > 1 and not blocked(ident):
            assert ident[0] in ("device_id", "anonymous_id"), ident
            assert len(persons) == 2 and {kinds[p] for p in persons} == {"tablet"}, ident
            shared.add(ident)
    # Union-find over the identifiers each event carries together, as resolution would link them.
    parent: dict[Ident, Ident] = {}

    def root(x: Ident) -> Ident:
        while parent.setdefault(x, x) != x:
            x = parent[x] = parent[parent[x]]
        return x

    for e in events:
        ids = [i for i in identifiers(e) if not blocked(i) and i not in shared]
        assert ids, e  # each event keeps an identifier of its own person
        for other in ids[1:]:
            parent[root(other)] = root(ids[0])
    components: dict[int, set[Ident]] = defaultdict(set)
    for ident, persons in persons_of.items():
        if not blocked(ident) and ident not in shared:
            [person] = persons
            components[person].add(root(ident))
    assert all(len(c) == 1 for c in components.values())
    assert len(components) == len({truth[e["messageId"]] for e in events})


def test_ground_truth_is_consistent(shop):
    check_ground_truth(shop)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(users=st.integers(1, 120), days=st.floats(0.5, 6), seed=st.integers(0, 10_000))
def test_ground_truth_is_consistent_for_any_seed_size_and_span(users, days, seed):
    check_ground_truth(traffic(users, days, seed))
