"""A backlog (a replay, a worker catching up after downtime) is inserted into ClickHouse in full sink batches, after
a first quarter batch per partition (so the person stage starts inserting early)."""

from __future__ import annotations

import math
import os
import urllib.request

import orjson
import pytest

from config.settings import Settings
from ops.topics import publish_lines, wait_processed
from ops.worker import query
from tests.integration.conftest import run
from traffic.shop import generate

pytestmark = pytest.mark.integration

EVENTS = 24_000
BATCH_ROWS = 6_000


def inserts_of_events(metrics_url: str) -> int:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith('cdp_sink_insert_seconds_count{table="events"}'):
            return int(float(line.split()[-1]))
    return 0


def test_a_backlog_is_inserted_in_full_batches_not_one_per_heartbeat(deployment):
    # Heartbeats every 50 ms while the backlog is read: each used to close the open sink batches, and so did every
    # read that came back short of the batch size, so a backlog went in as many small inserts (and as many state
    # writes per person). Only catching up, or input pausing, may close them early.
    os.environ["CDP_HEARTBEAT_S"] = "0.05"
    os.environ["CDP_SINK_BATCH_ROWS"] = str(BATCH_ROWS)
    s = Settings()
    try:
        lines = [orjson.dumps(e) for e in generate(2_000, 3, seed=21)][:EVENTS]
        assert len(lines) == EVENTS
        run(publish_lines(s, lines))  # the backlog is there before the worker starts
        with deployment.worker() as w:  # it takes the settings above from the environment
            w.start(s)
            run(wait_processed(s, timeout_s=180))
            assert int(query(s, "SELECT count() FROM cdp.events", "TabSeparated").strip()) == EVENTS
            inserts = inserts_of_events(w.url + "/metrics")
    finally:
        os.environ.pop("CDP_HEARTBEAT_S", None)
        os.environ.pop("CDP_SINK_BATCH_ROWS", None)
    # Per person partition: the first quarter batch, full batches, then one with the rest. Every person here is
    # new, so their first events come through the link writer (docs/identity.md), which catches up after the
    # ingest: its tail is inserted in batches closed by the ingest's flush heartbeats once that is caught up, up to
    # four more (one per heartbeat would be hundreds: 0.05 s heartbeats over a backlog of seconds).
    per_partition = math.ceil(EVENTS / s.partitions / BATCH_ROWS) + 6
    assert inserts <= s.partitions * per_partition, inserts
