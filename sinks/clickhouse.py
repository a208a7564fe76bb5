"""One ClickHouse client for an embedded chDB path or a server URL, the DDL, and idempotent batch inserts.

``CDP_CLICKHOUSE_URL``: ``chdb://.local/clickhouse`` (relative or absolute path: embedded, one process per path)
or ``http(s)://user:pass@host:8123/db`` (a server).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

DATABASE = "cdp"

# Deduplicating inserts: a retried batch with the same token inserts nothing the second time
# (non_replicated_deduplication_window makes that work on plain MergeTree tables).
_TABLE_SETTINGS = "SETTINGS non_replicated_deduplication_window = 10000"

DDL = [
    f"CREATE DATABASE IF NOT EXISTS {DATABASE}",
    f"""CREATE TABLE IF NOT EXISTS {DATABASE}.events (
        message_id String,
        oneid String,
        type LowCardinality(String),
        event LowCardinality(String),
        name String,
        ts DateTime64(3, 'UTC'),
        received_at DateTime64(3, 'UTC'),
        properties String,
        identities Map(String, String),
        raw_partition UInt32,
        raw_offset UInt64
    ) ENGINE = ReplacingMergeTree(received_at)
    PARTITION BY toYYYYMM(ts)
    ORDER BY (oneid, ts, message_id)
    {_TABLE_SETTINGS}""",
    f"""CREATE TABLE IF NOT EXISTS {DATABASE}.actions (
        action_id String,
        oneid String,
        rule_id LowCardinality(String),
        rule_version UInt32,
        channel LowCardinality(String),
        template LowCardinality(String),
        created_at DateTime64(3, 'UTC'),
        not_before DateTime64(3, 'UTC'),
        expires_at DateTime64(3, 'UTC'),
        reason String
    ) ENGINE = ReplacingMergeTree(created_at)
    PARTITION BY toYYYYMM(created_at)
    ORDER BY (action_id)
    {_TABLE_SETTINGS}""",
]

EVENT_COLUMNS = ["message_id", "oneid", "type", "event", "name", "ts", "received_at", "properties", "identities",
                 "raw_partition", "raw_offset"]
ACTION_COLUMNS = ["action_id", "oneid", "rule_id", "rule_version", "channel", "template", "created_at",
                  "not_before", "expires_at", "reason"]

# Inserts are synchronous, so an insert that returned is durable before offsets are committed.
_INSERT_SETTINGS = {"async_insert": 0, "date_time_input_format": "best_effort"}


def chdb_path(url: str) -> Path | None:
    """The filesystem path of an embedded ``chdb://`` URL (relative paths are from the working directory)."""
    if not url.startswith("chdb://"):
        return None
    return Path(url[len("chdb://"):]).expanduser().resolve()


def make_client(url: str) -> Client:
    path = chdb_path(url)
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(interface="chdb", path=str(path))
    return clickhouse_connect.get_client(dsn=url)


class ClickHouseSink:
    """Owns the client; serialises use of it (the embedded engine is one per process)."""

    def __init__(self, url: str):
        self.url = url
        self.client = make_client(url)
        self._lock = threading.Lock()

    def migrate(self) -> None:
        with self._lock:
            for stmt in DDL:
                self.client.command(stmt)

    def insert(self, table: str, rows: list[list[Any]], columns: list[str], token: str | None = None) -> int:
        if not rows:
            return 0
        settings = dict(_INSERT_SETTINGS)
        if token:
            settings["insert_deduplication_token"] = token
        with self._lock:
            self.client.insert(f"{DATABASE}.{table}", rows, column_names=columns, settings=settings)
        return len(rows)

    def insert_json(self, table: str, lines: list[bytes], columns: list[str], token: str | None = None) -> int:
        """Insert JSONEachRow lines: encoding is orjson's, parsing ClickHouse's (far cheaper than row objects)."""
        if not lines:
            return 0
        settings = dict(_INSERT_SETTINGS)
        if token:
            settings["insert_deduplication_token"] = token
        with self._lock:
            self.client.raw_insert(f"{DATABASE}.{table}", columns, insert_block=b"\n".join(lines),
                                   fmt="JSONEachRow", settings=settings)
        return len(lines)

    def query(self, sql: str, fmt: str = "TabSeparatedWithNames") -> bytes:
        """Run any statement and return ClickHouse's own output format (what `cdp sql` prints)."""
        with self._lock:
            return self.client.raw_query(sql, fmt=fmt)

    def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.client.query(sql, parameters=parameters).result_rows

    def close(self) -> None:
        with self._lock:
            self.client.close()
