"""Event-time bookkeeping for timers (pure): watermarks per partition and a due-time queue.

A partition's watermark is the least of the watermarks its ingest sources last sent; a source that has said
nothing for ``source_timeout_ms`` (it stopped, or lost its raw partitions to another) no longer holds time back.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


@dataclass
class WatermarkTracker:
    source_timeout_ms: int = 30_000
    # partition -> source -> (watermark, wall-clock ms it was received)
    _marks: dict[int, dict[str, tuple[int, int]]] = field(default_factory=dict)

    def update(self, partition: int, source: str, watermark: int, now_ms: int) -> int:
        marks = self._marks.setdefault(partition, {})
        prev = marks.get(source)
        marks[source] = (max(watermark, prev[0]) if prev else watermark, now_ms)
        return self.current(partition, now_ms)

    def current(self, partition: int, now_ms: int) -> int:
        marks = self._marks.get(partition, {})
        live = [wm for wm, seen in marks.values() if now_ms - seen <= self.source_timeout_ms]
        if not live:  # everyone went quiet: keep the last known progress rather than move back
            live = [max((wm for wm, _ in marks.values()), default=0)]
        return min(live)


@dataclass
class TimerQueue:
    """Due times per partition; entries may be stale (the person's state is the truth, checked when popped)."""

    _heaps: dict[int, list[tuple[int, str]]] = field(default_factory=dict)

    def schedule(self, partition: int, due: int, key: str) -> None:
        heapq.heappush(self._heaps.setdefault(partition, []), (due, key))

    def pop_due(self, partition: int, watermark: int) -> list[str]:
        heap = self._heaps.get(partition)
        keys: list[str] = []
        while heap and heap[0][0] <= watermark:
            keys.append(heapq.heappop(heap)[1])
        return list(dict.fromkeys(keys))

    def clear(self, partition: int | None = None) -> None:
        if partition is None:
            self._heaps.clear()
        else:
            self._heaps.pop(partition, None)

    def __len__(self) -> int:
        return sum(len(h) for h in self._heaps.values())
