"""Sink batches: a partition's consecutive envelopes grouped into one ClickHouse insert, cut where the envelopes
alone say so.

ClickHouse charges about 10 ms per insert whatever its size (a chDB insert of 1,000 rows costs 15 µs of CPU per
row, of 20,000 rows 4 µs; docs/performance.md), so rows are inserted in batches of many envelopes. A batch's
insert deduplication token names its partition and offset range. For a retry after a crash to be skipped by
ClickHouse, the replay must form exactly the same batches: replay starts at the committed offset, which is always
a batch boundary (envelopes are acknowledged only when their batch is done), and every cut is a function of the
envelopes from there on, never of the clock or of state:

- the batch holds ``max_entries`` events or more (counted as sent, before duplicates are dropped), or
- it holds ``max_envelopes`` envelopes (a partition that gets few events still flushes within that many ingest
  batches while others are busy; event time is no measure here: while a backlog is read it runs far ahead of
  the clock), or
- the envelope says ``flush``: the ingest that wrote it had caught up with its input (it marks one at most every
  ``CDP_SINK_FLUSH_MS`` per partition, and sends an empty one when input pauses) or it is a heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class SinkBatch:
    partition: int
    first_offset: int
    last_offset: int
    entries: int = 0
    items: list[Any] = field(default_factory=list)  # one per envelope, in offset order (the adapter's payloads)

    def token(self, topic: str) -> str:
        return f"{topic}:{self.partition}:{self.first_offset}-{self.last_offset}"


class BatchCutter:
    """Open batches, one per partition; ``add`` returns the batch an envelope closed, if any."""

    def __init__(self, max_entries: int = 20_000, max_envelopes: int = 50):
        self.max_entries = max_entries
        self.max_envelopes = max_envelopes
        self.open: dict[int, SinkBatch] = {}

    def add(self, partition: int, offset: int, entries: int, flush: bool, item: Any) -> SinkBatch | None:
        b = self.open.get(partition)
        if b is None:
            b = self.open[partition] = SinkBatch(partition, offset, offset)
        b.last_offset = offset
        b.entries += entries
        b.items.append(item)
        if flush or b.entries >= self.max_entries or len(b.items) >= self.max_envelopes:
            del self.open[partition]
            return b
        return None

    def discard(self, partition: int) -> SinkBatch | None:
        """Forget a partition's open batch (its envelopes were not acknowledged: they will be read again)."""
        return self.open.pop(partition, None)
