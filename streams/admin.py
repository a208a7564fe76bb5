"""The worker's admin endpoints, for `cdp sql` and `cdp costs load` (embedded chDB is one process's: the worker's).

They are a small aiohttp site of their own, on ``CDP_ADMIN_HOST``:``CDP_ADMIN_PORT`` (127.0.0.1, a free port
by default, written to the worker file), never on the web port: that port carries the public collector
(``/v1/*``) and may be bound to every interface (``CDP_WEB_HOST=0.0.0.0``). A listener of its own is the robust
way to keep them off it: a check of each request's local address would pass every request a reverse proxy on the
same host forwards.

- ``POST /admin/sql`` ``{"query", "format", "parameters"}``: read-only (``ClickHouseSink.read_query``).
- ``POST /admin/costs`` ``{"rows": [...]}``: cost rows into ``cdp.channel_costs``, the one write analysts make.
- ``GET /admin/ping``: answers once the site serves (no token: it tells nothing).

Both POSTs need the ``X-CDP-Admin-Token`` of the worker file (mode 0600). An error answers
``{"error": "<one line>"}``: ClickHouse's message, never a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any

import orjson
from aiohttp import web

from config.settings import Settings
from sinks.clickhouse import ClickHouseSink, QueryRefused, error_line

log = logging.getLogger("cdp.admin")

TOKEN_HEADER = "X-CDP-Admin-Token"
COST_TABLE = "channel_costs"
# The columns a cost row gives (migration 0006; analytics.insights.COST_COLUMNS reads them, a test holds the two
# equal); the insert adds updated_at.
COST_COLUMNS = ("day", "source", "medium", "campaign", "cost", "currency")


def cost_lines(rows: Any, updated_at: datetime | None = None) -> list[bytes]:
    """JSON lines for ``cdp.channel_costs`` (``ClickHouseSink.insert_json``: values are data, never SQL text).
    A later load of the same (day, source, medium, campaign) replaces the earlier: its updated_at is later.
    Raises ValueError naming the first row that is not a cost row."""
    if not isinstance(rows, list):
        raise ValueError("rows must be a list of cost rows")
    stamp = (updated_at or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:23]
    lines = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or set(r) != set(COST_COLUMNS):
            raise ValueError(f"row {i}: a cost row has exactly the fields {', '.join(COST_COLUMNS)}")
        cost = r["cost"]
        if isinstance(cost, bool) or not isinstance(cost, int | float) or not math.isfinite(cost) or cost < 0:
            raise ValueError(f"row {i}: cost must be a number >= 0")
        if not all(isinstance(r[c], str) for c in COST_COLUMNS if c != "cost"):
            raise ValueError(f"row {i}: day, source, medium, campaign and currency are text")
        try:
            date.fromisoformat(r["day"])
        except ValueError:
            raise ValueError(f"row {i}: day must be a date (YYYY-MM-DD), not {r['day']!r}") from None
        lines.append(orjson.dumps({**{c: r[c] for c in COST_COLUMNS}, "updated_at": stamp}))
    return lines


def insert_costs(sink: ClickHouseSink, rows: Any, updated_at: datetime | None = None) -> int:
    """Insert cost rows; the number inserted."""
    return insert_cost_lines(sink, cost_lines(rows, updated_at))


def insert_cost_lines(sink: ClickHouseSink, lines: list[bytes]) -> int:
    """Insert ``cost_lines``' lines into ``cdp.channel_costs``."""
    return sink.insert_json(COST_TABLE, lines, [*COST_COLUMNS, "updated_at"])


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _one_line_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:  # 404, 405, ...
        return _error(exc.reason, exc.status)
    except Exception:  # a bug of ours: the traceback goes to the log, not to the caller
        log.exception("admin request %s %s failed", request.method, request.path)
        return _error("internal error (see the worker's log)", 500)


def admin_app(sink: ClickHouseSink | None, token: str) -> web.Application:
    async def body_of(request: web.Request) -> dict[str, Any] | web.Response:
        if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), token):
            return _error("forbidden", 403)
        if sink is None:
            return _error("no ClickHouse sink in this worker", 503)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return _error(f"the body is not JSON: {exc}", 400)
        return body if isinstance(body, dict) else _error("the body must be a JSON object", 400)

    async def sql(request: web.Request) -> web.Response:
        body = await body_of(request)
        if isinstance(body, web.Response):
            return body
        assert sink is not None
        query, parameters = body.get("query"), body.get("parameters")
        fmt = body.get("format") or "TabSeparatedWithNames"
        if not isinstance(query, str) or not isinstance(fmt, str) or not isinstance(parameters, dict | None):
            return _error("expected {\"query\": text, \"format\": text, \"parameters\": object}", 400)
        try:
            out = await asyncio.get_running_loop().run_in_executor(None, sink.read_query, query, fmt, parameters)
        except QueryRefused as exc:
            return _error(str(exc), 400)
        except Exception as exc:  # ClickHouse's answer to the query
            return _error(error_line(exc), 400)
        return web.Response(body=out, content_type="text/plain")

    async def costs(request: web.Request) -> web.Response:
        body = await body_of(request)
        if isinstance(body, web.Response):
            return body
        assert sink is not None
        try:
            lines = cost_lines(body.get("rows"))
        except ValueError as exc:
            return _error(str(exc), 400)
        try:
            n = await asyncio.get_running_loop().run_in_executor(None, insert_cost_lines, sink, lines)
        except Exception as exc:
            return _error(error_line(exc), 400)
        return web.json_response({"loaded": n})

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[_one_line_errors], client_max_size=64 * 1024 * 1024)
    app.router.add_post("/admin/sql", sql)
    app.router.add_post("/admin/costs", costs)
    app.router.add_get("/admin/ping", ping)
    return app


async def start_admin(settings: Settings, sink: ClickHouseSink | None, token: str) -> tuple[web.AppRunner, str]:
    """Serve the admin endpoints; the runner (to clean up) and the base URL a local client reaches them at."""
    runner = web.AppRunner(admin_app(sink, token), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.admin_host, settings.admin_port).start()
    port = runner.addresses[0][1]
    host = settings.admin_host
    if host in ("", "0.0.0.0", "::"):  # every interface: loopback is one of them
        host = "127.0.0.1"
    return runner, f"http://{f'[{host}]' if ':' in host else host}:{port}"
