"""The collector adapter without a broker: CORS (as Segment's browser SDK needs it), auth and bad requests never reach
Kafka; a slow broker makes it answer 503 at once rather than hold events without bound; ``cdp collector`` serves the
same paths over HTTP."""

import asyncio
import contextlib
import socket

import aiohttp
import orjson

from config.settings import Settings
from streams.collector import Collector, run_standalone


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_preflight_answers_cors_for_browser_sdks():
    c = Collector(Settings(write_keys="k1"))
    status, _, headers = await c.handle("OPTIONS", "batch", {"Origin": "https://shop.example"}, b"")
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "Authorization" in headers["Access-Control-Allow-Headers"]


async def test_unauthorised_and_invalid_requests_are_answered_without_kafka():
    c = Collector(Settings(write_keys="k1", kafka_bootstrap="127.0.0.1:1"))
    status, _, headers = await c.handle("POST", "track", {}, b"{}")
    assert status == 401 and "WWW-Authenticate" in headers
    status, body, _ = await c.handle("POST", "track", {"Authorization": "Basic azE6"}, b"{oops")
    assert status == 400 and orjson.loads(body)["success"] is False
    assert c.producer is None  # nothing was published, no connection was even tried


class HeldProducer:
    """A broker that acknowledges only when the test says so."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.sent = 0

    async def send(self, topic, value, key=None):
        self.sent += 1
        release = self.release

        async def ack():
            await release.wait()
        return ack()


async def test_a_collector_holding_its_limit_of_unacknowledged_events_answers_503_at_once():
    event = orjson.dumps({"type": "track", "event": "x", "userId": "u1", "messageId": "m1"})
    c = Collector(Settings(write_keys="k1", collector_max_inflight_bytes=len(event) + 10))
    c.producer = broker = HeldProducer()
    auth = {"Authorization": "Basic azE6"}
    first = asyncio.create_task(c.handle("POST", "track", auth, event))
    await asyncio.sleep(0.01)
    assert c.inflight_bytes > 0 and not first.done()
    # A slow broker: the next request is told to retry at once, nothing of it is sent.
    status, body, headers = await c.handle("POST", "track", auth, event)
    assert (status, headers["Retry-After"], broker.sent) == (503, "1", 1)
    assert orjson.loads(body)["success"] is False
    broker.release.set()
    assert (await first)[0] == 200 and c.inflight_bytes == 0
    assert (await c.handle("POST", "track", auth, event))[0] == 200  # the retry goes through


class RecordingProducer:
    """A broker that acknowledges at once and keeps what it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    async def send(self, topic, value, key=None):
        self.sent.append((topic, value, key))

        async def ack():
            return None
        return ack()


async def test_a_preflight_is_allowed_every_header_the_browser_sdk_asks_for_on_any_v1_path():
    c = Collector(Settings(write_keys="k1"))
    asked = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type,x-retry-count"}
    for path in ("t", "i", "p", "s", "a", "g", "b", "track", "batch", "nope"):
        status, body, headers = await c.handle("OPTIONS", path, asked, b"")
        assert (status, body, headers["Access-Control-Allow-Origin"]) == (204, b"", "https://shop.example")
        allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "content-type", "x-retry-count", "content-encoding"} <= allowed
        assert "Origin" in headers["Vary"]
    # The POST that follows an unknown path's preflight gets its real answer, readable by the page.
    status, body, headers = await c.handle("POST", "nope", {"Origin": "https://shop.example"}, b"{}")
    assert status == 404 and headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert c.producer is None


async def test_analytics_next_text_plain_bodies_with_the_write_key_inside_are_published_without_it():
    c = Collector(Settings(write_keys="k1"))
    c.producer = broker = RecordingProducer()
    origin = {"Origin": "https://shop.example", "Content-Type": "text/plain"}
    event = {"type": "track", "event": "x", "userId": "u1", "messageId": "m1", "writeKey": "k1"}
    status, _, headers = await c.handle("POST", "t", origin, orjson.dumps(event))
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://shop.example"
    batch = {"writeKey": "k1", "batch": [{**event, "messageId": "m2"}, {**event, "messageId": "m3"}]}
    assert (await c.handle("POST", "b", origin, orjson.dumps(batch)))[0] == 200
    assert [orjson.loads(v)["messageId"] for _, v, _ in broker.sent] == ["m1", "m2", "m3"]
    assert all(b"writeKey" not in v and b"k1" not in v for _, v, _ in broker.sent)
    # A wrong key is refused with the CORS headers, so the page (and the SDK) can read the 401.
    status, _, headers = await c.handle("POST", "t", origin, orjson.dumps({**event, "writeKey": "k2"}))
    assert status == 401 and headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert len(broker.sent) == 3


async def test_cdp_collector_serves_the_one_letter_paths_over_http():
    settings = Settings(write_keys="k1", kafka_bootstrap="127.0.0.1:1", web_host="127.0.0.1", web_port=free_port())
    server = asyncio.create_task(run_standalone(settings))
    url = f"http://127.0.0.1:{settings.web_port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(url + "/healthz") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.05)
            pre = {"Origin": "http://page.example", "Access-Control-Request-Method": "POST",
                   "Access-Control-Request-Headers": "authorization,x-retry-count"}
            async with http.options(url + "/v1/p", headers=pre) as r:
                assert r.status == 204 and "x-retry-count" in r.headers["Access-Control-Allow-Headers"].lower()
                assert r.headers["Access-Control-Allow-Origin"] == "http://page.example"
            body = orjson.dumps({"type": "page", "name": "Home", "anonymousId": "a", "messageId": "m",
                                 "writeKey": "k2"})
            async with http.post(url + "/v1/p", data=body, headers={"Content-Type": "text/plain"}) as r:
                assert r.status == 401  # its key read from the body, as the path was served
            async with http.post(url + "/v1/zz", data=body) as r:
                assert r.status == 404
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
