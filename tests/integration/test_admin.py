"""Analysts' access to a worker's ClickHouse: read-only, on its own loopback listener, one-line errors, and
`cdp sql` while the worker (re)starts."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from ops.worker import query
from sinks.clickhouse import chdb_holder, chdb_path

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COSTS = "SELECT count() FROM cdp.channel_costs"


def post(url: str, body: bytes, token: str | None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json", **({"X-CDP-Admin-Token": token} if token else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def sql(info: dict, text: str, parameters: dict | None = None, fmt: str = "TabSeparated") -> tuple[int, bytes]:
    body = orjson.dumps({"query": text, "format": fmt, "parameters": parameters})
    return post(info["admin_url"] + "/admin/sql", body, info["token"])


def one_line_error(out: bytes) -> str:
    error = orjson.loads(out)["error"]
    assert "\n" not in error and "Traceback" not in error and 'File "' not in error
    return error


def cdp(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdp_cli.main", *args], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def test_admin_endpoints(deployment, tmp_path):
    s = deployment.settings
    with deployment.worker() as w:
        w.start()
        info = orjson.loads(s.worker_file.read_bytes())
        admin_host, admin_port = info["admin_url"].removeprefix("http://").rsplit(":", 1)

        # Not on the collector's port, and on loopback.
        assert int(admin_port) != s.web_port and admin_host == "127.0.0.1"
        status, _ = post(info["url"] + "/admin/sql", orjson.dumps({"query": "SELECT 1"}), info["token"])
        assert status == 404

        # A read works, with bound values.
        assert sql(info, "SELECT {a:String}, {b:Array(String)}", {"a": "it's", "b": ["x", "y"]}) == (
            200, b"it\\'s\t['x','y']\n")
        assert sql(info, "SELECT count() FROM cdp.events") == (200, b"0\n")

        # Writes are refused and change nothing.
        before = query(s, COSTS, "TabSeparated")
        outfile = tmp_path / "out.tsv"
        for write in ["INSERT INTO cdp.channel_costs (day, source, medium, campaign, cost, currency, updated_at) "
                      "VALUES ('2026-01-01', 'ads', 'cpc', '', 1, 'EUR', now())",
                      "CREATE TABLE cdp.scratch (a UInt8) ENGINE = Memory", "DROP TABLE cdp.channel_costs",
                      "TRUNCATE TABLE cdp.channel_costs", f"SELECT 1 INTO OUTFILE '{outfile}'"]:
            status, out = sql(info, write)
            assert status == 400, (write, out)
            one_line_error(out)
        assert query(s, COSTS, "TabSeparated") == before
        assert query(s, "EXISTS TABLE cdp.scratch", "TabSeparated") == b"0\n"
        assert not outfile.exists()

        # Errors: ClickHouse's first line, or ours, never a traceback.
        status, out = sql(info, "SELECT nope FROM cdp.events")
        assert status == 400 and one_line_error(out).startswith("Code: 47.")
        status, out = post(info["admin_url"] + "/admin/sql", b"{not json", info["token"])
        assert status == 400 and one_line_error(out)
        assert post(info["admin_url"] + "/admin/sql", b"{}", "wrong")[0] == 403
        assert post(info["admin_url"] + "/admin/costs", b'{"rows": []}', None)[0] == 403

        # `cdp costs load` still loads its rows (through /admin/costs), and `cdp sql` reads them.
        costs = tmp_path / "costs.csv"
        costs.write_text("day,source,medium,campaign,cost,currency\n2026-01-01,ads,cpc,spring,12.5,EUR\n"
                         "2026-01-02,ads,cpc,,3,EUR\n")
        r = cdp("costs", "load", str(costs), env=deployment.env)
        assert r.returncode == 0, r.stderr
        r = cdp("sql", "SELECT day, campaign, cost FROM cdp.channel_costs FINAL ORDER BY day", env=deployment.env)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[1:] == ["2026-01-01\tspring\t12.5", "2026-01-02\t\t3"]


def _starting(worker) -> threading.Thread:
    def start() -> None:
        try:
            worker.start()
        except BaseException as exc:
            worker.failed = exc

    worker.failed = None
    t = threading.Thread(target=start)
    t.start()
    return t


@pytest.mark.parametrize("when", ["at once", "once the worker holds the path"])
def test_cdp_sql_while_the_worker_restarts(deployment, when):
    with deployment.worker() as w:
        w.start()  # the schema is made; the worker is stopped after
    worker = deployment.worker()
    t = _starting(worker)
    try:
        if when != "at once":
            path = chdb_path(deployment.settings.clickhouse_url)
            deadline = time.monotonic() + 60
            while (chdb_holder(path) or (None,))[0] != (worker.proc.pid if worker.proc else -1):
                assert time.monotonic() < deadline, "the worker never opened its ClickHouse"
                time.sleep(0.02)
            assert not (worker.health() or {}).get("ready")
        # Before the worker is ready: the answer, or one plain line saying what is happening.
        r = cdp("sql", "SELECT count() FROM cdp.events", env=deployment.env)
        t.join(120)
        assert worker.failed is None, f"the worker did not start beside `cdp sql`: {worker.failed!r}"
        assert "Another server instance" not in r.stderr and "Traceback" not in r.stderr, r.stderr
        if r.returncode == 0:
            assert r.stdout.splitlines() == ["count()", "0"]
            assert len(r.stderr.strip().splitlines()) <= 1, r.stderr  # at most "waiting for the worker ..."
        else:
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        # Once it runs, through it.
        r = cdp("sql", "SELECT count() FROM cdp.events", env=deployment.env)
        assert (r.returncode, r.stdout.splitlines(), r.stderr) == (0, ["count()", "0"], "")
    finally:
        t.join(120)
        worker.stop()
