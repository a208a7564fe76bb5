"""Event-time formatting shared by the core's outputs."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(ms: int) -> str:
    """Milliseconds since the epoch as ISO-8601 UTC with a Z (what actions, bad rows and reasons carry). Whole
    seconds and milliseconds apart: ``ms / 1000`` as a float is a hair under some values, and the text then said a
    millisecond less (1 in 120 times in the early 1970s; found by a property test)."""
    seconds, millis = divmod(ms, 1000)
    t = datetime.fromtimestamp(seconds, UTC).replace(microsecond=millis * 1000)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
