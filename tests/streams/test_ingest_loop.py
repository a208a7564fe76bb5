"""The ingest loop's own failure is visible: /healthz reads ``running``, which must not stay true after it."""

from __future__ import annotations

import asyncio

import pytest

from config.settings import Settings
from streams.ingest import Ingest
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
