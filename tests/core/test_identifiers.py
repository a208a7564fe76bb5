"""An event's identifiers, as the identity rules read, normalise, refuse and order them."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.identifiers import event_identifiers, extract_identifiers, raw_identifiers
from core.ids import identifier_hash, mask
from core.normalize import PLACEHOLDERS, clean_event
from tests.core.helpers import RULES

ID = RULES.identity
SALT = "pepper"


def _at(path: str, value: Any) -> dict[str, Any]:
    """An event holding ``value`` at the dotted ``path``."""
    ev: dict[str, Any] = {"type": "track", "message_id": "m1", "event": "x"}
    node = ev
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return ev


# Values every type's normalisation keeps as they are, and no type blocks.
VALUE = {"phone": "13800138000", "email": "ann@shop.cn"}


@pytest.mark.parametrize("id_type, path", [(name, path) for name, t in ID.types.items() for path in t.read_from])
def test_every_read_from_path_of_every_type_is_read(id_type, path):
    value = VALUE.get(id_type, "v-42")
    assert raw_identifiers(_at(path, value), ID) == [(id_type, value)]
    [(t, h, masked)] = extract_identifiers(_at(path, value), ID, SALT)
    assert (t, h, masked) == (id_type, identifier_hash(SALT, id_type, value), mask(id_type, value))


def test_the_default_paths_are_the_designs():
    assert {name: t.read_from for name, t in ID.types.items()} == {
        "user_id": ("user_id",), "crm_id": ("identities.crm_id",),
        "phone": ("identities.phone", "traits.phone", "context.traits.phone"),
        "email": ("identities.email", "traits.email", "context.traits.email"),
        "wechat_unionid": ("identities.wechat_unionid",), "miniapp_openid": ("identities.miniapp_openid",),
        "wechat_openid": ("identities.wechat_openid",), "device_id": ("identities.device_id", "context.device.id"),
        "anonymous_id": ("anonymous_id", "previous_id")}


def test_segment_external_ids_are_read_through_the_mapping_of_their_types():
    ev = _at("context.externalIds", [
        {"id": "C-7", "type": "crm_id", "collection": "users", "encoding": "none"},
        {"id": "un-1", "type": "unionid", "collection": "users", "encoding": "none"},
        {"id": "+86 138 0013 8000", "type": "phone", "collection": "users", "encoding": "none"},
        {"id": "x-1", "type": "ga_client_id", "collection": "users", "encoding": "none"},  # not mapped: not read
        {"type": "crm_id"}, "not an object", {"id": {"nested": 1}, "type": "crm_id"},  # nothing to read
    ])
    assert raw_identifiers(ev, ID) == [("crm_id", "C-7"), ("phone", "13800138000"), ("wechat_unionid", "un-1")]
    assert event_identifiers(ev, ID, SALT)[1]  # read from outside userId/anonymousId: the body must travel


def test_a_segment_identify_gives_its_traits_email_and_phone():
    ev = {"type": "identify", "message_id": "m1", "user_id": "u1", "anonymous_id": "a1",
          "traits": {"email": " Ann@Shop.CN ", "phone": "+86 138-0013-8000", "name": "Ann"},
          "context": {"traits": {"email": "ann@work.cn"}}}
    assert raw_identifiers(ev, ID, SALT) == [("user_id", "u1"), ("phone", "13800138000"),
                                             *sorted([("email", "ann@shop.cn"), ("email", "ann@work.cn")],
                                                     key=lambda tv: identifier_hash(SALT, *tv)),
                                             ("anonymous_id", "a1")]


@pytest.mark.parametrize("placeholder", [*sorted(PLACEHOLDERS - {""}), "  NULL ", "Undefined"])
def test_a_placeholder_is_never_an_identifier_and_the_others_stay(placeholder):
    ev = {"user_id": placeholder, "anonymous_id": "a1", "identities": {"phone": placeholder, "device_id": placeholder},
          "traits": {"email": placeholder}, "context": {"device": {"id": placeholder}}}
    assert raw_identifiers(ev, ID) == [("anonymous_id", "a1")]


def test_blocked_values_and_patterns_are_no_identifiers_and_are_counted():
    ev = {"user_id": "test",  # events.yaml's "any"
          "identities": {"phone": "13800000000",  # events.yaml's phone list
                         "email": "someone@example.com",  # the email type's pattern
                         "device_id": "00000000-0000"},  # the device type's pattern
          "traits": {"phone": "11111111111"},  # one digit repeated
          "context": {"device": {"id": "9774d56d682e549c"}},  # the device type's list
          "anonymous_id": "a1"}
    dropped: Counter[str] = Counter()
    ids, _ = event_identifiers(ev, ID, SALT, dropped)
    assert [t for t, _, _ in ids] == ["anonymous_id"]
    assert dropped == Counter({"user_id": 1, "phone": 2, "email": 1, "device_id": 2})


def test_malformed_phones_and_emails_and_values_that_are_not_text_are_left_out():
    ev = {"user_id": "u1", "traits": {"phone": "12345", "email": "not-an-email"},
          "identities": {"device_id": ["d1"]}, "context": {"device": {"id": True}, "traits": {"email": 3.5}}}
    assert raw_identifiers(ev, ID) == [("user_id", "u1")]


def test_a_numeric_value_is_its_digits():
    assert raw_identifiers(_at("traits.phone", 13800138000), ID) == [("phone", "13800138000")]
    assert raw_identifiers(_at("context.device.id", 42), ID) == [("device_id", "42")]


def test_an_openid_is_scoped_by_the_events_wechat_app_once_and_unscoped_without_one():
    ev = {"type": "track", "message_id": "m1", "event": "x", "context": {"wechat": {"appid": "wx9"}},
          "identities": {"wechat_openid": "o-1", "miniapp_openid": "mo-1"}}
    want = [("miniapp_openid", "wx9:mo-1"), ("wechat_openid", "wx9:o-1")]
    assert raw_identifiers(ev, ID) == want
    # The ingest's cleaning scopes them in the event first: extracting from the cleaned event scopes nothing twice.
    clean_event(ev, ID, Counter())
    assert ev["identities"] == {"wechat_openid": "wx9:o-1", "miniapp_openid": "wx9:mo-1"}
    assert raw_identifiers(ev, ID) == want
    assert raw_identifiers({"identities": {"wechat_openid": "o-1", "wechat_appid": "wx7"}}, ID) == [
        ("wechat_openid", "wx7:o-1")]
    assert raw_identifiers({"identities": {"wechat_openid": "o-1"}}, ID) == [("wechat_openid", "o-1")]
    # A placeholder app id is no app: nothing is scoped by "0".
    assert raw_identifiers({"identities": {"wechat_openid": "o-1"}, "context": {"wechat": {"appid": "0"}}}, ID) == [
        ("wechat_openid", "o-1")]


def test_identifiers_are_ordered_by_priority_then_hash_one_per_type_and_value():
    ev = {"user_id": "u1", "anonymous_id": "a1", "previous_id": "a0",
          "identities": {"phone": "13800138000", "email": "b@shop.cn", "device_id": "d1"},
          "traits": {"phone": "+86 13800138000", "email": "a@shop.cn"}, "context": {"device": {"id": "d1"}}}
    ids = extract_identifiers(ev, ID, SALT)
    assert [t for t, _, _ in ids] == ["user_id", "phone", "email", "email", "device_id", "anonymous_id",
                                      "anonymous_id"]
    assert ids == sorted(ids, key=lambda i: (-ID.priority(i[0]), i[1]))
    assert [(t, identifier_hash(SALT, t, v)) for t, v in raw_identifiers(ev, ID, SALT)] == [(t, h) for t, h, _ in ids]
    # The primary is the strongest: the user id, whatever the order of the event's fields.
    assert ids[0] == ("user_id", identifier_hash(SALT, "user_id", "u1"), "u***")


def test_an_event_whose_identifiers_are_its_user_id_and_anonymous_id_needs_no_body():
    ev = {"type": "track", "message_id": "m1", "event": "x", "user_id": "u1", "anonymous_id": "a1"}
    ids, more = event_identifiers(ev, ID, SALT)
    assert len(ids) == 2 and not more
    assert event_identifiers({**ev, "previous_id": "a0"}, ID, SALT)[1]


def test_the_salt_changes_every_hash_and_only_the_hash():
    ev = {"user_id": "u1", "identities": {"phone": "13800138000"}}
    a, b = extract_identifiers(ev, ID, ""), extract_identifiers(ev, ID, SALT)
    assert {t for t, _, _ in a} == {t for t, _, _ in b} and {m for _, _, m in a} == {m for _, _, m in b}
    assert not {h for _, h, _ in a} & {h for _, h, _ in b}


texts = st.one_of(st.sampled_from(["", "null", "0", "u1", "13800138000", "+86 138 0013 8001", "A@B.CN", "test",
                                   "d1", "00000000-0000-0000-0000-000000000000"]), st.text(max_size=12))
values = st.one_of(texts, st.integers(), st.none(), st.booleans(), st.lists(texts, max_size=2))
events = st.fixed_dictionaries({}, optional={
    "user_id": texts, "anonymous_id": texts, "previous_id": texts,
    # Text, as the schema gives them (traits and context may hold anything).
    "identities": st.dictionaries(st.sampled_from(["phone", "email", "device_id", "crm_id", "wechat_openid", "x"]),
                                  texts, max_size=4),
    "traits": st.dictionaries(st.sampled_from(["phone", "email", "name"]), values, max_size=3),
    "context": st.fixed_dictionaries({}, optional={
        "device": st.fixed_dictionaries({}, optional={"id": values}),
        "traits": st.dictionaries(st.sampled_from(["phone", "email"]), values, max_size=2),
        "wechat": st.fixed_dictionaries({}, optional={"appid": texts}),
        "externalIds": st.lists(st.fixed_dictionaries({"id": values, "type": st.sampled_from(
            ["crm_id", "phone", "email", "unionid", "other"])}), max_size=3)}),
})


@settings(max_examples=400)
@given(events)
def test_identifiers_are_unique_ordered_normalised_and_the_same_after_the_ingests_cleaning(ev):
    ids = extract_identifiers(ev, ID, SALT)
    assert len({(t, h) for t, h, _ in ids}) == len(ids)
    assert ids == sorted(ids, key=lambda i: (-ID.priority(i[0]), i[1]))
    raw = raw_identifiers(ev, ID, SALT)
    assert [(t, identifier_hash(SALT, t, v), mask(t, v)) for t, v in raw] == ids
    for t, v in raw:
        assert v == v.strip() and v.lower() not in PLACEHOLDERS and not ID.is_blocked(t, v)
    # Cleaning normalises the event's own fields in place, as these values: extracting again gives the same.
    cleaned = {k: (dict(v) if isinstance(v, dict) else v) for k, v in ev.items()}
    clean_event(cleaned, ID, Counter())
    assert extract_identifiers(cleaned, ID, SALT) == ids
