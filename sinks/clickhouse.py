"""One ClickHouse client for an embedded chDB path or a server URL, the DDL, and idempotent batch inserts.

``CDP_CLICKHOUSE_URL``: ``chdb://.local/clickhouse`` (relative or absolute path: embedded, one process per path)
or ``http(s)://user:pass@host:8123/db`` (a server).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.binding import format_query_value, format_str, quote_identifier
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from core import identity_rows
from core.rows import EVENT_ROW_COLUMNS

DATABASE = "cdp"
log = logging.getLogger("cdp.clickhouse")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    def statements(self) -> list[str]:
        body = "\n".join(ln for ln in self.sql.splitlines() if not ln.strip().startswith("--"))
        return [st.strip() for st in body.split(";") if st.strip()]


def migrations() -> list[Migration]:
    """``sinks/migrations/NNNN_name.sql``, in version order. Applied ones are never edited: add a new file."""
    out = []
    for f in sorted(MIGRATIONS_DIR.glob("*.sql")):
        version, _, name = f.stem.partition("_")
        out.append(Migration(int(version), name, f.read_text(encoding="utf-8")))
    return out


# Event rows are JSON arrays in this order (``insert_json(..., compact=True)``).
EVENT_COLUMNS = list(EVENT_ROW_COLUMNS)
ACTION_COLUMNS = ["action_id", "oneid", "rule_id", "rule_version", "channel", "template", "created_at",
                  "not_before", "expires_at", "reason"]
FEEDBACK_COLUMNS = ["action_id", "status", "at", "detail", "received_at"]
# The link writer's rows (core.identity_rows), JSON arrays in these orders.
IDENTITY_COLUMNS = list(identity_rows.IDENTITY_COLUMNS)
IDENTITY_MERGE_COLUMNS = list(identity_rows.MERGE_COLUMNS)
IDENTITY_LINK_COLUMNS = list(identity_rows.LINK_COLUMNS)
IDENTITY_REFUSAL_COLUMNS = list(identity_rows.REFUSAL_COLUMNS)

# Inserts are synchronous, so an insert that returned is durable before offsets are committed.
# JSON objects go into String columns as their text (events.properties): the row carries them as objects, so they
# are neither encoded twice nor escaped.
_INSERT_SETTINGS = {"async_insert": 0, "date_time_input_format": "best_effort",
                    "deduplicate_blocks_in_dependent_materialized_views": 1,
                    "input_format_json_read_objects_as_strings": 1}


# Embedded inserts of at least this many positional rows read LowCardinality columns as text (``_plain_input``):
# the INSERT ... SELECT costs about 0.3-0.8 ms more per statement, and saves about 0.5 µs per row (measured in
# alternating inserts: 20,000 rows 2.65 -> 2.12 µs per row, 5,000 rows 4.63 -> 4.12, 1,000 rows
# 14.8 -> 15.2, 200 rows 21 -> 25).
PLAIN_INPUT_MIN_ROWS = 2000
# A top-level LowCardinality wrapper: ``LowCardinality(String)`` -> ``String``.
_LOW_CARDINALITY = re.compile(r"^LowCardinality\((.*)\)$")


class Failure(StrEnum):
    """What a failed insert says about its rows (``classify``)."""

    transient = "transient"  # ClickHouse (or the way to it) cannot take rows now: the same insert later
    rejected = "rejected"  # ClickHouse refused the rows' data: some row of them will never go in
    unknown = "unknown"  # neither is known: retried a few times, then treated as about the rows (streams.sink_writer)


# ClickHouse error codes (names as the engine's errorCodeToName gives them: tests/sinks/test_clickhouse.py).
# The server or its resources cannot take an insert now; or the table, database or a column the insert names is
# missing (a migration not applied, a server being restored): every row would fail alike, so it is not theirs.
TRANSIENT_CODES = frozenset({
    16,  # NO_SUCH_COLUMN_IN_TABLE
    60,  # UNKNOWN_TABLE
    81,  # UNKNOWN_DATABASE
    95,  # CANNOT_READ_FROM_SOCKET
    96,  # CANNOT_WRITE_TO_SOCKET
    159,  # TIMEOUT_EXCEEDED
    173,  # CANNOT_ALLOCATE_MEMORY
    201,  # QUOTA_EXCEEDED
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    203,  # NO_FREE_CONNECTION
    209,  # SOCKET_TIMEOUT
    210,  # NETWORK_ERROR
    225,  # NO_ZOOKEEPER
    236,  # ABORTED
    241,  # MEMORY_LIMIT_EXCEEDED
    242,  # TABLE_IS_READ_ONLY
    243,  # NOT_ENOUGH_SPACE
    252,  # TOO_MANY_PARTS
    279,  # ALL_CONNECTION_TRIES_FAILED
    285,  # TOO_FEW_LIVE_REPLICAS
    319,  # UNKNOWN_STATUS_OF_INSERT
    364,  # RECEIVED_ERROR_TOO_MANY_REQUESTS
    394,  # QUERY_WAS_CANCELLED
    425,  # SYSTEM_ERROR
    439,  # CANNOT_SCHEDULE_TASK
    677,  # THREAD_WAS_CANCELED
    700,  # USER_SESSION_LIMIT_EXCEEDED
    749,  # TCP_CONNECTION_LIMIT_REACHED
    762,  # HTTP_CONNECTION_LIMIT_REACHED
    776,  # RESOURCE_LIMIT_EXCEEDED
    777,  # MEMORY_RESERVATION_KILLED
    778,  # MEMORY_RESERVATION_FAILED
    999,  # KEEPER_EXCEPTION
    1019,  # QUERY_SLOT_ACQUISITION_TIMEOUT
    1020,  # MEMORY_RESERVATION_ACQUISITION_TIMEOUT
})
# The rows' data: a value that does not parse as its column's type, is out of its range, a malformed line; and
# TOO_MANY_PARTITIONS, which a smaller part of the same rows avoids.
REJECTED_CODES = frozenset({
    6,  # CANNOT_PARSE_TEXT
    7,  # INCORRECT_NUMBER_OF_COLUMNS
    25,  # CANNOT_PARSE_ESCAPE_SEQUENCE
    26,  # CANNOT_PARSE_QUOTED_STRING
    27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    32,  # ATTEMPT_TO_READ_AFTER_EOF
    33,  # CANNOT_READ_ALL_DATA
    38,  # CANNOT_PARSE_DATE
    41,  # CANNOT_PARSE_DATETIME
    53,  # TYPE_MISMATCH
    69,  # ARGUMENT_OUT_OF_BOUND
    70,  # CANNOT_CONVERT_TYPE
    72,  # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    120,  # CANNOT_INSERT_VALUE_OF_DIFFERENT_SIZE_INTO_TUPLE
    128,  # TOO_LARGE_ARRAY_SIZE
    130,  # CANNOT_READ_ARRAY_FROM_TEXT
    131,  # TOO_LARGE_STRING_SIZE
    190,  # SIZES_OF_ARRAYS_DONT_MATCH
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    376,  # CANNOT_PARSE_UUID
    407,  # DECIMAL_OVERFLOW
    441,  # CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING
    467,  # CANNOT_PARSE_BOOL
    469,  # VIOLATED_CONSTRAINT
    546,  # NO_ROW_DELIMITER
    563,  # CANNOT_READ_MAP_FROM_TEXT
    565,  # TOO_MANY_PARTITIONS
    632,  # UNEXPECTED_DATA_AFTER_PARSED_VALUE
    675,  # CANNOT_PARSE_IPV4
    676,  # CANNOT_PARSE_IPV6
    691,  # UNKNOWN_ELEMENT_OF_ENUM
})
_CODE = re.compile(r"\bCode:\s*(\d+)")


def error_code(exc: BaseException) -> int | None:
    """ClickHouse's error code of a failure from clickhouse-connect (server or embedded), else None."""
    if not isinstance(exc, ClickHouseError):
        return None
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    m = _CODE.search(str(exc))
    return int(m.group(1)) if m else None


