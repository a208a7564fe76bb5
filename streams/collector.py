"""HTTP collector adapter: Segment-compatible endpoints in front of ``cdp.events.raw``.

Answers 200 only after Kafka acknowledged every accepted event (acks=all), 503 (retry) when the broker cannot
take them, so nothing a client was told is accepted is ever lost; a client retry after a 503 may publish an event
twice, which the person stage drops by ``messageId``. Mounted in ``cdp worker`` and run alone by ``cdp collector``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from config.settings import Settings
from core.clock import iso
from core.collect import MAX_REQUEST_BYTES, collect, cors_headers, kind_of
from streams import metrics
from streams.kafka import client_kwargs

log = logging.getLogger("cdp.collector")


class Collector:
    def __init__(self, settings: Settings):
        self.s = settings
        self.write_keys = [k.strip() for k in settings.write_keys.split(",") if k.strip()]
        self.producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self.inflight_bytes = 0  # accepted events waiting for Kafka's acknowledgement

    async def _get_producer(self) -> AIOKafkaProducer:
        async with self._lock:
            if self.producer is None:
                p = AIOKafkaProducer(**client_kwargs(self.s), acks="all", enable_idempotence=True, linger_ms=2,
                                     request_timeout_ms=int(self.s.collector_ack_timeout_s * 1000))
                try:
                    await asyncio.wait_for(p.start(), self.s.collector_ack_timeout_s)
                except BaseException:
                    await p.stop()
                    raise
                self.producer = p
            return self.producer

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None

    async def handle(self, method: str, path: str, headers: Mapping[str, str],
                     body: bytes) -> tuple[int, bytes, dict[str, str]]:
        """(status, JSON body, response headers) for one request to ``/v1/<path>``; ``body`` already decompressed."""
        cors = cors_headers(headers.get("Origin"), headers.get("Access-Control-Request-Headers"))
        if method == "OPTIONS":
            # Every /v1/ path says yes: the browser then sends the POST, and the SDK sees its real answer (a 404 it
            # drops) instead of a CORS failure it would retry for ever.
            return 204, b"", cors
        kind = kind_of(path)
        res = collect(path, body, iso(int(time.time() * 1000)), headers.get("Authorization"), self.write_keys)
        if kind is None:
            return res.status, orjson.dumps(res.response()), cors
        if res.status == 401:
            metrics.collector_requests.labels(kind, "401").inc()
            return 401, orjson.dumps(res.response()), {**cors, "WWW-Authenticate": 'Basic realm="cdp"'}
        if res.records:
            size = sum(len(value) for _, value in res.records)
            # Alone, a request always goes (a limit below one request's size must not refuse it for ever).
            if self.inflight_bytes and self.inflight_bytes + size > self.s.collector_max_inflight_bytes:
                return _retry_later(kind, "collector busy, retry", cors)
            self.inflight_bytes += size
            try:
                producer = await self._get_producer()
                futs = [await producer.send(self.s.raw_topic, value, key=key) for key, value in res.records]
                await asyncio.wait_for(asyncio.gather(*futs), self.s.collector_ack_timeout_s)
            except Exception as exc:  # whatever failed, the events are not stored: the client must retry
                log.warning("collector: broker did not acknowledge, answering 503: %r", exc)
                if not isinstance(exc, TimeoutError | KafkaError | OSError):
                    await self.stop()  # an unexpected producer state: start a fresh one for the next request
                return _retry_later(kind, "event store unavailable, retry", cors)
            finally:
                self.inflight_bytes -= size
        metrics.collector_requests.labels(kind, str(res.status)).inc()
        metrics.collector_events.labels("accepted").inc(len(res.records))
        metrics.collector_events.labels("rejected").inc(len(res.rejected))
        return res.status, orjson.dumps(res.response()), cors


def _retry_later(kind: str, error: str, cors: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    """503 with Retry-After: nothing of the request was stored, and the client should send it again."""
    metrics.collector_requests.labels(kind, "503").inc()
    return 503, orjson.dumps({"success": False, "error": error}), {**cors, "Retry-After": "1"}


def mount_on_faust(app: Any, collector: Collector) -> None:
    """The collector's endpoints on the worker's Faust web server."""
    from faust.web import Request, Response, View

    class CollectView(View):
        async def post(self, request: Request, path: str) -> Response:
            return await self._answer("POST", request, path)

        async def options(self, request: Request, path: str) -> Response:
            return await self._answer("OPTIONS", request, path)

        async def _answer(self, method: str, request: Request, path: str) -> Response:
            body = await request.read() if method == "POST" else b""
            status, out, headers = await collector.handle(method, path, request.headers, body)
            return self.bytes(out, content_type="application/json", status=status, headers=headers)

    # One route for every path: core.collect.PATHS says which are endpoints, here as in `cdp collector`.
    app.page("/v1/{path}")(CollectView)


async def run_standalone(settings: Settings) -> None:
    """``cdp collector``: the endpoints alone on an aiohttp server (no agents, no ClickHouse)."""
    from aiohttp import web

    collector = Collector(settings)

    async def endpoint(request: web.Request) -> web.Response:
        body = await request.read() if request.method == "POST" else b""
        status, out, headers = await collector.handle(request.method, request.match_info["path"],
                                                      request.headers, body)
        return web.Response(body=out, status=status, headers=headers, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "role": "collector", "raw_topic": settings.raw_topic})

    app = web.Application(client_max_size=2 * MAX_REQUEST_BYTES)
    app.router.add_route("POST", "/v1/{path}", endpoint)
    app.router.add_route("OPTIONS", "/v1/{path}", endpoint)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, settings.web_host, settings.web_port)
    await site.start()
    log.warning("collector listening on http://%s:%s/v1/", settings.web_host, settings.web_port)
    try:
        await asyncio.Event().wait()
    finally:
        await collector.stop()
        await runner.cleanup()
