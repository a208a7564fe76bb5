"""A deployment without CDP_PII_SALT keeps the salt its first worker made on Kafka: every worker and command of it,
a replacement worker with an empty data directory too, hashes identifiers alike."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from config.settings import Settings
from streams.kafka import delete_topics, deployment_salt, sync_salt

pytestmark = pytest.mark.integration


def test_every_data_directory_of_a_deployment_gets_the_salt_its_first_worker_made(tmp_path, monkeypatch):
    monkeypatch.delenv("CDP_PII_SALT", raising=False)
    prefix = f"salt{uuid.uuid4().hex[:8]}"
    first = Settings(topic_prefix=prefix, data_dir=tmp_path / "one")
    second = Settings(topic_prefix=prefix, data_dir=tmp_path / "two")
    other = Settings(topic_prefix=f"{prefix}x", data_dir=tmp_path / "three")
    try:
        made = sync_salt(first)
        assert len(made) == 64 and first.salt == made
        assert (tmp_path / "one" / "pii_salt").stat().st_mode & 0o777 == 0o600
        assert sync_salt(second) == made and second.salt == made  # a replacement worker: the same salt
        assert asyncio.run(deployment_salt(first)) == made  # never made twice
        assert sync_salt(other) != made  # another deployment has its own
        assert Settings(topic_prefix=prefix, data_dir=tmp_path / "four", pii_salt="given").salt == "given"
    finally:
        for s in (first, other):
            asyncio.run(delete_topics(s, s.topic_prefix))
