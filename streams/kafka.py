"""aiokafka clients and topics, configured from settings (security settings passed through)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from config.settings import Settings
from schemas.actions import Channel


def client_kwargs(s: Settings) -> dict[str, Any]:
    kw: dict[str, Any] = {"bootstrap_servers": s.kafka_bootstrap, "security_protocol": s.kafka_security_protocol}
    if s.kafka_sasl_mechanism:
        kw.update(sasl_mechanism=s.kafka_sasl_mechanism, sasl_plain_username=s.kafka_sasl_username,
                  sasl_plain_password=s.kafka_sasl_password)
    if s.kafka_security_protocol in ("SSL", "SASL_SSL"):
        kw["ssl_context"] = ssl.create_default_context(cafile=s.kafka_ssl_cafile)
    return kw


def batch_producer(s: Settings, client_id: str, linger_ms: int) -> AIOKafkaProducer:
    """An acknowledged, idempotent producer whose batches hold whole envelopes and record batches of person
    states (up to ~700 KB each; aiokafka's default batch is 16 KB)."""
    return AIOKafkaProducer(**client_kwargs(s), acks="all", enable_idempotence=True, linger_ms=linger_ms,
                            max_batch_size=1_048_576, max_request_size=4_194_304, client_id=client_id)


async def topic_partitions(consumer: Any, topic: str) -> list[int]:
    """Partition numbers of a topic, refreshing the client's metadata if it does not know the topic yet."""
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
    return sorted(parts or [])


def pipeline_topics(s: Settings) -> list[str]:
    """Every topic of the public contract plus the internal ones the pipeline writes."""
    return [s.raw_topic, s.dlq_topic, s.person_events_topic, s.profile_changes_topic, s.feedback_topic,
            *(s.action_topic(c.value) for c in Channel)]


@asynccontextmanager
async def admin_client(s: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(**client_kwargs(s), request_timeout_ms=30000)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def ensure_topics(s: Settings, names: list[str] | None = None) -> None:
    """Create the topics with ``CDP_PARTITIONS`` partitions if they do not exist yet (idempotent)."""
    async with admin_client(s) as admin:
        existing = set(await admin.list_topics())
        todo = [n for n in (names or pipeline_topics(s)) if n not in existing]
        if todo:
            try:
                await admin.create_topics([NewTopic(n, s.partitions, 1) for n in todo])
            except TopicAlreadyExistsError:
                pass  # another worker won the race


async def delete_topics(s: Settings, prefix: str) -> int:
    """Delete every topic whose name starts with ``prefix`` (a benchmark's or a test's own); returns how many."""
    if not prefix:
        raise ValueError("refusing to delete every topic")
    async with admin_client(s) as admin:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        for i in range(0, len(names), 100):
            await admin.delete_topics(names[i:i + 100])
        return len(names)


def faust_broker_url(s: Settings) -> str:
    """Faust's broker URL, through our aiokafka transport (streams.faust_transport), registered by scheme."""
    from faust.transport.drivers import TRANSPORTS

    from streams.faust_transport import SCHEME

    TRANSPORTS.aliases.setdefault(SCHEME, "streams.faust_transport:Transport")
    return f"{SCHEME}://{s.kafka_bootstrap}"
