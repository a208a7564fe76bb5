"""The ingest loop's faults are visible: /healthz reads ``running``, which must not stay true after the loop fails,
and ``faults()``, which names what the ingest cannot get past by itself (with a metric and a log line), while Kafka
errors it gets past by itself (a broker restart) leave it ready for a bounded time."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka import codec as aiokafka_codec
from aiokafka.errors import KafkaConnectionError, UnsupportedCodecError

from config.settings import Settings
from ops.topics import committed_offsets
from streams import ingest as ingest_module
from streams import metrics
from streams.app import Pipeline, health
from streams.ingest import Ingest
from streams.kafka import client_kwargs, delete_topics, ensure_topics
from tests.core.helpers import RULES


class _FailingConsumer:
    async def getmany(self, **_: object) -> dict:
        raise RuntimeError("not a Kafka error: nothing the loop knows how to recover from")


def test_an_ingest_loop_that_fails_is_no_longer_running(caplog):
    ingest = Ingest(Settings(), RULES)
    ingest.consumer = _FailingConsumer()  # type: ignore[assignment]
    with pytest.raises(RuntimeError):
        asyncio.run(ingest.run())
    assert ingest.running is False
    assert "ingest stopped" in caplog.text


class _ScriptedConsumer:
    """One assigned raw partition at its end; ``getmany`` raises ``error`` while it is set."""

    def __init__(self, s: Settings) -> None:
        self.tp = TopicPartition(s.raw_topic, 0)
        self.error: BaseException | None = None
        self.fetches = 0

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    async def committed(self, tp: TopicPartition) -> int:
        return 0

    def seek(self, tp: TopicPartition, offset: int) -> None:
        pass

    def highwater(self, tp: TopicPartition) -> int:
        return 0

    async def position(self, tp: TopicPartition) -> int:
        return 0

    async def getmany(self, **_: object) -> dict:
        self.fetches += 1
        await asyncio.sleep(0.01)
        if self.error is not None:
            raise self.error
        return {}


class _Producer:
    async def send(self, *_: object, **__: object) -> asyncio.Future:
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _scripted(s: Settings) -> tuple[Ingest, _ScriptedConsumer]:
    ingest = Ingest(s, RULES)
    consumer = _ScriptedConsumer(s)
    ingest.consumer = consumer  # type: ignore[assignment]
    ingest.producer = _Producer()  # type: ignore[assignment]
    return ingest, consumer


def _pipeline(ingest: Ingest) -> Pipeline:
    return Pipeline(None, ingest.s, RULES, None, ingest, None, None)  # type: ignore[arg-type]


async def _until(cond, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _failures(kind: str) -> float:
    return metrics.ingest_failures.labels(kind)._value.get()


def test_kafka_errors_are_retried_with_backoff_and_show_only_once_they_last(monkeypatch, caplog):
    monkeypatch.setattr(ingest_module, "INGEST_RETRY_MIN_S", 0.05)
    monkeypatch.setattr(ingest_module, "INGEST_FAILING_READY_S", 0.6)
    s = Settings(topic_prefix=f"t{uuid.uuid4().hex[:8]}")
    ingest, consumer = _scripted(s)
    before = _failures("kafka")

    async def scenario() -> None:
        task = asyncio.ensure_future(ingest.run())
        consumer.error = KafkaConnectionError("broker away")
        await _until(lambda: ingest._failing is not None)
        started = time.monotonic()
        # A broker restart: retried from the last commit, and ready meanwhile.
        assert health(_pipeline(ingest))["ready"] is True
        assert metrics.ingest_failing._value.get() == 1
        await _until(lambda: not health(_pipeline(ingest))["ready"])
        assert time.monotonic() - started >= 0.4
        fault = health(_pipeline(ingest))["ingest"]["faults"][0]
        assert fault["kind"] == "kafka" and "broker away" in fault["error"] and fault["tries"] >= 2
        # The waits double: far fewer fetches than a retry every 50 ms would make.
        assert consumer.fetches <= 6
        consumer.error = None
        await _until(lambda: health(_pipeline(ingest))["ready"])
        assert ingest.faults() == [] and metrics.ingest_failing._value.get() == 0
        ingest._stopping.set()
        await task

    asyncio.run(scenario())
    assert _failures("kafka") - before >= 2
    assert "re-reading from the last commit" in caplog.text and "reading again" in caplog.text


def test_a_batch_it_cannot_read_is_a_fault_at_once_even_where_aiokafka_does_not_say_where(monkeypatch, caplog):
    # aiokafka's own records (a version streams.raw_records does not know) raise out of getmany.
    monkeypatch.setattr(ingest_module, "INGEST_STALL_RETRY_MIN_S", 0.05)
    s = Settings(topic_prefix=f"t{uuid.uuid4().hex[:8]}")
    ingest, consumer = _scripted(s)
    consumer.error = UnsupportedCodecError("Libraries for snappy compression codec not found")
    before = _failures("unsupported_codec")

    async def scenario() -> None:
        task = asyncio.ensure_future(ingest.run())
        await _until(lambda: ingest._failing is not None)
        h = health(_pipeline(ingest))
        assert h["ready"] is False and h["ingest"]["running"] is True
        assert h["ingest"]["faults"][0]["kind"] == "unsupported_codec"
        ingest._stopping.set()
        await task

    asyncio.run(scenario())
    assert _failures("unsupported_codec") > before
    assert any(r.levelno == logging.ERROR and "snappy" in r.getMessage() for r in caplog.records)


async def _publish(s: Settings, partition: int, values: list[bytes], compression: str | None) -> None:
    producer = AIOKafkaProducer(**client_kwargs(s), acks="all", compression_type=compression, linger_ms=20)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(s.raw_topic, v, partition=partition) for v in values])
    finally:
        await producer.stop()


def _events(prefix: str, n: int) -> list[bytes]:
    return [orjson.dumps({"type": "track", "event": "product_view", "messageId": f"{prefix}-{i}",
                          "userId": f"u{i % 5}", "timestamp": "2026-09-21T10:00:00.000Z"}) for i in range(n)]


@pytest.mark.integration
def test_a_codec_the_ingest_cannot_decompress_stops_its_partition_visibly_and_reading_resumes_once_it_can(
        monkeypatch, caplog):
    """On the real broker: snappy batches while this process lacks snappy. Their partition stops at the first of
    them (the records before it and the other partition go on), /healthz says not ready and names the partition and
    offset, the metric counts it, a log line says where; with the codec back, the next try reads on."""
    monkeypatch.setattr(ingest_module, "INGEST_STALL_RETRY_MAX_S", 0.5)
    s = Settings(topic_prefix=f"tc{uuid.uuid4().hex[:10]}", partitions=2)
    stalled = TopicPartition(s.raw_topic, 0)
    before = _failures("unsupported_codec")

    async def scenario() -> None:
        await ensure_topics(s)
        await _publish(s, 0, _events("plain", 5), None)
        await _publish(s, 0, _events("snappy", 20), "snappy")
        await _publish(s, 0, _events("after", 5), None)
        await _publish(s, 1, _events("other", 20), None)
        with monkeypatch.context() as m:
            m.setattr(aiokafka_codec, "has_snappy", lambda: False)  # as without the codec's library
            ingest = Ingest(s, RULES)
            await ingest.start()
            task = asyncio.ensure_future(ingest.run())
            try:
                await _until(lambda: bool(ingest.faults()), 60)
                h = health(_pipeline(ingest))
                assert h["ready"] is False
                [fault] = h["ingest"]["faults"]
                assert (fault["kind"], fault["topic"], fault["partition"], fault["offset"]) == \
                    ("unsupported_codec", s.raw_topic, 0, 5)
                assert metrics.ingest_stalled_partitions._value.get() == 1
                # Nothing skipped, nothing held back that could be read: the records before it, the other partition.
                deadline = time.monotonic() + 30
                while await committed_offsets(s, s.ingest_group, s.raw_topic) != {0: 5, 1: 20}:
                    assert time.monotonic() < deadline, await committed_offsets(s, s.ingest_group, s.raw_topic)
                    await asyncio.sleep(0.2)
                await asyncio.sleep(1.5)  # several tries later: still there, still stopped
                assert await ingest.consumer.position(stalled) == 5 and ingest.records_in == 25
                assert ingest.faults()[0]["tries"] >= 2
            except BaseException:
                ingest._stopping.set()
                await task
                await ingest.stop()
                raise
        try:
            # The codec is back: the next try reads on, to the end.
            deadline = time.monotonic() + 30
            while await committed_offsets(s, s.ingest_group, s.raw_topic) != {0: 30, 1: 20}:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            await _until(lambda: health(_pipeline(ingest))["ready"], 10)
            assert ingest.faults() == [] and metrics.ingest_stalled_partitions._value.get() == 0
        finally:
            ingest._stopping.set()
            await task
            await ingest.stop()
            await delete_topics(s, s.topic_prefix)

    asyncio.run(scenario())
    assert _failures("unsupported_codec") - before >= 2
    located = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"{s.raw_topic} partition 0 at offset 5" in m and "snappy" in m for m in located)
    assert f"{s.raw_topic} partition 0 read past offset 5 again" in caplog.text
