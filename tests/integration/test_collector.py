"""Segment's own Python SDK, pointed at the worker's collector: what apps already send arrives intact."""

from __future__ import annotations

import orjson
import pytest
from segment.analytics.client import Client

from ops.topics import wait_processed
from ops.worker import post_json, query
from tests.core.helpers import oneid_of
from tests.integration.conftest import run

pytestmark = pytest.mark.integration


def test_segment_sdk_calls_reach_clickhouse_with_their_fields(deployment):
    s = deployment.settings
    deployment.env["CDP_WRITE_KEYS"] = "wk-other,wk-test"
    errors: list = []
    with deployment.worker() as w:
        w.start()
        sync = Client("wk-test", host=w.url, sync_mode=True, on_error=lambda e, batch: errors.append(e))
        sync.identify("u-sdk", {"email": "sdk@example.com", "marketing_consent": True}, message_id="sdk-1")
        sync.track("u-sdk", "Product Added", {"sku": "S-1", "price": 9.5}, message_id="sdk-2")
        sync.page("u-sdk", "Docs", "Getting started", {"path": "/docs"}, message_id="sdk-3")
        sync.alias("anon-before-login", "u-sdk", message_id="sdk-4")
        # The queued client sends one /v1/batch request with several events.
        queued = Client("wk-test", host=w.url, gzip=True, upload_size=100, on_error=lambda e, b: errors.append(e))
        for i in range(5):
            queued.track(anonymous_id="anon-batch", event="Product Viewed", properties={"i": i},
                         message_id=f"sdk-batch-{i}")
        queued.flush()
        queued.join()
        assert errors == []
        assert post_json(w.url + "/v1/track", b'{"messageId":"x","event":"e","userId":"u"}', "wrong-key") == 401
        run(wait_processed(s, timeout_s=120))
        rows = [orjson.loads(line) for line in query(
            s, "SELECT message_id, oneid, type, event, name, properties FROM cdp.events_resolved ORDER BY message_id",
            "JSONEachRow").splitlines()]
    by_id = {r["message_id"]: r for r in rows}
    assert set(by_id) == {"sdk-1", "sdk-2", "sdk-3", "sdk-4", *(f"sdk-batch-{i}" for i in range(5))}
    person = oneid_of("user_id", "u-sdk", s.salt)
    assert all(by_id[m]["oneid"] == person for m in ("sdk-1", "sdk-2", "sdk-3", "sdk-4"))
    assert by_id["sdk-1"]["type"] == "identify"
    assert by_id["sdk-2"]["event"] == "add_to_cart" and orjson.loads(by_id["sdk-2"]["properties"])["sku"] == "S-1"
    assert by_id["sdk-3"]["type"] == "page" and by_id["sdk-3"]["name"] == "Getting started"
    assert by_id["sdk-4"]["type"] == "alias"
    batch = [by_id[f"sdk-batch-{i}"] for i in range(5)]
    assert {r["event"] for r in batch} == {"product_view"}
    assert {r["oneid"] for r in batch} == {oneid_of("anonymous_id", "anon-batch", s.salt)}
