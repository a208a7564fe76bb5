"""A running worker: finding it, reaching the embedded ClickHouse it holds, running one in a child process."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from config.settings import Settings
from sinks.clickhouse import chdb_holder, chdb_path, error_line

if TYPE_CHECKING:
    from sinks.clickhouse import ClickHouseSink, Migration

T = TypeVar("T")


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


def running_worker(s: Settings) -> dict[str, Any] | None:
    """The worker of this deployment (prefix) running on this machine, if it answers."""
    info = announced_worker(s.worker_file)
    if info is None:
        return None
    info["health"] = fetch_health(info["url"])
    return info if info["health"] is not None else None


def announced_worker(path: Path) -> dict[str, Any] | None:
    """A worker file's content while its process lives (answering or not)."""
    try:
        info = orjson.loads(path.read_bytes())
        os.kill(int(info["pid"]), 0)
    except (OSError, orjson.JSONDecodeError, TypeError, KeyError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def fetch_health(url: str) -> dict[str, Any] | None:
    """A worker's /healthz, or None when it does not answer."""
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            return orjson.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


class ClickHouseUnavailable(RuntimeError):
    """The configured ClickHouse cannot take this command now; the message says why and what to do, in a line."""


class QueryFailed(RuntimeError):
    """ClickHouse refused the statement; the message is its own, first line."""


def _admin_answers(info: dict[str, Any]) -> bool:
    try:
        urllib.request.urlopen(info["admin_url"] + "/admin/ping", timeout=2).close()
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _admin_post(info: dict[str, Any], path: str, body: dict[str, Any]) -> bytes:
    req = urllib.request.Request(info["admin_url"] + path, data=orjson.dumps(body),
                                 headers={"X-CDP-Admin-Token": info["token"], "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return bytes(r.read())
    except urllib.error.HTTPError as exc:
        try:
            message = orjson.loads(exc.read())["error"]
        except (ValueError, KeyError, TypeError):
            message = f"the worker answered {exc.code} {exc.reason}"
        raise QueryFailed(message) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ClickHouseUnavailable(f"the worker (pid {info['pid']}) did not answer at {info['admin_url']}: {exc}; "
                                    "retry when it runs") from None


def worker_query(info: dict[str, Any], sql: str, fmt: str, parameters: dict[str, Any] | None = None) -> bytes:
    """A read-only query through a running worker's admin endpoint."""
    return _admin_post(info, "/admin/sql", {"query": sql, "format": fmt, "parameters": parameters})


def _is_cdp_worker(s: Settings, pid: int, cmd: str) -> dict[str, Any] | bool:
    """Whether the process holding the embedded ClickHouse is a `cdp worker`: its worker file when it wrote one
    (this deployment's or another prefix's in the same data directory), else True by its command line."""
    for path in [s.worker_file, *sorted(s.data_dir.glob("worker-*.json"))]:
        info = announced_worker(path)
        if info is not None and int(info["pid"]) == pid:
            return info
    args = cmd.split()
    return "worker" in args and _is_cdp(cmd)


def _is_cdp(cmd: str) -> bool:
    """Whether a command line is a `cdp` command (``cdp ...`` or ``python -m cdp_cli.main ...``)."""
    return any(Path(a).name == "cdp" or a == "cdp_cli.main" for a in cmd.split())


def _holder_worker(s: Settings, on_wait: Callable[[str], None] | None, deadline: float) -> dict[str, Any] | None:
    """The worker to send this command to, when one holds the embedded ClickHouse; None: nobody does, open it
    here. Waits (until ``deadline``) for a worker that holds it and does not answer yet (starting up); raises
    ClickHouseUnavailable when another kind of process holds it, or the worker never answers."""
    path = chdb_path(s.clickhouse_url)
    if path is None:
        return None
    told = False
    while True:
        info = announced_worker(s.worker_file)
        if info is not None and info.get("admin_url") and _admin_answers(info):
            return info
        holder = chdb_holder(path)
        if holder is None:
            return None
        pid, cmd = holder
        worker = _is_cdp_worker(s, pid, cmd)
        if not worker:
            if _is_cdp(cmd):  # another cdp command (sql, migrate, report): it holds the path for a few seconds
                return None  # and opening waits for it (sinks.clickhouse.CHDB_OPEN_WAIT_S)
            raise ClickHouseUnavailable(_held_by_another(path, pid, cmd))
        if isinstance(worker, dict) and worker.get("admin_url") is None:
            raise ClickHouseUnavailable(f"the worker (pid {pid}) holds {path} but serves no admin endpoint "
                                        "(see its log: CDP_ADMIN_HOST, CDP_ADMIN_PORT)")
        if time.monotonic() > deadline:
            raise ClickHouseUnavailable(f"the worker (pid {pid}) holds {path} and has not answered for "
                                        f"{s.worker_wait_s:.0f}s: see its log; retry once its /healthz answers")
        if not told and on_wait is not None:
            on_wait(f"waiting for the worker (pid {pid}) that holds {path}: it is starting")
            told = True
        time.sleep(0.3)


def _held_by_another(path: Path, pid: int, cmd: str) -> str:
    return f"{path} is held by another process (pid {pid}: {cmd}): stop it, or point CDP_CLICKHOUSE_URL at another path"


def migrate(s: Settings) -> list[Migration]:
    """Apply the ClickHouse migrations not applied yet, here; the ones applied. A worker holding the embedded
    engine applied them at its start (ClickHouseUnavailable says so), another `cdp` command's hold is waited for
    (``sinks.clickhouse.make_client``), any other holder is named."""
    from sinks.clickhouse import ClickHouseSink

    path = chdb_path(s.clickhouse_url)
    holder = chdb_holder(path) if path is not None else None
    if path is not None and holder is not None:
        pid, cmd = holder
        if _is_cdp_worker(s, pid, cmd):
            raise ClickHouseUnavailable(f"the worker (pid {pid}) holds {path} and applied the migrations when it "
                                        "started: nothing to do while it runs")
        if not _is_cdp(cmd):
            raise ClickHouseUnavailable(_held_by_another(path, pid, cmd))
    sink = ClickHouseSink(s.clickhouse_url)
    try:
        return sink.migrate()
    finally:
        sink.close()


def _open_direct(s: Settings, insert_clients: int) -> ClickHouseSink:
    """The configured ClickHouse, opened by this process; it must have the cdp schema (queries never create it)."""
    from sinks.clickhouse import ClickHouseSink

    no_schema = ClickHouseUnavailable(f"no cdp schema at {s.clickhouse_url}: run `cdp worker` or `cdp migrate` first")
    path = chdb_path(s.clickhouse_url)
    if path is not None and not path.is_dir():
        raise no_schema  # not even opened: an embedded engine would make its files there
    try:
        sink = ClickHouseSink(s.clickhouse_url, insert_clients=insert_clients)
    except Exception as exc:
        holder = chdb_holder(path) if path is not None else None
        if holder is not None:
            raise _Held(holder) from None
        raise ClickHouseUnavailable(f"cannot open {s.clickhouse_url}: {error_line(exc)}") from None
    try:
        if not sink.has_schema():
            raise no_schema
    except BaseException:
        sink.close()
        raise
    return sink


class _Held(Exception):
    """The embedded path was taken between the look and the open (a worker starting)."""


def _on_clickhouse(s: Settings, via_worker: Callable[[dict[str, Any]], T], direct: Callable[[ClickHouseSink], T],
                   on_wait: Callable[[str], None] | None, insert_clients: int = 0) -> T:
    """Run a command on the configured ClickHouse: through the worker that holds the embedded engine, or here."""
    deadline = time.monotonic() + s.worker_wait_s
    while True:
        info = _holder_worker(s, on_wait, deadline)
        if info is not None:
            return via_worker(info)
        try:
            sink = _open_direct(s, insert_clients)
        except _Held as held:
            pid, cmd = held.args[0]
            if time.monotonic() > deadline:
                raise ClickHouseUnavailable(f"{chdb_path(s.clickhouse_url)} is held by pid {pid} ({cmd}); "
                                            "retry when it is done") from None
            continue
        try:
            return direct(sink)
        except (ClickHouseUnavailable, QueryFailed):
            raise
        except Exception as exc:  # ClickHouse's answer to the statement
            raise QueryFailed(error_line(exc)) from None
        finally:
            sink.close()


def query(s: Settings, sql: str, fmt: str = "TabSeparatedWithNames", parameters: dict[str, Any] | None = None,
          on_wait: Callable[[str], None] | None = None) -> bytes:
    """A read-only query on the configured ClickHouse: directly, or through the running worker that holds chDB
    (waiting for one that is starting; ``on_wait`` hears once why). ``parameters`` bind ``{name:Type}``
    placeholders. Never writes: no migrations (a database without the schema is ClickHouseUnavailable), and the
    statement runs under ``readonly`` (``ClickHouseSink.read_query``). Raises ClickHouseUnavailable or
    QueryFailed, each one line."""
    return _on_clickhouse(s, lambda info: worker_query(info, sql, fmt, parameters),
                          lambda sink: sink.read_query(sql, fmt, parameters), on_wait)


def load_costs(s: Settings, rows: list[dict[str, Any]], on_wait: Callable[[str], None] | None = None) -> int:
    """Cost rows into ``cdp.channel_costs`` (the one write `cdp` makes outside migrations): through the worker's
    ``/admin/costs``, or here. The number loaded."""
    from streams.admin import insert_costs

    def via_worker(info: dict[str, Any]) -> int:
        return int(orjson.loads(_admin_post(info, "/admin/costs", {"rows": rows}))["loaded"])

    return _on_clickhouse(s, via_worker, lambda sink: insert_costs(sink, rows), on_wait, insert_clients=1)


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
