"""End to end on the real broker and embedded ClickHouse: what apps send is what analysts and senders get."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from aiokafka import AIOKafkaProducer

import core
from ops.dlq import dlq_stats
from ops.topics import publish_lines, read_topic, wait_processed
from ops.worker import query
from streams.kafka import client_kwargs, ensure_topics
from tests.core.helpers import oneid_of
from tests.integration.conftest import run
from traffic.shop import generate

pytestmark = pytest.mark.integration


def count(s, sql: str) -> int:
    return int(query(s, sql, "TabSeparated").strip())


def test_events_are_counted_exactly_once_and_bad_ones_go_to_the_dlq(deployment):
    s = deployment.settings
    events = [orjson.dumps(e) for e in generate(60, 1, seed=11)]
    bad = [b"not json", b'{"type":"track","event":"x","userId":"u"}', b"[1,2,3]", b'{"type":"nope","messageId":"z"}']
    lines: list[bytes] = []
    for i, ev in enumerate(events):
        lines.append(ev)
        if i % 50 == 0:
            lines.append(bad[(i // 50) % len(bad)])
        if i % 10 == 0:
            lines.append(ev)  # an SDK retry: the same messageId again
    n_bad = sum(1 for ln in lines if ln in bad)
    with deployment.worker() as w:
        w.start(s)
        run(publish_lines(s, lines))
        run(wait_processed(s, timeout_s=180))
        assert count(s, "SELECT count() FROM cdp.events") == len(events)
        assert count(s, "SELECT uniqExact(message_id) FROM cdp.events") == len(events)
        # The worker says whether its core runs compiled: built from these sources, it does (core/native.py).
        assert (w.health() or {}).get("compiled_core") is core.NATIVE
    stats = run(dlq_stats(s))
    assert sum(stats.values()) == n_bad
    assert set(stats) <= {("decode", "invalid_json"), ("validate", "schema")}
    rows = [orjson.loads(m.value) for m in run(read_topic(s, s.dlq_topic))]
    assert {r["payload"] for r in rows} == {b.decode() for b in bad if b in lines}
    assert all(r["errors"] and r["source"]["topic"] == s.raw_topic for r in rows)


async def _publish_compressed(s, lines: list[tuple[bytes, list]]) -> None:
    """As an app's producer may: gzip-compressed record batches, records with headers."""
    producer = AIOKafkaProducer(**client_kwargs(s), acks="all", compression_type="gzip", linger_ms=50)
    await producer.start()
    try:
        futures = [await producer.send(s.raw_topic, value, headers=headers) for value, headers in lines]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def test_compressed_batches_with_headers_are_ingested_and_a_bad_ones_headers_kept(deployment):
    s = deployment.settings
    events = [orjson.dumps(e) for e in generate(20, 1, seed=5)]
    headers = [("trace", b"t-1"), ("empty", None)]  # Kafka allows a header without a value
    lines = [(ev, headers if i % 2 else []) for i, ev in enumerate(events)]
    lines.insert(len(lines) // 2, (b"{not json", headers))
    with deployment.worker() as w:
        w.start(s)
        run(ensure_topics(s))
        run(_publish_compressed(s, lines))
        run(wait_processed(s, timeout_s=180))
        assert count(s, "SELECT count() FROM cdp.events") == len(events)
        assert count(s, "SELECT uniqExact(message_id) FROM cdp.events") == len(events)
    [bad] = [orjson.loads(m.value) for m in run(read_topic(s, s.dlq_topic))]
    assert bad["reason"] == "invalid_json" and bad["payload"] == "{not json"
    assert bad["headers"] == {"trace": "t-1", "empty": None}


def test_trigger_emits_exactly_one_action_per_person(deployment):
    s = deployment.settings
    t = datetime.now(UTC) - timedelta(hours=3)

    def ev(mid, typ, user, at, **kw):
        return orjson.dumps({"type": typ, "messageId": mid, "userId": user,
                             "timestamp": at.isoformat().replace("+00:00", "Z"), **kw})

    lines = []
    for i in range(6):
        u = f"person-{i}"
        lines.append(ev(f"id-{i}", "identify", u, t, identities={"phone": f"1380013800{i}"}))
        lines.append(ev(f"cart-{i}", "track", u, t + timedelta(minutes=1), event="Product Added",
                        properties={"sku": "S1"}))
        lines.append(ev(f"cart2-{i}", "track", u, t + timedelta(minutes=2), event="add_to_cart"))
        if i < 2:  # these two pay within the hour: no reminder
            lines.append(ev(f"paid-{i}", "track", u, t + timedelta(minutes=20), event="order_paid"))
    with deployment.worker() as w:
        w.start(s)
        run(publish_lines(s, lines))
        run(wait_processed(s, timeout_s=180))
        # The whole file again, as an app that retried everything would: no second reminder.
        run(publish_lines(s, lines))
        run(wait_processed(s, timeout_s=180))
        assert count(s, "SELECT count() FROM cdp.actions FINAL") == 4
        # The SMS sender reports back on the feedback topic; one report is garbage.
        msgs = run(read_topic(s, s.action_topic("sms")))
        now = datetime.now(UTC).isoformat()
        reports = [orjson.dumps({"action_id": orjson.loads(m.value)["action_id"], "status": "delivered", "at": now})
                   for m in msgs]
        run(publish_lines(s, [*reports, b'{"status": "exploded"}'], topic=s.feedback_topic))
        deadline = time.monotonic() + 60
        while count(s, "SELECT count() FROM cdp.action_feedback") < 4 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert count(s, "SELECT count() FROM cdp.action_feedback FINAL WHERE status = 'delivered'") == 4
        assert count(s, "SELECT count() FROM cdp.action_feedback FINAL") == 4
        assert run(dlq_stats(s)) == {("validate", "feedback_schema"): 1}
    actions = [orjson.loads(m.value) for m in msgs]
    expected = {oneid_of("user_id", f"person-{i}", s.salt) for i in range(2, 6)}
    assert len(actions) == 4 and {a["oneid"] for a in actions} == expected
    assert {m.key.decode() for m in msgs} == expected
    for a in actions:
        assert a["rule_id"] == "cart_not_paid_sms" and a["to"]["phone"].startswith("1380013800")
        assert a["reason"]["trigger_message_id"].startswith("cart-")


def test_cli_replay_then_sql_counts_every_event(deployment, tmp_path):
    n_events = 0
    f = tmp_path / "events.jsonl"
    with f.open("wb") as out:
        for e in generate(40, 1, seed=5):
            out.write(orjson.dumps(e) + b"\n")
            n_events += 1
    env = {**os.environ, **deployment.env}
    cdp = [sys.executable, "-m", "cdp_cli.main"]
    r = subprocess.run([*cdp, "replay", str(f)], env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    # The worker replay started has stopped: `cdp sql` opens the embedded ClickHouse itself.
    r = subprocess.run([*cdp, "sql", "SELECT count() FROM cdp.events"], env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip().splitlines()[-1] == str(n_events)
