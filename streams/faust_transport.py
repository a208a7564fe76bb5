"""Faust's aiokafka transport with a short broker-side fetch wait for the worker's consumer.

Faust's consumer asks the broker to hold a fetch that finds nothing new for up to 1.5 s (hard-coded), and
aiokafka keeps one fetch in flight per broker: while it waits on a partition with nothing new, envelopes already
written to the other partitions are not fetched. Measured: the person stage sat idle 1.2-1.5 s at a time while
the ingest kept writing to its partitions (docs/performance.md) -- time every action triggered meanwhile waits.
Envelopes are few and large, so a short wait costs the broker next to nothing.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

SCHEME = "cdpkafka"
FETCH_MAX_WAIT_MS = 100
# A fetch returns once this much is new (or the wait is over): while the ingest writes, the person stage then takes
# its envelopes in fewer, fuller fetches; every fetch request costs the broker about half a millisecond of CPU.
FETCH_MIN_BYTES = 1_000_000


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):  # type: ignore[misc]
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by the fetcher the consumer builds when it starts.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        consumer._fetch_min_bytes = FETCH_MIN_BYTES
        return consumer


class Consumer(faust_aiokafka.Consumer):  # type: ignore[misc]
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):  # type: ignore[misc]
    Consumer = Consumer
