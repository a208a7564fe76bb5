"""aiokafka clients and topics, configured from settings (security settings passed through)."""

from __future__ import annotations

import asyncio
import os
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import InvalidReplicationFactorError, KafkaTimeoutError, TopicAlreadyExistsError, for_code

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
            *(s.action_topic(c.value) for c in Channel), s.identity_topic, s.identity_directory_topic]


@asynccontextmanager
async def admin_client(s: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(**client_kwargs(s), request_timeout_ms=30000)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


@dataclass(frozen=True)
class TopicLayout:
    """A topic's partitions and topic configs where they are not the pipeline's (``CDP_PARTITIONS``, the
    broker's defaults)."""

    partitions: int | None = None  # None: CDP_PARTITIONS
    configs: Mapping[str, str] = field(default_factory=dict)


# The identity directory: one partition (one total order of the link writer's decisions), compacted (only each
# key's latest record matters, and a replica rebuilt from the topic reads no more than the directory holds).
DIRECTORY_LAYOUT = TopicLayout(partitions=1, configs={"cleanup.policy": "compact"})
# The link writer's input: one partition, so links are decided by one writer in one order (docs/identity.md).
IDENTITY_LAYOUT = TopicLayout(partitions=1)


def fixed_layouts(s: Settings) -> dict[str, TopicLayout]:
    """Topics whose layout is part of the design, whoever creates them."""
    return {s.identity_directory_topic: DIRECTORY_LAYOUT, s.identity_topic: IDENTITY_LAYOUT}


def new_topics(s: Settings, names: list[str], layouts: Mapping[str, TopicLayout] | None = None) -> list[NewTopic]:
    """``layouts`` (by topic name) over ``fixed_layouts``; other topics: CDP_PARTITIONS, broker defaults."""
    known = {**fixed_layouts(s), **(layouts or {})}
    out = []
    for n in names:
        layout = known.get(n, TopicLayout())
        out.append(NewTopic(n, layout.partitions or s.partitions, s.replication_factor,
                            topic_configs=dict(layout.configs)))
    return out


class TopicSetupError(RuntimeError):
    """The cluster refused to create a topic the pipeline needs, or its partitions got no leader in time."""


# Kept forever and never compacted: the record at offset 0 is the salt, whoever wrote one after it.
SALT_LAYOUT = TopicLayout(partitions=1, configs={"cleanup.policy": "delete", "retention.ms": "-1",
                                                 "retention.bytes": "-1"})


async def deployment_salt(s: Settings) -> str:
    """The salt kept on ``s.salt_topic``: the first record ever written there (of two workers starting at once,
    both take the one at offset 0), written now, random, if there is none."""
    await ensure_topics(s, [s.salt_topic], layouts={s.salt_topic: SALT_LAYOUT})
    tp = TopicPartition(s.salt_topic, 0)
    for attempt in range(2):
        consumer = AIOKafkaConsumer(**client_kwargs(s), enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            if end > 0:
                consumer.seek(tp, 0)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    got = (await consumer.getmany(tp, timeout_ms=1000)).get(tp)
                    if got:
                        return bytes(got[0].value).decode()
                raise RuntimeError(f"the salt on {s.salt_topic} could not be read")
        finally:
            await consumer.stop()
        if attempt == 0:
            producer = AIOKafkaProducer(**client_kwargs(s), acks="all", enable_idempotence=True)
            await producer.start()
            try:
                await producer.send_and_wait(s.salt_topic, secrets.token_hex(32).encode(), key=b"pii_salt",
                                             partition=0)
            finally:
                await producer.stop()
    raise RuntimeError(f"no salt on {s.salt_topic} after writing one")


def sync_salt(s: Settings) -> str:
    """Make ``s.salt`` the deployment's (unless ``CDP_PII_SALT`` sets it): read it from Kafka, keep it in the data
    directory. Runs its own event loop on a thread, so it may be called from inside one."""
    if s.pii_salt:
        return s.pii_salt
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        salt = pool.submit(asyncio.run, deployment_salt(s)).result()
    path = s.data_dir / "pii_salt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"pii_salt.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(salt)
    os.replace(tmp, path)
    s.__dict__.pop("salt", None)  # the cached value, if it was read before
    return salt


async def ensure_topics(s: Settings, names: list[str] | None = None, leader_timeout_s: float = 30.0,
                        layouts: Mapping[str, TopicLayout] | None = None) -> None:
    """Create the topics with ``CDP_PARTITIONS`` partitions (or as ``layouts`` and ``fixed_layouts`` say) and
    ``CDP_REPLICATION_FACTOR`` replicas if they do not exist yet (idempotent; an existing topic is left as it is),
    and return once every partition of those created is served by its leader: a producer
    that sends to a partition before that gets ``NotLeaderForPartitionError`` and retries, noisily.

    Raises ``TopicSetupError`` saying which topic and why when the cluster refuses (a replication factor above
    its number of brokers is refused at once), or when leaders are not elected within ``leader_timeout_s``."""
    async with admin_client(s) as admin:
        existing = set(await admin.list_topics())
        todo = [n for n in (names or pipeline_topics(s)) if n not in existing]
        if not todo:
            return
        # The response carries an error per topic; the request itself does not fail.
        resp = await admin.create_topics(new_topics(s, todo, layouts))
        refused = [(e[0], e[1], e[2] if len(e) > 2 else None) for e in resp.topic_errors
                   if e[1] not in (0, TopicAlreadyExistsError.errno)]  # already there: another worker won the race
        if refused:
            raise TopicSetupError(_refusal(s, refused))
        await _wait_for_leaders(s, admin, todo, leader_timeout_s)


def _refusal(s: Settings, refused: list[tuple[str, int, str | None]]) -> str:
    name, code, message = refused[0]
    kind = f"Kafka error {code}, {for_code(code).__name__}"
    why = f"{message} ({kind})" if message else kind
    more = f" and {len(refused) - 1} more" if len(refused) > 1 else ""
    hint = ""
    if code == InvalidReplicationFactorError.errno:
        hint = (f"; CDP_REPLICATION_FACTOR is {s.replication_factor}: set it to at most the number of brokers"
                " (1 for the local broker)")
    return f"Kafka at {s.kafka_bootstrap} refused to create topic {name}{more}: {why}{hint}"


def _leaderless(described: list[dict[str, Any]], names: list[str]) -> list[str]:
    """Those of ``names`` not yet known with every partition led (``describe_topics``' answer)."""
    ready = {t["topic"] for t in described
             if t["error_code"] == 0 and t["partitions"]
             and all(p["error_code"] == 0 and p["leader"] >= 0 for p in t["partitions"])}
    return [n for n in names if n not in ready]


def _some(names: list[str]) -> str:
    """The first three names, for a message."""
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")


async def _wait_for_leaders(s: Settings, admin: AIOKafkaAdminClient, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = names
    described: dict[str, list[int]] = {}
    while True:
        got = await admin.describe_topics(waiting)
        waiting = _leaderless(got, waiting)
        described.update({t["topic"]: [p["partition"] for p in t["partitions"]] for t in got})
        if not waiting:
            break
        if time.monotonic() > deadline:
            raise TopicSetupError(f"partitions of {_some(waiting)} "
                                  f"have no leader {timeout_s:g} s after the topics were created")
        await asyncio.sleep(0.05)
    # The metadata names a leader a moment before that broker serves the partition (KRaft brokers publish the
    # new metadata before their replica manager opens the log), and a produce in between is answered
    # NOT_LEADER_OR_FOLLOWER. An offsets request goes the same way at the leader; aiokafka retries it quietly.
    left_ms = max(1000, int((deadline - time.monotonic()) * 1000))
    c = AIOKafkaConsumer(**client_kwargs(s), request_timeout_ms=left_ms)
    await c.start()
    try:
        await c.end_offsets([TopicPartition(n, p) for n in names for p in described[n]])
    except KafkaTimeoutError:
        raise TopicSetupError(f"partitions of {_some(names)} are not "
                              f"served by their leaders {timeout_s:g} s after the topics were created") from None
    finally:
        await c.stop()


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
