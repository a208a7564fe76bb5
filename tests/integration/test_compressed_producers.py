"""Apps' Java producers (the broker's own kafka-clients) with every compression.type Kafka has: none, gzip, snappy,
lz4, zstd. Every event lands in ClickHouse exactly once, nothing is dead-lettered, the worker stays ready, and the
operations' reader (ops.topics) reads them all."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from ops.dlq import dlq_stats
from ops.topics import read_topic, wait_processed
from ops.worker import query
from streams.kafka import ensure_topics
from tests.integration.conftest import run

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KAFKA_LIBS = ROOT / ".local" / "kafka" / "libs"  # the broker's jars: kafka-clients, snappy-java, lz4-java, zstd-jni
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
PER_CODEC = 400


@pytest.fixture(scope="module")
def java_producer(tmp_path_factory) -> list[str]:
    """The command that runs tests/integration/java/Produce.java, compiled against the broker's jars."""
    if shutil.which("javac") is None or not (KAFKA_LIBS / "kafka-clients-4.1.1.jar").exists():
        pytest.fail(f"needs javac and the broker's jars in {KAFKA_LIBS} (make test fetches them)")
    out = tmp_path_factory.mktemp("java")
    classpath = f"{KAFKA_LIBS}/*"
    subprocess.run(["javac", "-cp", classpath, "-d", str(out), str(Path(__file__).parent / "java" / "Produce.java")],
                   check=True, capture_output=True)
    return ["java", "-cp", f"{out}:{classpath}", "Produce"]


def _event(codec: str, i: int) -> dict:
    ev: dict = {"type": "track", "event": "product_view", "messageId": f"{codec}-{i}",
                "timestamp": "2026-09-21T10:00:00.000Z", "properties": {"sku": f"S-{i % 37}", "price": 19.9}}
    if i % 4:
        ev["userId"] = f"u{i % 50}"
    else:
        ev["anonymousId"] = f"a{i % 50}"
    return ev


def test_every_codec_an_app_may_compress_with_lands_exactly_once(deployment, java_producer):
    s = deployment.settings
    lines = []
    for codec in CODECS:
        for i in range(PER_CODEC):
            ev = _event(codec, i)
            key = ev.get("userId", "") if i % 3 else ""  # some without a key, as apps do
            lines.append(f"{codec}\t{key}\t{orjson.dumps(ev).decode()}")
    with deployment.worker() as w:
        w.start(s)
        run(ensure_topics(s))
        out = subprocess.run([*java_producer, s.kafka_bootstrap, s.raw_topic], input="\n".join(lines) + "\n",
                             capture_output=True, text=True, timeout=180, check=False)
        assert out.returncode == 0, out.stderr[-3000:]
        sent = {codec: (int(n), float(rate)) for codec, n, rate in
                (ln.split() for ln in out.stdout.splitlines() if ln.split() and ln.split()[0] in CODECS)}
        assert {c: n for c, (n, _) in sent.items()} == dict.fromkeys(CODECS, PER_CODEC)
        # The batches were compressed as asked: the producer's own measure of compressed over plain size.
        assert all(sent[c][1] < 0.8 for c in CODECS if c != "none"), sent
        run(wait_processed(s, timeout_s=180))
        rows = query(s, "SELECT splitByChar('-', message_id)[1] AS codec, count(), uniqExact(message_id) "
                        "FROM cdp.events GROUP BY codec ORDER BY codec", "TabSeparated").decode()
        got = {c: (int(n), int(u)) for c, n, u in (ln.split("\t") for ln in rows.splitlines())}
        assert got == dict.fromkeys(CODECS, (PER_CODEC, PER_CODEC))
        h = w.health() or {}
        assert h.get("ready") is True and h["ingest"]["faults"] == []
    assert run(dlq_stats(s)) == {}
    # The operations' own reader (ops.topics, behind the DLQ tools) reads every codec too.
    raw = run(read_topic(s, s.raw_topic))
    assert sorted(orjson.loads(m.value)["messageId"] for m in raw) == sorted(
        f"{c}-{i}" for c in CODECS for i in range(PER_CODEC))
