"""Identity merges for the analytics tests: rows for cdp.identity_merges and their brute-force resolution."""

from __future__ import annotations

import orjson

MERGE_COLUMNS = ["from_oneid", "into_oneid", "at", "reason", "op"]
T1, T2, T3 = "2026-01-01 10:00:00.000", "2026-01-02 10:00:00.000", "2026-01-03 10:00:00.000"


def merge_plan(oneids: list[str], pairs: int) -> list[tuple[str, str, str, str]]:
    """(from, into, at, op) rows over distinct persons: a chain A -> B -> C, a merge undone by a split, a split
    in the middle of a chain (B leaves C: A stays with B), a re-pointed merge (latest row wins), a split with no
    merge to undo (no effect), then plain pairs."""
    assert len(oneids) >= 14 + 2 * pairs
    o = oneids
    plan = [
        (o[0], o[1], T1, "merge"), (o[1], o[2], T2, "merge"),                     # chain: o0, o1 -> o2
        (o[3], o[4], T1, "merge"), (o[3], o[4], T2, "split"),                     # undone: o3 alone
        (o[5], o[6], T1, "merge"), (o[6], o[7], T1, "merge"), (o[6], o[7], T3, "split"),  # o5 -> o6, o6 alone
        (o[8], o[9], T1, "merge"), (o[8], o[10], T2, "merge"),                    # re-pointed: o8 -> o10
        (o[11], o[12], T1, "merge"), (o[12], o[13], T2, "merge"), (o[13], o[11], T1, "split"),  # o11, o12 -> o13
    ]
    for i in range(pairs):
        plan.append((o[14 + 2 * i], o[15 + 2 * i], T1, "merge"))
    return plan


def merge_lines(plan: list[tuple[str, str, str, str]]) -> list[bytes]:
    return [orjson.dumps({"from_oneid": f, "into_oneid": i, "at": at, "reason": "test", "op": op})
            for f, i, at, op in plan]


def resolver(plan: list[tuple[str, str, str, str]]) -> dict[str, str]:
    """OneID -> current surviving OneID, computed the obvious way: the latest row per from_oneid is its state;
    follow merges to the end of the chain."""
    latest: dict[str, tuple[str, str, str]] = {}
    for f, into, at, op in plan:
        if f not in latest or at > latest[f][0]:
            latest[f] = (at, into, op)
    edges = {f: into for f, (_, into, op) in latest.items() if op == "merge"}
    out = {}
    for f in edges:
        x, seen = f, {f}
        while x in edges and edges[x] not in seen:
            x = edges[x]
            seen.add(x)
        out[f] = x
    return out
