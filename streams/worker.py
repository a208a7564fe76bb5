"""The worker process: what `cdp worker` starts (topics, schema, the Faust app with this process's roles)."""

from __future__ import annotations

import asyncio
import gc
import logging

import faust

from config.settings import Settings
from sinks.clickhouse import ClickHouseSink
from streams.app import build_pipeline
from streams.kafka import ensure_topics, sync_salt


def run_worker(s: Settings) -> None:
    """``cdp worker``: the topics, the ClickHouse schema (person-stage workers), then Faust's worker until stopped."""
    logging.basicConfig(level=s.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(ensure_topics(s))
    sync_salt(s)  # the deployment's salt (CDP_PII_SALT, else the one its first worker made), before any hash
    sink = None
    if s.runs_persons:  # ingest-only workers hold no ClickHouse (so they can run beside an embedded one)
        sink = ClickHouseSink(s.clickhouse_url, insert_clients=s.sink_insert_threads)
        sink.migrate()
    asyncio.set_event_loop(asyncio.new_event_loop())
    pipeline = build_pipeline(s, sink=sink)
    # Every event allocates a few dozen short-lived objects; with the default thresholds the cyclic collector
    # ran every ~30 events and re-scanned the long-lived ones (Faust, rules, state) each time. Freeze what
    # start-up made, and collect the young generation every 50,000 allocations (docs/performance.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    _keep_freed_heap()
    worker = faust.Worker(pipeline.app, loglevel=s.log_level, quiet=True, redirect_stdouts=False)
    # Faust's terminal spinner sets the root logger to DEBUG (to spin at every message), so every debug call in
    # aiokafka and Faust builds a log record: a few per Kafka request and message. No spinner: CDP_LOG_LEVEL holds.
    worker.spinner = None
    worker.execute_from_commandline()


def _keep_freed_heap() -> None:
    """Keep freed memory in the process instead of handing it back to the OS at once (glibc only).

    orjson sizes every output buffer at 1 KB or more, so each encoded row, meta or state it returns comes from
    malloc, not Python's small-object pools; with glibc's default 128 KB trim threshold the heap top was returned
    and faulted back in continually: 1.8 µs per kept ``orjson.dumps`` result against 0.05 µs with these settings
    (docs/performance.md). Memory then stays at its high-water mark, which a worker reaches within seconds anyway;
    large blocks (envelopes, fetched record batches, insert blocks) are reused from the heap too.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return
    if mallopt is not None:
        m_trim_threshold, m_top_pad = -1, -2
        mallopt(m_trim_threshold, 256 * 1024 * 1024)
        mallopt(m_top_pad, 16 * 1024 * 1024)
        # Setting those fixes glibc's mmap threshold at 128 KB, so every envelope (up to 700 KB), fetch buffer and
        # insert block was a fresh mmap, faulted in page by page and unmapped when freed: the heap instead (32 MB
        # is glibc's maximum). System time of the workers 0.4-0.45 → 0.2-0.25 s per 200,000 events, measured.
        m_mmap_threshold = -3
        mallopt(m_mmap_threshold, 32 * 1024 * 1024)


