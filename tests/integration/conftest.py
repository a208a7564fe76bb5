"""Integration fixtures: the real local broker (``make test`` starts it) and a worker per test, each test with its
own topic prefix (so its own topics, consumer groups and Faust app id), ClickHouse path, state and web port."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from config.settings import Settings
from ops.worker import WorkerProcess
from streams.kafka import delete_topics

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def broker() -> None:
    host, _, port = os.environ.get("CDP_KAFKA_BOOTSTRAP", "127.0.0.1:9092").partition(",")[0].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        pytest.fail(f"no Kafka broker at {host}:{port}: run the tests with `make test` (it starts one)")


@dataclass
class Deployment:
    settings: Settings
    env: dict[str, str]
    dir: Path

    def worker(self) -> WorkerProcess:
        return WorkerProcess(env=self.env, log_path=self.dir / "worker.log")


@pytest.fixture()
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    env = {
        "CDP_TOPIC_PREFIX": f"it{uuid.uuid4().hex[:10]}",
        "CDP_CLICKHOUSE_URL": f"chdb://{tmp_path / 'clickhouse'}",
        "CDP_DATA_DIR": str(tmp_path),
        "CDP_WEB_PORT": str(free_port()),
        "CDP_PARTITIONS": "2",
        "CDP_LOG_LEVEL": "INFO",
        # Every process of the test hashes identifiers alike (a worker would otherwise take the deployment's salt
        # from Kafka: tests/streams/test_salt.py).
        "CDP_PII_SALT": uuid.uuid4().hex,
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield Deployment(Settings(), env, tmp_path)
    finally:
        try:  # the broker outlives the test: leave no topics behind on it
            asyncio.run(delete_topics(Settings(), env["CDP_TOPIC_PREFIX"]))
        except Exception as exc:  # a test that stopped the broker: nothing to clean
            print(f"topics of {env['CDP_TOPIC_PREFIX']} not deleted: {exc!r}")
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(coro):
    return asyncio.run(coro)
