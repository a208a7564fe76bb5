"""Segment's browser SDK (analytics-next, from npm) in headless Chromium, on a page of another origin, pointed at the
collector: CORS preflights pass, its one-letter paths and body write key are taken, one by one, batched, and
retried after a 503 with X-Retry-Count; every event lands in ClickHouse exactly once.

Chromium comes from Debian's packages and the SDK from tests/integration/browser (``deploy/local/browser.sh``
installs both); the browser is driven over the Chrome DevTools Protocol with aiohttp's websocket client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from ops.topics import read_topic, wait_processed
from ops.worker import query, wait_http
from tests.integration.conftest import Deployment, free_port, run

pytestmark = pytest.mark.integration

BROWSER_DIR = Path(__file__).parent / "browser"
SDK_DIR = BROWSER_DIR / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"
WRITE_KEY = "wk-web"
SETUP = "run `bash deploy/local/browser.sh` (make setup does)"


def chromium() -> str:
    path = os.environ.get("CDP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail(f"no chromium on this machine: {SETUP}")
    if not (SDK_DIR / "index.js").exists():
        pytest.fail(f"analytics-next is not installed in {BROWSER_DIR}: {SETUP}")
    return path


@dataclass
class Request:
    method: str
    url: str
    headers: dict[str, str]
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    failed: str | None = None
    body: bytes = b""

    @property
    def message_ids(self) -> list[str]:
        doc = orjson.loads(self.body) if self.body else {}
        return [e["messageId"] for e in doc.get("batch", [doc])]

    @property
    def path(self) -> str:
        return "/" + self.url.split("/", 3)[3].split("?")[0]


class Page:
    """One browser tab over the DevTools protocol: commands, and every network request it makes (preflights too)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.ids = 0
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.requests: dict[str, Request] = {}
        self.console: list[str] = []
        self.on_response: Callable[[Request], None] | None = None
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            m = orjson.loads(msg.data)
            if "id" in m:
                fut = self.pending.pop(m["id"])
                if "error" in m:
                    fut.set_exception(RuntimeError(f"devtools: {m['error']}"))
                else:
                    fut.set_result(m.get("result", {}))
                continue
            p = m.get("params", {})
            method = m.get("method")
            if method == "Network.requestWillBeSent":
                r = p["request"]
                # A redirect reuses the id; the tests make none, so the latest request is the one.
                self.requests[p["requestId"]] = Request(r["method"], r["url"], dict(r.get("headers", {})),
                                                        body=r.get("postData", "").encode())
            elif method == "Network.responseReceived" and p["requestId"] in self.requests:
                req = self.requests[p["requestId"]]
                req.status = p["response"]["status"]
                req.response_headers = {k.lower(): v for k, v in p["response"]["headers"].items()}
                if self.on_response:
                    self.on_response(req)
            elif method == "Network.loadingFailed" and p["requestId"] in self.requests:
                self.requests[p["requestId"]].failed = f"{p.get('errorText')} {p.get('corsErrorStatus', '')}".strip()
            elif method == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif method == "Runtime.exceptionThrown":
                self.console.append(f"exception: {p['exceptionDetails']}")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.ids += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.ids] = fut
        # The DevTools endpoint reads text frames only.
        await self.ws.send_str(orjson.dumps({"id": self.ids, "method": method, "params": params}).decode())
        return await asyncio.wait_for(fut, 30)

    async def js(self, expression: str) -> Any:
        res = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"page error: {res['exceptionDetails']}; console: {self.console}")
        return res["result"].get("value")

    def posts(self) -> list[Request]:
        return [r for r in self.requests.values() if r.method == "POST"]

    def preflights(self) -> list[Request]:
        return [r for r in self.requests.values() if r.method == "OPTIONS"]

    def explain(self) -> str:
        return "\n".join(f"{r.method} {r.url} -> {r.status} {r.failed or ''} {r.headers}"
                         for r in self.requests.values()) + f"\nconsole: {self.console}"


