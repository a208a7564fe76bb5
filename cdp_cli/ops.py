"""Operations the CLI shares: publishing files, waiting until the pipeline has processed everything, reaching
the ClickHouse of a running worker, and running a worker in a child process."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from core.settings import Settings
from streams.kafka import admin_client, client_kwargs, ensure_topics, topic_partitions


def _key_of(line: bytes) -> bytes | None:
    try:
        d = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(d, dict):
        return None
    k = d.get("userId") or d.get("user_id") or d.get("anonymousId") or d.get("anonymous_id")
    return str(k).encode() if k is not None else None


async def publish_lines(s: Settings, lines: list[bytes], topic: str | None = None) -> int:
    """Publish raw lines as they are (bad ones too: that is what the DLQ is for), keyed by the person's id."""
    await ensure_topics(s)
    producer = AIOKafkaProducer(**client_kwargs(s), acks="all", linger_ms=20, max_batch_size=512 * 1024,
                                enable_idempotence=True)
    await producer.start()
    try:
        pending = []
        for line in lines:
            pending.append(await producer.send(topic or s.raw_topic, line, key=_key_of(line)))
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(lines)


def read_lines(path: str) -> list[bytes]:
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    return [ln for ln in data.splitlines() if ln.strip()]


async def end_offsets(s: Settings, topic: str) -> dict[int, int]:
    c = AIOKafkaConsumer(**client_kwargs(s))
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(c, topic)]
        ends = await c.end_offsets(tps) if tps else {}
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await c.stop()


async def committed_offsets(s: Settings, group: str, topic: str) -> dict[int, int]:
    async with admin_client(s) as admin:
        got = await admin.list_consumer_group_offsets(group)
        return {tp.partition: meta.offset for tp, meta in got.items() if tp.topic == topic and meta.offset >= 0}


async def _caught_up(s: Settings, group: str, topic: str, target: dict[int, int]) -> bool:
    done = await committed_offsets(s, group, topic)
    return all(done.get(p, 0) >= off for p, off in target.items() if off > 0)


async def wait_processed(s: Settings, timeout_s: float = 600.0, poll_s: float = 0.25) -> None:
    """Return when everything on the raw topic now has been ingested, and every envelope that came of it (and
    the heartbeats after it, which fire due timers) has been processed, sunk and committed."""
    deadline = time.monotonic() + timeout_s
    raw_end = await end_offsets(s, s.raw_topic)
    while not await _caught_up(s, s.ingest_group, s.raw_topic, raw_end):
        if time.monotonic() > deadline:
            raise TimeoutError("ingest did not catch up with the raw topic")
        await asyncio.sleep(poll_s)
    # Two heartbeats after catching up carry a watermark that has moved past everything read.
    await asyncio.sleep(2 * s.heartbeat_s + 0.2)
    env_end = await end_offsets(s, s.person_events_topic)
    while not await _caught_up(s, s.app_id, s.person_events_topic, env_end):
        if time.monotonic() > deadline:
            raise TimeoutError("the person stage did not catch up")
        await asyncio.sleep(poll_s)


async def read_topic(s: Settings, topic: str) -> list[Any]:
    """Every record on a topic now, from the beginning (no consumer group: nothing is committed)."""
    c = AIOKafkaConsumer(**client_kwargs(s), enable_auto_commit=False)
    await c.start()
    out: list[Any] = []
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(c, topic)]
        if not tps:
            return out
        ends = await c.end_offsets(tps)
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        todo = {tp for tp in tps if ends[tp] > 0}
        while todo:
            for tp, msgs in (await c.getmany(*todo, timeout_ms=1000)).items():
                out.extend(m for m in msgs if m.offset < ends[tp])
                if await c.position(tp) >= ends[tp]:
                    todo.discard(tp)
        return out
    finally:
        await c.stop()


async def dlq_stats(s: Settings) -> dict[tuple[str, str], int]:
    """Bad rows on the DLQ counted by (stage, reason), read from the headers without decoding the rows."""
    counts: dict[tuple[str, str], int] = {}
    for m in await read_topic(s, s.dlq_topic):
        h = dict(m.headers or ())
        k = (h.get("cdp-error-stage", b"?").decode(), h.get("cdp-error-reason", b"?").decode())
        counts[k] = counts.get(k, 0) + 1
    return counts


