"""Topics the pipeline creates: CDP_REPLICATION_FACTOR reaches every one (ours and Faust's changelog), a factor
the cluster cannot meet fails at once with a plain message, and created topics have leaders before any send."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidReplicationFactorError

from config.settings import Settings
from streams.app import build_pipeline
from streams.kafka import (
    TopicSetupError,
    admin_client,
    client_kwargs,
    delete_topics,
    ensure_topics,
    new_topics,
    pipeline_topics,
)


def test_the_replication_factor_setting_reaches_new_topics(monkeypatch):
    monkeypatch.setenv("CDP_REPLICATION_FACTOR", "3")
    s = Settings(partitions=6)
    assert s.replication_factor == 3
    topics = new_topics(s, pipeline_topics(s))
    one_partition = {s.identity_topic, s.identity_directory_topic}  # the link writer's (docs/identity.md)
    assert [(t.name, t.num_partitions, t.replication_factor) for t in topics] == \
        [(n, 1 if n in one_partition else 6, 3) for n in pipeline_topics(s)]


def test_the_local_default_is_one_replica():
    assert Settings().replication_factor == 1


def test_the_replication_factor_setting_reaches_fausts_topics(tmp_path):
    s = Settings(topic_prefix="rftest", data_dir=tmp_path, partitions=2, replication_factor=3)
    p = build_pipeline(s, with_ingest=False, store="memory://")
    assert p.app.conf.topic_replication_factor == 3
    # The changelog (and the agents' topics) leave replicas unset, so Faust declares them with the app's factor.
    changelog = p.app.tables["persons"].changelog_topic
    assert changelog.get_topic_name() == "rftest-pipeline-persons-changelog"
    assert changelog.replicas is None


@pytest.fixture()
def settings(tmp_path):
    s = Settings(topic_prefix=f"tk{uuid.uuid4().hex[:10]}", data_dir=tmp_path, partitions=3)
    yield s
    asyncio.run(delete_topics(s, s.topic_prefix))


async def _replicas(s: Settings, names: list[str]) -> dict[str, list[int]]:
    async with admin_client(s) as admin:
        return {t["topic"]: sorted(len(p["replicas"]) for p in t["partitions"])
                for t in await admin.describe_topics(names)}


@pytest.mark.integration
async def test_topics_are_created_with_the_setting_and_led_before_ensure_topics_returns(settings, caplog):
    s = settings
    caplog.set_level(logging.WARNING, logger="aiokafka")
    await ensure_topics(s)
    names = pipeline_topics(s)
    async with admin_client(s) as admin:
        described = await admin.describe_topics(names)
    assert sorted(t["topic"] for t in described) == sorted(names)
    for t in described:
        assert t["error_code"] == 0
        one = t["topic"] in (s.identity_topic, s.identity_directory_topic)
        assert sorted(p["partition"] for p in t["partitions"]) == ([0] if one else [0, 1, 2])
        assert all(p["leader"] >= 0 and len(p["replicas"]) == 1 for p in t["partitions"]), t
    # A send right away to every partition of a new topic is acknowledged on its first try.
    producer = AIOKafkaProducer(**client_kwargs(s), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = [await producer.send_and_wait(s.raw_topic, b"x", partition=p) for p in range(3)]
    finally:
        await producer.stop()
    assert [m.offset for m in sent] == [0, 0, 0]
    # (Without waiting for the leaders to serve them, aiokafka logs "NotLeaderForPartitionError, retrying".)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("aiokafka")] == []
    await ensure_topics(s)  # idempotent: existing topics are left as they are


@pytest.mark.integration
async def test_a_replication_factor_the_cluster_cannot_meet_fails_at_once_with_a_plain_message(settings):
    s = settings.model_copy(update={"replication_factor": 2})
    with pytest.raises(TopicSetupError) as e:
        await asyncio.wait_for(ensure_topics(s), timeout=20)  # refused by the broker, not waited on
    msg = str(e.value)
    assert "refused to create topic" in msg and s.topic_prefix in msg
    assert "only 1 broker(s)" in msg  # Kafka's own reason
    assert "CDP_REPLICATION_FACTOR is 2" in msg and "InvalidReplicationFactorError" in msg
    async with admin_client(s) as admin:
        assert not [t for t in await admin.list_topics() if t.startswith(s.topic_prefix)]


@pytest.mark.integration
async def test_fausts_changelog_is_created_with_the_setting(settings):
    p = build_pipeline(settings, with_ingest=False, store="memory://")
    changelog = p.app.tables["persons"].changelog_topic
    await p.app.producer.start()
    try:
        await changelog.maybe_declare()
    finally:
        await p.app.producer.stop()
    assert await _replicas(settings, [changelog.get_topic_name()]) == {changelog.get_topic_name(): [1, 1, 1]}

    s2 = settings.model_copy(update={"replication_factor": 2, "topic_prefix": settings.topic_prefix + "b"})
    p2 = build_pipeline(s2, with_ingest=False, store="memory://")
    await p2.app.producer.start()
    try:
        with pytest.raises(InvalidReplicationFactorError):  # the factor is what Faust asked the broker for
            await p2.app.tables["persons"].changelog_topic.maybe_declare()
    finally:
        await p2.app.producer.stop()