def classify(exc: BaseException) -> Failure:
    """What a failed insert says about its rows. A code decides first (a server's answer after a retried request
    comes as an OperationalError too); without one, a failure to reach ClickHouse (clickhouse-connect's
    OperationalError: connection refused, reset, timed out; an OSError of our own side, e.g. the scratch file of
    an embedded insert) is transient; anything else is unknown."""
    code = error_code(exc)
    if code in REJECTED_CODES:
        return Failure.rejected
    if code in TRANSIENT_CODES:
        return Failure.transient
    if code is None and isinstance(exc, OperationalError | OSError | MemoryError):
        return Failure.transient
    return Failure.unknown


@contextlib.contextmanager
def _scratch_file(data: bytes) -> Iterator[str]:
    """``data`` in a temporary file for the embedded engine's ``file()`` to read, removed afterwards."""
    with tempfile.NamedTemporaryFile(prefix="cdp-", suffix=".json", delete=False) as f:
        f.write(data)
    try:
        yield f.name
    finally:
        with contextlib.suppress(OSError):
            os.unlink(f.name)


def chdb_path(url: str) -> Path | None:
    """The filesystem path of an embedded ``chdb://`` URL (relative paths are from the working directory)."""
    if not url.startswith("chdb://"):
        return None
    return Path(url[len("chdb://"):]).expanduser().resolve()