async def dlq_replay(s: Settings, since: datetime | None = None, reason: str | None = None,
                     stage: str | None = None) -> tuple[int, int]:
    """Publish the original bytes of matching bad rows to the raw topic again (after a rule or schema fix); rows
    that record an envelope or timers that failed (``NOT_EVENTS``) are not events and stay where they are.

    Replaying twice duplicates nothing downstream: the events keep their messageId. Returns (replayed, seen)."""
    from schemas.bad_rows import NOT_EVENTS, BadRow

    records = await read_topic(s, s.dlq_topic)
    producer = AIOKafkaProducer(**client_kwargs(s), acks="all", enable_idempotence=True, linger_ms=10)
    await producer.start()
    replayed = 0
    try:
        futures = []
        for m in records:
            h = dict(m.headers or ())
            if reason and h.get("cdp-error-reason", b"").decode() != reason:
                continue
            if stage and h.get("cdp-error-stage", b"").decode() != stage:
                continue
            row = BadRow.model_validate_json(m.value)
            if row.reason in NOT_EVENTS:  # a record of what failed, not an event
                continue
            if since and datetime.fromisoformat(row.received_at.replace("Z", "+00:00")) < since:
                continue
            headers = [(k, v.encode() if v is not None else None) for k, v in row.headers.items()
                       if not k.startswith("cdp-replayed")]
            headers.append(("cdp-replayed-from", f"{m.topic}:{m.partition}:{m.offset}".encode()))
            futures.append(await producer.send(s.raw_topic, row.original_bytes(), key=m.key, headers=headers))
            replayed += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return replayed, len(records)


def wait_http(url: str, timeout_s: float = 30.0) -> None:
    """Return once ``url`` answers (any status), or raise TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer in {timeout_s}s") from None
            time.sleep(0.2)


def post_json(url: str, body: bytes, write_key: str | None = None, timeout_s: float = 30.0) -> int:
    """POST a JSON body (as an app's SDK would, with the write key as basic auth); the HTTP status."""
    headers = {"Content-Type": "application/json"}
    if write_key is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


# --- a running worker ------------------------------------------------------------------------------------------

def running_worker(s: Settings) -> dict[str, Any] | None:
    """The worker of this deployment (prefix) running on this machine, if it answers."""
    try:
        info = orjson.loads(s.worker_file.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    try:
        os.kill(int(info["pid"]), 0)
    except (ProcessLookupError, PermissionError, KeyError, ValueError):
        return None
    info["health"] = fetch_health(info["url"])
    return info if info["health"] is not None else None


def fetch_health(url: str) -> dict[str, Any] | None:
    """A worker's /healthz, or None when it does not answer."""
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            return orjson.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def worker_query(info: dict[str, Any], sql: str, fmt: str) -> bytes:
    req = urllib.request.Request(info["url"] + "/admin/sql", data=orjson.dumps({"query": sql, "format": fmt}),
                                 headers={"X-CDP-Admin-Token": info["token"], "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(orjson.loads(exc.read()).get("error", str(exc))) from None


def query(s: Settings, sql: str, fmt: str = "TabSeparatedWithNames") -> bytes:
    """Run SQL on the configured ClickHouse: directly, or through the running worker that holds chDB."""
    if s.clickhouse_url.startswith("chdb://"):
        info = running_worker(s)
        if info is not None:
            return worker_query(info, sql, fmt)
    from sinks.clickhouse import ClickHouseSink

    sink = ClickHouseSink(s.clickhouse_url)
    try:
        sink.migrate()
        return sink.query(sql, fmt)
    finally:
        sink.close()


class WorkerProcess:
    """``cdp worker`` in a child process, for replay, the demo, the benchmark and integration tests."""

    def __init__(self, env: dict[str, str] | None = None, log_path: Path | None = None, port: int | None = None):
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.port = port or int(self.env.get("CDP_WEB_PORT", "6066"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.env.get('CDP_WEB_HOST', '127.0.0.1')}:{self.port}"

    def health(self) -> dict[str, Any] | None:
        return fetch_health(self.url)

    def start(self, s: Settings | None = None, timeout_s: float = 90.0) -> None:
        """Start and wait until every role it runs has its partitions."""
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "cdp_cli.main", "worker"], env=self.env,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; log: {self.log_path}")
            h = self.health()
            if h and h.get("ready"):
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"worker not ready in {timeout_s}s; log: {self.log_path}")

    def stop(self, timeout_s: float = 60.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_json_module(module: str, args: list[str]) -> dict[str, Any]:
    """``python -m module args`` in a child process (benchmarks that need their own, e.g. for their own chDB
    database) and the JSON object its last line of output holds."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    return result
