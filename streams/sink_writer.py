"""Inserts that survive ClickHouse's failures: the person stage's sink batches and the feedback agent's rows.

A failure is classified (``sinks.clickhouse.classify``):

- transient (ClickHouse down or unreachable, a timeout, too many parts, memory, a missing table): the same insert,
  same token, after a wait that doubles up to 30 s, for as long as it takes. The caller waits with it, so its
  partition reads nothing new (back-pressure), and nothing is dead-lettered: an outage never costs a good row.
- rejected (ClickHouse refused the data: a value that does not parse as its column's type, a malformed line): the
  batch is halved, each half inserted on its own, and so on down to the single rows it refuses, which come back to
  the caller to dead-letter; the others go in. About two inserts per halving, so about 2·log2(n) per bad row.
- unknown (anything else): retried as a transient one, ``unknown_attempts`` times per call; if it persists it is
  taken as about the rows and the batch halved like a rejected one. A single row failing so is given back only once
  another part of the batch went in after it first failed (ClickHouse took this table's rows meanwhile, so the
  failure is the row's); until then it is retried, with the wait, like an outage. So an unknown failure stalls the
  partition only when no row of the batch goes in at all (every row is poison, or the table cannot take any).

Tokens: the whole batch keeps the caller's token (a replay of an insert that went in adds nothing); a part is
``<token>:<first>-<end>`` (row indexes in the batch). Halving is at fixed points, and ClickHouse refuses the same
data the same way each time, so a replay after a crash forms the same parts and its inserts add nothing either.
The exception: when an unknown failure made the batch split and the replay's whole insert then succeeds, the rows
of parts already in are there twice until the ReplacingMergeTree collapses them (they share their sorting key).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import orjson

from core.clock import iso
from schemas.bad_rows import BadRow, Stage
from sinks.clickhouse import ClickHouseSink, Failure, classify, error_code
from streams import metrics

log = logging.getLogger("cdp.sink")

# ClickHouse's message for a refused row repeats the row's columns: enough of it to see why.
MAX_ERROR_CHARS = 4000


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row ClickHouse refused (``index``: its place in the lines inserted), with its error, and the token of the
    single-row insert that refused it."""

    index: int
    line: bytes
    error: str
    code: int | None
    token: str


@dataclass(slots=True)
class _Part:
    lo: int
    hi: int
    held_at: int | None = None  # parts gone in when this single row first failed for an unknown reason


class SinkWriter:
    def __init__(self, sink: ClickHouseSink, executor: Executor | None = None, base_delay: float = 0.2,
                 max_delay: float = 30.0, unknown_attempts: int = 5):
        self.sink = sink
        self.executor = executor  # None: the loop's default executor
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.unknown_attempts = unknown_attempts

    async def insert(self, table: str, lines: list[bytes], columns: list[str], token: str,
                     **options: Any) -> list[Rejected]:
        """Insert ``lines`` (``ClickHouseSink.insert_json``'s, with its ``options``); return the rows ClickHouse
        refused. Returns once every other row is in."""
        if not lines:
            return []
        n = len(lines)
        parts: deque[_Part] = deque([_Part(0, n)])
        rejected: list[Rejected] = []
        went_in = 0  # parts inserted by this call
        unknown_left = self.unknown_attempts
        delay = self.base_delay
        while parts:
            part = parts.popleft()
            part_token = token if part.hi - part.lo == n else f"{token}:{part.lo}-{part.hi}"
            try:
                await self._insert(table, lines[part.lo:part.hi], columns, part_token, options)
            except Exception as exc:
                kind = classify(exc)
                if kind is Failure.transient or (kind is Failure.unknown and unknown_left > 0):
                    if kind is Failure.unknown:
                        unknown_left -= 1
                    log.warning("ClickHouse insert into %s failed (%s), retrying in %.1fs: %r", table, kind.value,
                                delay, exc)
                    delay = await self._wait(table, kind, delay)
                    parts.appendleft(part)
                elif part.hi - part.lo > 1:
                    mid = (part.lo + part.hi) // 2
                    metrics.sink_retries.labels(table, kind.value).inc()
                    parts.extendleft((_Part(mid, part.hi), _Part(part.lo, mid)))
                elif kind is Failure.rejected or (part.held_at is not None and went_in > part.held_at):
                    log.error("ClickHouse refused a row of %s (insert %s, code %s): dead-lettered", table,
                              part_token, error_code(exc))
                    rejected.append(Rejected(part.lo, lines[part.lo], str(exc)[:MAX_ERROR_CHARS], error_code(exc),
                                             part_token))
                else:
                    if part.held_at is not None and all(p.held_at is not None for p in parts):
                        # Nothing else of the batch to try: no row goes in, which may be an outage.
                        log.error("ClickHouse insert into %s keeps failing (%r): retrying in %.1fs", table, exc,
                                  delay)
                        delay = await self._wait(table, kind, delay)
                    parts.append(_Part(part.lo, part.hi, went_in if part.held_at is None else part.held_at))
            else:
                went_in += 1
                delay = self.base_delay
        return rejected

    async def _wait(self, table: str, kind: Failure, delay: float) -> float:
        """Count a retry, wait ``delay``; the next wait (doubled, at most ``max_delay``)."""
        metrics.sink_retries.labels(table, kind.value).inc()
        await asyncio.sleep(delay)
        return min(delay * 2, self.max_delay)

    async def _insert(self, table: str, lines: list[bytes], columns: list[str], token: str,
                      options: dict[str, Any]) -> None:
        def run() -> None:
            with metrics.sink_seconds.labels(table).time():
                self.sink.insert_json(table, lines, columns, token=token, **options)

        await asyncio.get_running_loop().run_in_executor(self.executor, run)


def rejected_bad_row(r: Rejected, table: str, now_ms: int, key: bytes | None = None,
                     **source: Any) -> tuple[bytes | None, BadRow]:
    """The dead-letter record of a refused row: the row as it was inserted, ClickHouse's error, the table and the
    insert (``source``: more of where it came from). Not an event: ``cdp dlq replay`` leaves it."""
    error: dict[str, Any] = {"field": "$", "error": r.error}
    if r.code is not None:
        error["code"] = r.code
    return key, BadRow.of(r.line, Stage.sink, "sink_rejected", [error], iso(now_ms),
                          source={"table": table, "insert": r.token, **source})


def row_fields(line: bytes, columns: list[str]) -> dict[str, Any]:
    """The fields of a JSON row (an array in ``columns``' order, or an object) by name; empty when it cannot be
    read (a refused row may be malformed)."""
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(row, list):
        return dict(zip(columns, row, strict=False))
    return row if isinstance(row, dict) else {}

