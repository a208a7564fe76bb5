"""Event-time formatting shared by the core's outputs."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(ms: int) -> str:
    """Milliseconds since the epoch as ISO-8601 UTC with a Z (what actions, bad rows and reasons carry)."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
