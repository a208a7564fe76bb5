"""The collector adapter without a broker: CORS, auth and bad requests never reach Kafka; a slow broker makes it
answer 503 at once rather than hold events without bound."""

import asyncio

import orjson

from config.settings import Settings
from streams.collector import Collector


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
