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
from pathlib import Path
from typing import Any

import orjson

from config.settings import Settings


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


def worker_query(info: dict[str, Any], sql: str, fmt: str, parameters: dict[str, Any] | None = None) -> bytes:
    body = {"query": sql, "format": fmt, "parameters": parameters}
    req = urllib.request.Request(info["url"] + "/admin/sql", data=orjson.dumps(body),
                                 headers={"X-CDP-Admin-Token": info["token"], "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(orjson.loads(exc.read()).get("error", str(exc))) from None


def query(s: Settings, sql: str, fmt: str = "TabSeparatedWithNames",
          parameters: dict[str, Any] | None = None) -> bytes:
    """Run SQL on the configured ClickHouse: directly, or through the running worker that holds chDB.
    ``parameters`` bind ``{name:Type}`` placeholders."""
    if s.clickhouse_url.startswith("chdb://"):
        info = running_worker(s)
        if info is not None:
            return worker_query(info, sql, fmt, parameters)
    from sinks.clickhouse import ClickHouseSink

    sink = ClickHouseSink(s.clickhouse_url)
    try:
        sink.migrate()
        return sink.query(sql, fmt, parameters)
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