# How long opening an embedded path waits for another process to release it: a `cdp sql` or `cdp migrate` holds
# it for a second or two, and a worker starting then would otherwise fail.
CHDB_OPEN_WAIT_S = 15.0


def chdb_holder(path: Path) -> tuple[int, str] | None:
    """The other live process holding the embedded engine at ``path`` (pid, command line), if any: the engine
    writes its pid into ``status`` and keeps that file locked while it runs."""
    try:
        text = (path / "status").read_text(errors="replace")
        pid = int(text.split("PID:", 1)[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a stale file: the process is gone, so is its lock
    except PermissionError:
        pass  # another user's live process
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    return pid, cmd or "?"


def make_client(url: str, open_wait_s: float = CHDB_OPEN_WAIT_S) -> Client:
    path = chdb_path(url)
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        _wait_for_release(path, open_wait_s)
        return clickhouse_connect.get_client(interface="chdb", path=str(path))
    return clickhouse_connect.get_client(dsn=url)


def _wait_for_release(path: Path, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    holder = chdb_holder(path)
    if holder is not None:
        log.info("waiting up to %.0fs for pid %d (%s) to release %s", wait_s, holder[0], holder[1], path)
    while holder is not None and time.monotonic() < deadline:
        time.sleep(0.2)
        holder = chdb_holder(path)


def error_line(exc: BaseException) -> str:
    """ClickHouse's message of a failed statement, its first line (``Code: N. DB::Exception: ...``): neither the
    client's transport prefix nor the server's stack trace."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "Code:" in ln:
            return ln[ln.index("Code:"):]
    return lines[0] if lines else type(exc).__name__


class QueryRefused(Exception):
    """A statement the read-only path does not run (not a read, or one writing to a file)."""


_EXPLAIN = "EXPLAIN AST "


def _unprefixed(message: str) -> str:
    """A parse error of ``EXPLAIN AST <sql>`` with its positions counted in ``<sql>``."""
    n = len(_EXPLAIN)
    message = re.sub(r"position (\d+)", lambda m: f"position {max(int(m[1]) - n, 1)}", message)
    return re.sub(r"\(line 1, col (\d+)\)", lambda m: f"(line 1, col {max(int(m[1]) - n, 1)})", message)


# Statements an analyst's read-only query may be (the root of ClickHouse's parse tree, EXPLAIN AST).
_READ_STATEMENTS = ("SelectWithUnionQuery", "SelectIntersectExceptQuery", "Show", "Describe", "Explain", "Exists")


class ClickHouseSink:
    """Owns the clients. Queries and DDL go through one, serialised; inserts take one of ``insert_clients`` so
    that several can run at once (the embedded engine is one per process, but takes any number of connections,
    each running one statement at a time)."""

    def __init__(self, url: str, insert_clients: int = 1):
        self.url = url
        self.client = make_client(url)
        self.embedded = chdb_path(url) is not None
        self._lock = threading.Lock()
        self._inserters: queue.SimpleQueue[Client] = queue.SimpleQueue()
        # (table, columns) -> the structure an embedded insert reads them as (``_plain_input``); None: as they are
        self._structures: dict[tuple[str, tuple[str, ...]], str | None] = {}
        self._file_reads: bool | None = None
        # Analysts' queries (`cdp sql`, /admin/sql) run on a client of their own with readonly=2, made at the first
        # such query: set per call, the embedded client could not restore readonly=0 afterwards (readonly
        # forbids changing readonly), and the worker's own statements would be refused from then on.
        self._reader: Client | None = None
        self._reader_lock = threading.Lock()
        for _ in range(insert_clients):
            self._inserters.put(make_client(url))

    def migrate(self) -> list[Migration]:
        """Apply the migrations not applied yet, in order; return them. Idempotent; safe to run at every start."""
        applied_now = []
        with self._lock:
            self.client.command(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
            self.client.command(
                f"CREATE TABLE IF NOT EXISTS {DATABASE}.schema_migrations (version UInt32, name String, "
                "checksum String, applied_at DateTime64(3, 'UTC')) ENGINE = ReplacingMergeTree ORDER BY version")
            done: dict[int, str] = dict(self.client.query(  # type: ignore[arg-type]
                f"SELECT version, checksum FROM {DATABASE}.schema_migrations FINAL").result_rows)
            for m in migrations():
                if m.version in done:
                    if done[m.version] != m.checksum:
                        log.warning("migration %04d_%s changed after it was applied; add a new one instead",
                                    m.version, m.name)
                    continue
                for stmt in m.statements():
                    self.client.command(stmt)
                self.client.insert(f"{DATABASE}.schema_migrations",
                                   [[m.version, m.name, m.checksum, datetime.now(UTC)]],
                                   column_names=["version", "name", "checksum", "applied_at"])
                applied_now.append(m)
        return applied_now

    def insert_json(self, table: str, lines: list[bytes], columns: list[str], token: str | None = None,
                    unique_keys: bool = False, compact: bool = False) -> int:
        """Insert JSON lines: encoding is orjson's, parsing ClickHouse's (far cheaper than row objects). A line is
        an object with named fields (JSONEachRow), or with ``compact`` an array of ``columns``' values in their
        order (JSONCompactEachRow: about 1 µs of CPU per row cheaper to parse, measured on event rows).

        ``unique_keys``: the caller guarantees that no two lines share the table's sorting key, so the insert
        skips the ReplacingMergeTree's collapsing pass over the block (``optimize_on_insert``): 0.5 µs of CPU per
        row measured. Rows of different inserts still collapse when parts merge and under FINAL."""
        if not lines:
            return 0
        settings = dict(_INSERT_SETTINGS)
        if token:
            settings["insert_deduplication_token"] = token
        if unique_keys:
            settings["optimize_on_insert"] = 0
        if self.embedded:
            # Embedded, ClickHouse shares the worker's cores: parsing one block on several threads only adds
            # their overhead (0.2-0.4 µs of CPU per row measured).
            settings["input_format_parallel_parsing"] = 0
        fmt = "JSONCompactEachRow" if compact else "JSONEachRow"
        # Embedded and positional: LowCardinality columns are read as their plain type and converted a block at a
        # time (``_plain_input``). Named fields keep the direct insert: there an omitted field takes the table's
        # DEFAULT expression, which a read through a structure would not.
        structure = (self._plain_input(table, columns)
                     if self.embedded and compact and len(lines) >= PLAIN_INPUT_MIN_ROWS else None)
        client = self._inserters.get()
        try:
            if structure is None:
                client.raw_insert(f"{DATABASE}.{table}", columns, insert_block=b"\n".join(lines), fmt=fmt,
                                  settings=settings)
            else:
                self._insert_through_file(client, table, columns, structure, lines, fmt, settings)
        finally:
            self._inserters.put(client)
        return len(lines)

    def _plain_input(self, table: str, columns: list[str]) -> str | None:
        """The structure to read ``columns`` of ``table`` as, with ``LowCardinality(T)`` read as ``T``; None when
        no column is LowCardinality. Parsing text straight into a LowCardinality column costs embedded ClickHouse
        about 0.16 µs per value, a quarter of the parse of an event row (4 such columns: 1.65 -> 1.0 µs per row
        into a Null table); read as String and converted per block, an event insert costs about 0.4 µs per row
        less in inserts of 20,000 (2.94-2.98 against 3.34-3.36). Read from ``system.columns`` once per
        table and columns: a migration that changes them runs before a worker inserts."""
        key = (table, tuple(columns))
        if key not in self._structures:
            self._structures[key] = self._read_as_text(table, columns) if self._reads_temp_files() else None
        return self._structures[key]

    def _read_as_text(self, table: str, columns: list[str]) -> str | None:
        types = dict(self.rows("SELECT name, type FROM system.columns WHERE database = {db:String} "
                               "AND table = {table:String}", {"db": DATABASE, "table": table}))
        plain = [(c, _LOW_CARDINALITY.sub(r"\1", types[c])) for c in columns]
        if all(t == types[c] for c, t in plain):
            return None
        return ", ".join(f"{quote_identifier(c)} {t}" for c, t in plain)

    def _reads_temp_files(self) -> bool:
        """Whether this engine's ``file()`` reads a file in the temporary directory (chDB does; a build that kept
        table functions to ``user_files_path`` would not): probed once, read-only, else inserts stay direct."""
        if self._file_reads is None:
            with _scratch_file(b'["probe"]\n') as path:
                try:
                    self._file_reads = self.rows(f"SELECT c FROM file({format_str(path)}, 'JSONCompactEachRow', "
                                                 "'c String')") == [("probe",)]
                except Exception as exc:
                    log.warning("embedded inserts read LowCardinality columns directly: file() cannot read %s: %r",
                                path, exc)
                    self._file_reads = False
        return self._file_reads

    @staticmethod
    def _insert_through_file(client: Client, table: str, columns: list[str], structure: str, lines: list[bytes],
                             fmt: str, settings: dict[str, Any]) -> None:
        # A file, as clickhouse-connect's own embedded inserts use (``INSERT ... FROM INFILE``): chDB takes no
        # request body. ``insert_deduplication_token`` holds for INSERT SELECT as for INSERT (a retry adds nothing:
        # tests/sinks/test_clickhouse.py).
        cols = ", ".join(quote_identifier(c) for c in columns)
        # Settings in the statement: passed apart, the embedded client applies each with a SET before and another
        # after (4-5 ms more per insert, measured: it made inserts of 5,000 rows dearer, not cheaper).
        clause = ", ".join(f"{k} = {format_query_value(v)}" for k, v in settings.items())
        with _scratch_file(b"\n".join(lines)) as path:
            client.command(f"INSERT INTO {DATABASE}.{table} ({cols}) SELECT * FROM "
                           f"file({format_str(path)}, {format_str(fmt)}, {format_str(structure)}) SETTINGS {clause}")

    def query(self, sql: str, fmt: str = "TabSeparatedWithNames", parameters: dict[str, Any] | None = None) -> bytes:
        """Run any statement and return ClickHouse's own output format (what `cdp sql` prints). ``parameters``
        bind ``{name:Type}`` placeholders (ClickHouse's server-side binding: values never become SQL text)."""
        with self._lock:
            return self.client.raw_query(sql, fmt=fmt, parameters=parameters)

    def read_query(self, sql: str, fmt: str = "TabSeparatedWithNames",
                   parameters: dict[str, Any] | None = None) -> bytes:
        """An analyst's query, read-only: ClickHouse's ``readonly=2`` (reads, and settings other than readonly)
        refuses every write, and the statement must parse as a read (SELECT, SHOW, DESCRIBE, EXPLAIN, EXISTS)
        with no INTO OUTFILE, since the embedded engine, like clickhouse-local, writes INTO OUTFILE and INSERT INTO
        FUNCTION file(...) and runs KILL QUERY under readonly. Raises QueryRefused, or the client's error."""
        with self._reader_lock:
            if self._reader is None:
                self._reader = make_client(self.url)
                self._reader.set_client_setting("readonly", "2")
            try:
                tree = self._reader.raw_query(_EXPLAIN + sql, fmt="TabSeparatedRaw", parameters=parameters)
            except Exception as exc:  # the statement does not parse: its error, placed in the analyst's text
                raise QueryRefused(_unprefixed(error_line(exc))) from None
            top = tree.decode(errors="replace").splitlines()
            if not top or not top[0].startswith(_READ_STATEMENTS):
                kind = top[0].split(" ", 1)[0] if top else "empty"
                raise QueryRefused(f"read-only: {kind} is not a read (SELECT, SHOW, DESCRIBE, EXPLAIN, EXISTS)")
            # A direct child literal of the statement is its INTO OUTFILE name.
            if any(ln.startswith(" Literal") for ln in top[1:]):
                raise QueryRefused("read-only: INTO OUTFILE writes a file")
            return self._reader.raw_query(sql, fmt=fmt, parameters=parameters)

    def has_schema(self) -> bool:
        """Whether the migrations ever ran here (``cdp worker`` and ``cdp migrate`` run them; queries never do)."""
        return self.rows("SELECT count() FROM system.tables WHERE database = {db:String} "
                         "AND name = 'schema_migrations'", {"db": DATABASE}) == [(1,)]

    def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self._lock:
            return [tuple(r) for r in self.client.query(sql, parameters=parameters).result_rows]

    def close(self) -> None:
        with self._lock:
            while True:
                try:
                    self._inserters.get_nowait().close()
                except queue.Empty:
                    break
            self.client.close()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
