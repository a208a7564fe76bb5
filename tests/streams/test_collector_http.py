"""The collector adapter without a broker: CORS, auth and bad requests never reach Kafka."""

import orjson

from core.settings import Settings
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
