"""Integers past 64 bits keep every digit through the pipeline's JSON reading and writing (core.exact_json)."""

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import exact_json

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)  # JSON text can hold no lone surrogate
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**130), 2**130), st.integers(-(2**64), 2**65),
                     st.floats(allow_nan=False, allow_infinity=False), _text)
_values = st.recursive(_scalars, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(_text, c, max_size=4)),
                       max_leaves=12)


def same(a, b) -> bool:
    """Equal and of the same JSON type all the way down (1 and 1.0 are not the same number here)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@settings(max_examples=500)
@given(_values)
def test_any_json_value_reads_and_writes_as_pythons_own_json_module_does(value):
    # Python's json module keeps integers of any size: the reference for what the text says.
    text = json.dumps(value).encode()
    assert same(exact_json.loads(text), json.loads(text))
    assert same(json.loads(exact_json.dumps(value)), value)


def test_integers_past_64_bits_keep_their_digits_where_orjson_alone_loses_them():
    text = b'{"order_no":123456789012345678901234,"low":-9223372036854775809,"max":18446744073709551615}'
    assert orjson.loads(text)["order_no"] == 1.2345678901234569e23  # what a plain read made of it
    doc = exact_json.loads(text)
    assert doc == {"order_no": 123456789012345678901234, "low": -9223372036854775809, "max": 2**64 - 1}
    assert exact_json.dumps(doc) == text
    # In a string the digits are text already: the same value either way.
    assert exact_json.loads(b'{"phone":"1234567890123456789012"}') == {"phone": "1234567890123456789012"}


def test_what_orjson_refuses_for_another_reason_is_still_refused():
    deep: list = []
    for _ in range(300):
        deep = [deep]
    with pytest.raises(TypeError):
        exact_json.dumps({"n": 2**70, "deep": deep})
    with pytest.raises(orjson.JSONDecodeError):
        exact_json.loads(b'{"n": 123456789012345678901234')
