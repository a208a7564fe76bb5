"""Sink batches are cut where the envelopes alone say, so a replay from any batch boundary forms the same batches
(and ClickHouse recognises a retried insert by its token)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from core.batching import BatchCutter

# (entries, flush) per envelope of one partition, offsets 0..n-1
envelopes = st.lists(st.tuples(st.integers(0, 40), st.booleans()), max_size=60)


def cut(envs: list[tuple[int, bool]], start: int = 0, max_entries: int = 50, max_envelopes: int = 5):
    c = BatchCutter(max_entries, max_envelopes)
    out = []
    for off in range(start, len(envs)):
        entries, flush = envs[off]
        b = c.add(0, off, entries, flush, off)
        if b is not None:
            out.append((b.first_offset, b.last_offset, b.entries, b.items, b.token("t")))
    return out, c.open.get(0)


@given(envelopes)
def test_a_replay_from_any_boundary_forms_the_same_batches(envs):
    first, _ = cut(envs)
    for i, (start, *_rest) in enumerate(first):
        again, _ = cut(envs, start)
        assert again == first[i:]


@given(envelopes)
def test_batches_are_bounded_consecutive_and_lose_nothing(envs):
    batches, still_open = cut(envs)
    covered = [o for b in batches for o in b[3]] + (still_open.items if still_open else [])
    assert covered == list(range(len(envs)))  # every envelope once, in order
    for first, last, entries, items, token in batches:
        assert items == list(range(first, last + 1)) and token == f"t:0:{first}-{last}"
        assert len(items) <= 5
        # Closed by its last envelope: a flush, the row bound or the envelope bound, and not before.
        assert envs[last][1] or entries >= 50 or len(items) == 5
        assert not any(envs[o][1] for o in items[:-1])


def test_partitions_batch_apart():
    c = BatchCutter(100, 10)
    assert c.add(0, 7, 10, False, "a") is None
    assert c.add(1, 3, 10, False, "b") is None
    b = c.add(0, 8, 5, True, "c")
    assert b is not None and (b.partition, b.first_offset, b.last_offset, b.items) == (0, 7, 8, ["a", "c"])
    assert c.discard(1) is not None and c.open == {}
