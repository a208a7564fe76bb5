"""Integers of any size, as JSON allows them, kept to the digit.

orjson, the pipeline's JSON codec, stops at 64 bits: it reads a larger integer as a float (its last digits lost,
silently) and refuses to write one. Apps do send such numbers: order numbers, 128-bit ids written as numbers. Both
ways in (the HTTP collector and the raw topic) carry them exactly, into the envelope and the ClickHouse row, with
these helpers; events without them stay on orjson's path and pay nothing more.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

# The integers orjson reads and writes as integers.
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1

# Every digit to "0" and every other byte to ".": an integer outside orjson's range has at least 19 digits.
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x2E for b in range(256))
_LONG_DIGIT_RUN = b"0" * 19


def loads(raw: bytes) -> Any:
    """``orjson.loads`` (and its errors), except that integers past 64 bits are read as integers."""
    doc = orjson.loads(raw)
    if _LONG_DIGIT_RUN in raw.translate(_DIGITS_AS_ZERO):
        # 19 digits or more somewhere (perhaps only inside a string): read again by a parser that keeps integers
        # whole. orjson accepted the text, so this one reads it the same way, unless it is nested past this
        # parser's limit; then orjson's reading stands (and anything nested that deep is refused when written).
        try:
            return msgspec.json.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            return doc
    return doc


def with_exact_integers(value: Any) -> Any:
    """``value`` with every integer past 64 bits as its digits (an ``orjson.Fragment``), which orjson writes."""
    if isinstance(value, dict):
        return {k: with_exact_integers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [with_exact_integers(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
        return orjson.Fragment(str(value).encode())
    return value


def dumps(value: Any) -> bytes:
    """``orjson.dumps`` (and its errors), except that integers past 64 bits are written with all their digits."""
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        try:
            exact = with_exact_integers(value)
        except RecursionError:
            raise exc from None
        return orjson.dumps(exact)
