"""The identity directory: the link writer's decisions as records, and the ingest's replica of the compacted topic
(on the real broker): it resolves what was written before it started and what arrives after, follows merge
chains, drops a split's pointer, resumes from the offset it stored, and the topic is one compacted partition."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from hypothesis import given
from hypothesis import strategies as st

from config.settings import Settings
from core.identity import IdentityGraph, IdentityRow, Merge, directory_resolve
from core.ids import identifier_hash
from streams import metrics
from streams.directory import DirectoryReplica, directory_records, publish_directory
from streams.kafka import admin_client, client_kwargs, delete_topics, ensure_topics
from tests.core.helpers import RULES

SALT = "directory-test"


def _ident(id_type: str, value: str) -> tuple[str, str, str]:
    return (id_type, identifier_hash(SALT, id_type, value), "masked")


def _sorted(idents: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    return sorted(set(idents), key=lambda i: (-RULES.identity.priority(i[0]), i[1]))


def test_records_put_pointers_before_identifiers_and_keep_each_keys_last_decision():
    identities = [IdentityRow("user_id", "h1", "u***", "o_a", 1, 1), IdentityRow("phone", "h2", "1***", "o_a", 1, 1),
                  IdentityRow("user_id", "h1", "u***", "o_b", 1, 2)]
    merges = [Merge("o_a", "o_b", 2, "m2"), Merge("o_c", "o_b", 2, "m2"),
              Merge("o_a", "o_b", 3, "", "operator", "split")]
    assert directory_records(identities, merges) == [
        (b"m:o_c", b"o_b"), (b"m:o_a", b""), (b"i:h2", b"o_a"), (b"i:h1", b"o_b")]


def _apply(directory: dict[bytes, bytes], records: list[tuple[bytes, bytes]]) -> None:
    """What a replica does with records: "" removes the key."""
    for k, v in records:
        if v:
            directory[k] = v
        else:
            directory.pop(k, None)


def _resolver(directory: dict[bytes, bytes]) -> Callable[[list[str]], str | None]:
    def get(key: str) -> str | None:
        v = directory.get(key.encode())
        return v.decode() if v else None

    return lambda hashes: directory_resolve(hashes, lambda h: get("i:" + h), lambda o: get("m:" + o))


_TYPES = ["user_id", "phone", "device_id", "anonymous_id"]
_events = st.lists(st.lists(st.tuples(st.sampled_from(_TYPES), st.integers(0, 4)), min_size=1, max_size=3),
                   min_size=1, max_size=25)


@given(_events)
def test_the_records_of_a_graphs_decisions_resolve_every_identifier_to_its_persons_survivor(events):
    graph = IdentityGraph(RULES.identity, salt=SALT)
    directory: dict[bytes, bytes] = {}
    seen: set[str] = set()
    for n, event in enumerate(events):
        idents = _sorted([_ident(t, f"{t}{v}") for t, v in event])
        res = graph.resolve(idents, ts=n + 1, message_id=f"m{n}")
        _apply(directory, directory_records(res.identities, res.merges))
        seen.update(h for _, h, _ in idents)
    resolve = _resolver(directory)
    for h in seen:
        person = graph.person_of(h)
        assert person is not None
        assert resolve([h]) == graph.survivor(person)
        assert resolve([h, *(m for _, m in graph.members(person))]) == graph.survivor(person)


def test_the_records_of_a_split_leave_the_split_identifier_its_own_person():
    graph = IdentityGraph(RULES.identity, salt=SALT)
    directory: dict[bytes, bytes] = {}
    anon, user = _ident("anonymous_id", "a1"), _ident("user_id", "u1")
    for n, idents in enumerate([[anon], _sorted([anon, user])]):
        res = graph.resolve(idents, ts=n + 1, message_id=f"m{n}")
        _apply(directory, directory_records(res.identities, res.merges))
    resolve = _resolver(directory)
    assert resolve([anon[1], user[1]]) == graph.person_of(user[1])
    split = graph.split(anon[1], ts=10)
    assert split is not None
    _apply(directory, directory_records(split.identities, split.merges))
    assert resolve([anon[1]]) == graph.person_of(anon[1]) != graph.person_of(user[1])
    assert resolve([anon[1], user[1]]) is None


# --- the replica on the real broker ---------------------------------------------------------------------------------


@pytest.fixture()
async def settings(tmp_path: Path) -> AsyncIterator[Settings]:
    s = Settings(topic_prefix=f"dir{uuid.uuid4().hex[:10]}", data_dir=tmp_path)
    yield s
    await delete_topics(s, s.topic_prefix)


async def _publish(s: Settings, records: list[tuple[bytes, bytes]]) -> None:
    await ensure_topics(s, [s.identity_directory_topic])  # as the link writer does before it writes
    producer = AIOKafkaProducer(**client_kwargs(s), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await publish_directory(producer, s.identity_directory_topic, records)
    finally:
        await producer.stop()


def _replica(s: Settings, cache_size: int = 1000) -> DirectoryReplica:
    return DirectoryReplica(s, s.identity_directory_topic, s.state_dir / "identity-directory", cache_size=cache_size)


async def _poll_until(replica: DirectoryReplica, applied: int) -> None:
    for _ in range(100):
        await replica.poll()
        if replica.applied >= applied:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{replica.applied} records applied, not {applied}")


@pytest.mark.integration
async def test_a_replica_resolves_what_was_written_before_it_started(settings):
    await _publish(settings, [(b"i:h1", b"o_1"), (b"i:h2", b"o_1"), (b"i:h3", b"o_3")])
    replica = _replica(settings)
    await replica.start()
    try:
        assert replica.applied == 3 and replica.lag == 0
        assert replica.resolve(["h1", "h2"]) == "o_1"
        assert replica.resolve(["h1"]) == "o_1"
        assert replica.resolve(["h1", "h3"]) is None  # two persons
        assert replica.resolve(["h1", "unknown"]) is None
        assert replica.resolve([]) is None
    finally:
        await replica.close()


@pytest.mark.integration
async def test_a_chain_of_merges_resolves_to_its_survivor(settings):
    await _publish(settings, [(b"i:a", b"o_A"), (b"i:b", b"o_B"), (b"i:c", b"o_C"), (b"m:o_A", b"o_B")])
    replica = _replica(settings)
    await replica.start()
    try:
        assert replica.resolve(["a", "b"]) == "o_B"
        assert replica.resolve(["a", "c"]) is None
        await replica.poll()
        hits, misses = metrics.directory_hits._value.get(), metrics.directory_misses._value.get()
        # B merged into C after start: the cached "no pointer" of o_B is dropped when the record arrives.
        await _publish(settings, [(b"m:o_B", b"o_C")])
        await _poll_until(replica, 5)
        assert replica.resolve(["a", "b", "c"]) == "o_C"
        assert replica.resolve(["a"]) == "o_C"
        assert replica.resolve(["a", "unknown"]) is None
        await replica.poll()  # the counts reach the metrics between batches
        assert metrics.directory_hits._value.get() == hits + 2
        assert metrics.directory_misses._value.get() == misses + 1
    finally:
        await replica.close()


@pytest.mark.integration
async def test_a_split_pointer_removes_the_merge(settings):
    await _publish(settings, [(b"i:a", b"o_A"), (b"i:b", b"o_B"), (b"m:o_A", b"o_B")])
    replica = _replica(settings)
    await replica.start()
    try:
        assert replica.resolve(["a", "b"]) == "o_B"  # the pointer is now cached
        await _publish(settings, [(b"m:o_A", b"")])
        await _poll_until(replica, 4)
        assert replica.resolve(["a"]) == "o_A"
        assert replica.resolve(["a", "b"]) is None
    finally:
        await replica.close()
    again = _replica(settings, cache_size=0)  # read from RocksDB alone: the key is gone there too
    await again.start()
    try:
        assert again.resolve(["a"]) == "o_A"
    finally:
        await again.close()


@pytest.mark.integration
async def test_a_restarted_replica_reads_only_what_arrived_since_its_stored_offset(settings):
    await _publish(settings, [(b"i:h1", b"o_1"), (b"i:h2", b"o_2"), (b"i:h3", b"o_3")])
    first = _replica(settings)
    await first.start()
    assert first.applied == 3
    await first.close()
    await _publish(settings, [(b"m:o_2", b"o_1"), (b"i:h4", b"o_1")])
    second = _replica(settings)
    await second.start()
    try:
        assert second.applied == 2
        assert second.resolve(["h1", "h2", "h4"]) == "o_1"
        assert second.resolve(["h3"]) == "o_3"  # applied by the first, kept in the database
    finally:
        await second.close()


@pytest.mark.integration
async def test_a_replica_of_a_topic_created_again_is_rebuilt(settings):
    await _publish(settings, [(b"i:h1", b"o_1"), (b"i:h2", b"o_2"), (b"i:h3", b"o_3")])
    first = _replica(settings)
    await first.start()
    await first.close()
    await delete_topics(settings, settings.identity_directory_topic)
    for _ in range(100):  # the deletion completes in the background
        async with admin_client(settings) as admin:
            if settings.identity_directory_topic not in await admin.list_topics():
                break
        await asyncio.sleep(0.1)
    second = _replica(settings)
    await second.start()
    try:
        await _publish(settings, [(b"i:h9", b"o_9")])
        await _poll_until(second, 1)
        assert second.resolve(["h9"]) == "o_9"
        assert second.resolve(["h1"]) is None  # of the deleted topic
    finally:
        await second.close()


@pytest.mark.integration
async def test_the_directory_topic_is_one_compacted_partition(settings):
    replica = _replica(settings)
    await replica.start()  # creates the topic when no one has yet
    await replica.close()
    topic = settings.identity_directory_topic
    async with admin_client(settings) as admin:
        [described] = await admin.describe_topics([topic])
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    assert len(described["partitions"]) == 1
    [resource] = response.resources
    configs = {entry[0]: entry[1] for entry in resource[4]}
    assert configs["cleanup.policy"] == "compact"
