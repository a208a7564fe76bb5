"""The stored person state: a versioned msgpack map with named fields, defaults left out, older layouts read."""

from __future__ import annotations

import msgspec
import orjson
import pytest

from core.person import apply_events
from core.person_state import STATE_VERSION, NewerStateError, Pending, PersonState
from tests.core.helpers import RULES, T0, entry, identify


def lived() -> PersonState:
    st = PersonState.new("o_0123456789abcdef01234567")
    apply_events(st, [identify(T0 - 1000, "id1", "13800138000"), entry("add_to_cart", T0, "m1"),
                      entry("product_view", T0 + 5, "m2")], RULES)
    st.fired["cart_not_paid_sms"] = T0 - 86_400_000
    st.absorbed = ["o_aaaaaaaaaaaaaaaaaaaaaaaa"]
    return st


def legacy_bytes(state: PersonState, version: int, key: str = "user_id:u1") -> bytes:
    """``state`` as a worker of ``version`` (1 to 3) wrote it: an object (1), an array in field order (2; 3
    added contacts_at)."""
    pending = {r: (p.since, p.deadline, p.message_id) for r, p in state.pending.items()}
    if version == 1:
        return orjson.dumps({
            "v": 1, "oneid": state.oneid, "key": key, "n": state.n_events, "first": state.first_ts,
            "last": state.last_ts, "counts": state.counts, "last_seen": state.last_seen, "contacts": state.contacts,
            "seen": state.seen, "pending": pending, "fired": state.fired})
    fields = [version, state.oneid, key, state.n_events, state.first_ts, state.last_ts, state.counts,
              state.last_seen, state.contacts, state.seen, pending, state.fired]
    return orjson.dumps(fields if version == 2 else [*fields, state.contacts_at])


def test_a_state_is_a_map_of_named_fields_with_its_version_and_without_its_defaults():
    st = lived()
    assert PersonState.from_bytes(st.to_bytes()) == st
    stored = msgspec.msgpack.decode(st.to_bytes())
    assert stored["v"] == STATE_VERSION == 4 and stored["oneid"] == st.oneid and stored["n_events"] == 3
    assert stored["pending"] == {"cart_not_paid_sms": {"since": T0, "deadline": T0 + 3_600_000, "message_id": "m1"}}
    assert "merged_into" not in stored  # a default is left out
    assert msgspec.msgpack.decode(PersonState.new("o_x").to_bytes()) == {"v": STATE_VERSION, "oneid": "o_x"}


def test_new_takes_the_oneid_and_a_pointer_keeps_where_it_points():
    assert PersonState.new("o_x") == PersonState(oneid="o_x")
    pointer = PersonState(oneid="o_x", merged_into="o_y")
    assert PersonState.from_bytes(pointer.to_bytes()).merged_into == "o_y"


def test_a_field_added_with_a_default_needs_no_new_version():
    """A newer writer's extra field is skipped; a field this reader knows and a state lacks takes its default."""
    with_extra = msgspec.msgpack.encode({"v": STATE_VERSION, "oneid": "o_x", "n_events": 2, "tags": ["vip"]})
    assert PersonState.from_bytes(with_extra) == PersonState(oneid="o_x", n_events=2)
    assert PersonState.from_bytes(msgspec.msgpack.encode({"v": STATE_VERSION, "oneid": "o_x"})).absorbed == []


def test_a_state_of_a_newer_version_is_refused_by_name():
    newer = msgspec.msgpack.encode({"v": STATE_VERSION + 1, "oneid": "o_x"})
    with pytest.raises(NewerStateError, match=f"version {STATE_VERSION + 1}"):
        PersonState.from_bytes(newer)
    with pytest.raises(msgspec.ValidationError):  # a state of this version that is wrong is not "newer"
        PersonState.from_bytes(msgspec.msgpack.encode({"v": STATE_VERSION, "oneid": 3}))


@pytest.mark.parametrize("version", [1, 2, 3])
def test_the_json_layouts_of_versions_1_to_3_still_read(version):
    st = lived()
    st.absorbed = []  # they had none
    old = PersonState.from_bytes(legacy_bytes(st, version))
    if version < 3:  # they kept no time for a contact
        assert old.contacts_at == {}
        old.contacts_at = st.contacts_at
    assert old == st and old.pending == {"cart_not_paid_sms": Pending(T0, T0 + 3_600_000, "m1")}
    assert PersonState.from_bytes(old.to_bytes()) == old  # written again in the current layout
