"""``cdp bench``: the whole pipeline's rate against plain aiokafka's consume rate, measured in the same run.

Both rates read the same events from the same local broker, so the ratio holds on a noisy, shared machine where
absolute figures do not. The pipeline rate is end to end: from the worker's first raw read to the last event
row inserted into ClickHouse, as the worker itself clocks them; the run checks every event arrived exactly once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from cdp_cli.generate import generate
from cdp_cli.ops import WorkerProcess, publish_lines, query, running_worker
from core.settings import Settings
from streams.kafka import client_kwargs, topic_partitions


def bench_events(n: int, users: int, seed: int = 42) -> list[bytes]:
    out: list[bytes] = []
    days = 1.0
    while len(out) < n:
        out = [orjson.dumps(e) for e in generate(users, days, seed)]
        days *= 2
    return out[:n]


async def raw_consume_rate(s: Settings, topic: str, n: int) -> float:
    """Plain aiokafka: ``getmany`` batches and ``orjson.loads`` of every value, no group, from the start."""
    c = AIOKafkaConsumer(**client_kwargs(s), enable_auto_commit=False, fetch_max_bytes=64 * 1024 * 1024,
                         max_partition_fetch_bytes=8 * 1024 * 1024)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(c, topic)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        got = 0
        t0 = time.perf_counter()
        while got < n:
            batches = await c.getmany(timeout_ms=1000, max_records=10000)
            for msgs in batches.values():
                for m in msgs:
                    orjson.loads(m.value)
                got += len(msgs)
        return n / (time.perf_counter() - t0)
    finally:
        await c.stop()


def faust_agent_rate(s: Settings, topic: str, n: int, datadir: Path) -> int | None:
    """Events/s of a Faust agent that does nothing over the same topic (the cost the design avoids)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "cdp_cli.bench_faust", topic, str(n), s.kafka_bootstrap, str(s.web_port + 1),
           str(datadir)]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=180).stdout
        for line in out.decode().splitlines():
            if line.startswith("{"):
                return int(orjson.loads(line)["faust_agent_eps"])
    except subprocess.TimeoutExpired:
        pass
    return None


def run_bench(events: int = 200_000, users: int = 20_000, keep: bool = False,
              faust_baseline: bool = False) -> dict[str, Any]:
    base = Settings()
    prefix = f"bench{int(time.time())}"
    tmp = Path(tempfile.mkdtemp(prefix="cdp-bench-"))
    env = {"CDP_TOPIC_PREFIX": prefix, "CDP_CLICKHOUSE_URL": f"chdb://{tmp / 'clickhouse'}",
           "CDP_DATA_DIR": str(tmp), "CDP_WEB_PORT": str(base.web_port + 17), "CDP_LOG_LEVEL": "WARNING"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        s = Settings()
        lines = bench_events(events, users)
        asyncio.run(publish_lines(s, lines))
        raw_eps = asyncio.run(raw_consume_rate(s, s.raw_topic, len(lines)))
        with WorkerProcess(log_path=tmp / "worker.log") as w:
            w.start(s)
            deadline = time.monotonic() + 900
            health: dict[str, Any] = {}
            while time.monotonic() < deadline:
                info = running_worker(s)
                health = info["health"] if info else {}
                if health and health["persons"]["events_sunk"] >= len(lines):
                    break
                time.sleep(0.2)
            else:
                raise TimeoutError(f"pipeline did not sink {len(lines)} events; log {tmp / 'worker.log'}")
            counted = int(query(s, "SELECT count() FROM cdp.events", "TabSeparated").strip())
            unique = int(query(s, "SELECT uniqExact(message_id) FROM cdp.events", "TabSeparated").strip())
        elapsed = health["persons"]["last_sunk_at"] - health["ingest"]["first_event_at"]
        pipeline_eps = len(lines) / elapsed
        extra: dict[str, Any] = {}
        if faust_baseline:
            n = min(len(lines), 50_000)
            rate = faust_agent_rate(s, s.raw_topic, n, tmp / "faust-baseline")
            extra = {"faust_noop_agent_eps": rate, "faust_noop_ratio": round(rate / raw_eps, 3) if rate else None}
        return {
            "events": len(lines),
            "raw_consume_eps": round(raw_eps),
            "pipeline_eps": round(pipeline_eps),
            "ratio": round(pipeline_eps / raw_eps, 3),
            "events_in_clickhouse": counted,
            "unique_in_clickhouse": unique,
            "envelopes": health["persons"]["envelopes"],
            "partitions": s.partitions,
            **extra,
        }
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