async def wait_until(check: Callable[[], bool], what: str, page: Page, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen in {timeout_s}s; the browser's requests:\n{page.explain()}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def shop_page(collector_url: str, delivery: dict[str, Any] | None = None) -> AsyncIterator[Page]:
    """A shop's page served from an origin of its own, the SDK loaded, its Segment.io destination at the collector."""
    binary = chromium()
    app = web.Application()

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(BROWSER_DIR / "page.html")

    app.router.add_get("/", index)
    app.router.add_static("/analytics-next/bundles/", SDK_DIR)
    runner = web.AppRunner(app)
    await runner.setup()
    page_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", page_port).start()
    profile = tempfile.mkdtemp(prefix="cdp-chromium-")
    proc = subprocess.Popen(
        [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--no-default-browser-check", "--disable-background-networking", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.poll() is not None else ""
                pytest.fail(f"chromium ({binary}) did not start its DevTools endpoint: {err}")
            await asyncio.sleep(0.1)
        devtools = int(port_file.read_text().splitlines()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{devtools}/json/list") as r:
                targets = await r.json()
            target = next(t for t in targets if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                await page.call("Network.enable")
                await page.call("Runtime.enable")
                await page.call("Page.enable")
                await page.call("Page.navigate", url=f"http://127.0.0.1:{page_port}/")
                await wait_until(lambda: any(r.path == "/analytics-next/bundles/index.js" and r.status == 200
                                             for r in page.requests.values()), "the SDK loaded", page)
                for _ in range(100):
                    if await page.js("typeof window.start === 'function' && typeof AnalyticsNext === 'object'"):
                        break
                    await asyncio.sleep(0.1)
                api_host = collector_url.removeprefix("http://") + "/v1"
                cfg = {"writeKey": WRITE_KEY, "apiHost": api_host, "delivery": delivery}
                version = await page.js(f"window.start({orjson.dumps(cfg).decode()})")
                assert str(version).startswith("1.84."), version
                try:
                    yield page
                finally:
                    page.reader.cancel()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
        await runner.cleanup()


async def sent_ids(page: Page, n: int) -> list[str]:
    """The messageIds of the page's calls, once the SDK has handled all ``n`` of them."""
    deadline = time.monotonic() + 30
    while len(ids := await page.js("window.sent")) < n:
        assert time.monotonic() < deadline, f"the SDK handled {len(ids)} of {n} calls:\n{page.explain()}"
        await asyncio.sleep(0.1)
    return list(ids)


def delivered(page: Page) -> set[str]:
    return {m for r in page.posts() if r.status == 200 for m in r.message_ids}


def landed(deployment: Deployment) -> dict[str, tuple[int, str, str]]:
    """message_id -> (rows, type, event) of every row in cdp.events."""
    rows = [orjson.loads(line) for line in query(
        deployment.settings,
        "SELECT message_id, count() AS n, any(type) AS type, any(event) AS event FROM cdp.events GROUP BY message_id",
        "JSONEachRow").splitlines()]
    return {r["message_id"]: (int(r["n"]), r["type"], r["event"]) for r in rows}


def assert_cors_passed(page: Page) -> None:
    """Every request went through; the browser asked before each path it posts to (the SDK's Authorization header is
    not CORS-safelisted) and was allowed every header it asked for. (A retry's X-Retry-Count is allowed by the
    preflight the browser cached, which lists it.)"""
    for r in page.requests.values():
        assert r.failed is None and r.url.startswith("http://127.0.0.1:"), page.explain()  # nothing went further
    preflights = page.preflights()
    assert {r.path for r in preflights} == {r.path for r in page.posts()}, page.explain()
    assert all("authorization" in r.headers.get("Access-Control-Request-Headers", "").lower() for r in preflights)
    for pre in preflights:
        assert pre.status == 204, page.explain()
        allowed = {h.strip().lower() for h in pre.response_headers["access-control-allow-headers"].split(",")}
        asked = {h.strip().lower() for h in pre.headers.get("Access-Control-Request-Headers", "").split(",") if h}
        assert asked <= allowed, (asked, allowed)
        assert "origin" in pre.response_headers.get("vary", "").lower()


CALLS = [
    ["identify", "u-web", {"email": "web@example.com", "marketing_consent": True}],
    ["track", "Product Viewed", {"sku": "S-1", "price": 9.5}],
    ["page", "Docs", "Getting started", {"path": "/docs"}],
    ["group", "g-1", {"name": "Acme"}],
    ["alias", "u-web-2", "u-web"],
]


def send_through_a_worker(deployment: Deployment, calls: list[list[Any]], answered: int,
                          delivery: dict[str, Any] | None = None,
                          then: tuple[Callable[[Page], bool], str] | None = None
                          ) -> tuple[list[str], Page, dict[str, tuple[int, str, str]]]:
    """A worker, the page pointed at it and ``calls`` sent: waits until ``answered`` posts got 200 (and ``then``),
    then until the pipeline has sunk them. The messageIds the SDK sent, the page, and what landed in cdp.events."""
    with deployment.worker() as w:
        w.start()

        async def scenario() -> tuple[list[str], Page]:
            async with shop_page(w.url, delivery) as page:
                await page.js(f"window.send({orjson.dumps(calls).decode()})")
                await wait_until(lambda: sum(r.status == 200 for r in page.posts()) == answered,
                                 f"{answered} requests answered 200", page)
                if then is not None:
                    await wait_until(lambda: then[0](page), then[1], page)
                ids = await sent_ids(page, len(calls))
                await wait_processed(deployment.settings, timeout_s=120)
                return ids, page

        ids, page = run(scenario())
        return ids, page, landed(deployment)


def test_events_sent_one_by_one_reach_clickhouse_once_through_the_short_paths(deployment):
    deployment.env["CDP_WRITE_KEYS"] = f"wk-other,{WRITE_KEY}"
    ids, page, got = send_through_a_worker(deployment, CALLS, answered=len(CALLS))
    assert_cors_passed(page)
    assert sorted(r.path for r in page.posts()) == ["/v1/a", "/v1/g", "/v1/i", "/v1/p", "/v1/t"]
    assert all(r.headers.get("Content-Type") == "text/plain" for r in page.posts())
    assert len(ids) == len(CALLS) and set(got) == set(ids), (ids, got)
    assert all(n == 1 for n, _, _ in got.values()), got
    assert sorted(t for _, t, _ in got.values()) == ["alias", "group", "identify", "page", "track"]
    assert {e for _, t, e in got.values() if t == "track"} == {"product_view"}
    published = run(read_topic(deployment.settings, deployment.settings.raw_topic))
    assert len(published) == len(CALLS) and all(b"writeKey" not in m.value for m in published)  # a secret


def test_the_batching_delivery_strategy_reaches_clickhouse_once(deployment):
    deployment.env["CDP_WRITE_KEYS"] = WRITE_KEY
    calls = [["track", "Product Viewed", {"sku": f"S-{i}"}] for i in range(7)]
    ids, page, got = send_through_a_worker(
        deployment, calls, answered=2, delivery={"strategy": "batching", "config": {"size": 4, "timeout": 300}},
        then=(lambda page: len(page.posts()) == 2, "no third request"))
    assert_cors_passed(page)
    assert [r.path for r in page.posts()] == ["/v1/b", "/v1/b"]
    assert len(ids) == len(calls) and set(got) == set(ids), (ids, got)
    assert all(n == 1 for n, _, _ in got.values()), got


class ClosedThenOpen:
    """A TCP port that refuses connections (a broker out of reach) until ``open()`` forwards it to the broker."""

    def __init__(self, target: str):
        self.port = free_port()
        self.host, _, port = target.rpartition(":")
        self.target_port = int(port)
        self.server: asyncio.Server | None = None
        self.opening: asyncio.Future[None] | None = None

    def open_soon(self) -> None:
        if self.opening is None:
            self.opening = asyncio.ensure_future(self.open())

    async def open(self) -> None:
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        self.server = await asyncio.start_server(forward, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self.opening is not None:
            await self.opening
        if self.server is not None:
            self.server.close()


@pytest.mark.parametrize("delivery", [None, {"strategy": "batching", "config": {"size": 3, "timeout": 300}}],
                         ids=["one-by-one", "batching"])
def test_a_503_is_retried_by_the_sdk_with_x_retry_count_and_the_events_land_once(deployment, delivery):
    """``cdp collector`` whose broker is out of reach answers 503; once it is back, the SDK's retry goes through."""
    deployment.env["CDP_WRITE_KEYS"] = WRITE_KEY
    calls = [["track", "Order Completed", {"order_id": f"o-{i}", "amount": 10 + i}] for i in range(3)]
    with deployment.worker() as w:
        w.start()  # the topics exist, and the worker sinks what the standalone collector publishes

        async def scenario() -> tuple[list[str], Page]:
            broker = ClosedThenOpen(deployment.settings.kafka_bootstrap.split(",")[0])
            port = free_port()
            log = open(deployment.dir / "collector.log", "ab")  # noqa: SIM115
            collector = subprocess.Popen([sys.executable, "-m", "cdp_cli.main", "collector"],
                                         env={**w.env, "CDP_WEB_PORT": str(port),
                                              "CDP_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker.port}"},
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz")
                async with shop_page(f"http://127.0.0.1:{port}", delivery) as page:
                    page.on_response = lambda r: broker.open_soon() if r.status == 503 else None
                    await page.js(f"window.send({orjson.dumps(calls).decode()})")
                    ids: list[str] = []
                    deadline = time.monotonic() + 90
                    while len(ids) < len(calls) or not set(ids) <= delivered(page):
                        assert time.monotonic() < deadline, f"not every event answered 200:\n{page.explain()}"
                        await asyncio.sleep(0.2)
                        ids = await page.js("window.sent")
                await wait_processed(deployment.settings, timeout_s=120)
                return ids, page
            finally:
                await broker.close()
                collector.terminate()
                collector.wait(30)
                log.close()

        ids, page = run(scenario())
        got = landed(deployment)
    assert_cors_passed(page)
    refused = [r for r in page.posts() if r.status == 503]
    assert refused and all(r.response_headers.get("retry-after") == "1" for r in refused), page.explain()
    for mid in {m for r in refused for m in r.message_ids}:  # each refused event was sent again, and taken
        retries = [r for r in page.posts() if mid in r.message_ids and r.status == 200]
        assert retries and all(int(r.headers.get("X-Retry-Count", "0")) >= 1 for r in retries), page.explain()
    assert len(ids) == len(calls) and set(got) == set(ids), (ids, got)
    assert all(n == 1 for n, _, _ in got.values()), got
    assert {e for _, _, e in got.values()} == {"order_paid"}
