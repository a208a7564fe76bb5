"""Raw records for the ingest, as aiokafka's record batches hold them, without a ``ConsumerRecord`` each.

aiokafka (pinned, 0.14.0) decodes a fetch's record batches in C, then wraps every record in a ``ConsumerRecord``
dataclass of eleven fields through three Python frames per record: 0.9 µs per record against 0.27 for the C
decoding with its CRC check (docs/performance.md). The ingest reads every raw event once and needs
only the record's offset, timestamp, key, value and headers, with the topic and partition its batch is keyed by.

A consumer opts in by passing a ``RawValues()`` as its ``value_deserializer``: its fetches then yield aiokafka's own
C record objects (``offset``, ``timestamp``, ``key``, ``value``, ``headers``), in the same order, with the same
offsets consumed and the same checks (CRC, control batches, records before the fetch position); any other consumer
in the process is untouched. Without ``install()`` (an aiokafka this does not know), ``RawValues`` is the identity
and the consumer gets ordinary ``ConsumerRecord``s, which have the same fields: slower, never wrong.

A record batch it cannot read (a codec whose library is missing, a failed CRC, a malformed batch) is neither
delivered nor skipped, and not raised either: aiokafka raises it out of ``getmany``, losing the records already
taken from other partitions in that call (their positions had moved on), and every retry meets it again. Here the
partition's reading stops at the first record not read, its records before that are delivered, and
``RawValues.faults`` says where and why, for the consumer to report and to stop fetching that partition (the
ingest pauses it and retries it now and then: streams.ingest).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from typing import Any

import aiokafka
from aiokafka import errors as kafka_errors
from aiokafka.consumer import fetcher as aiokafka_fetcher

log = logging.getLogger("cdp.ingest")

# The constructor this replaces the per-record iteration of, as aiokafka 0.14 defines it.
_EXPECTED_PARAMETERS = ["self", "tp", "records", "aborted_transactions", "fetch_offset", "key_deserializer",
                        "value_deserializer", "check_crcs", "isolation_level"]
_READ_UNCOMMITTED = 0


class RawValues:
    """The marker of a consumer that takes raw records (as a deserializer: the identity), and where its fetches
    report the record batches they could not read: ``faults``, partition -> (the offset its reading stopped at, the
    error). The consumer takes them out after each ``getmany``."""

    def __init__(self) -> None:
        self.faults: dict[Any, tuple[int, kafka_errors.KafkaError]] = {}

    def __call__(self, value: bytes | None) -> bytes | None:
        return value


class _PartitionRecords(aiokafka_fetcher.PartitionRecords):  # type: ignore[misc]
    def __init__(self, tp: Any, records: Any, aborted_transactions: Any, fetch_offset: int, key_deserializer: Any,
                 value_deserializer: Any, check_crcs: bool, isolation_level: int) -> None:
        super().__init__(tp, records, aborted_transactions, fetch_offset, key_deserializer, value_deserializer,
                         check_crcs, isolation_level)
        # Transactions aborted are skipped only by aiokafka's own loop: read_committed consumers keep it.
        self._raw = isinstance(value_deserializer, RawValues) and isolation_level == _READ_UNCOMMITTED
        if self._raw:
            self._faults = value_deserializer.faults
            self._records_iterator = self._raw_records()

    def __iter__(self) -> Iterator[Any]:
        # The generator itself, not this object: its ``__next__`` is one more Python frame per record.
        if self._raw and self._records_iterator is not None:
            return self._records_iterator  # type: ignore[no-any-return]
        return self  # type: ignore[no-any-return]

    def _raw_records(self) -> Iterator[Any]:
        records = self._records
        try:
            while records.has_next():
                batch = records.next_batch()
                if self._check_crcs and not batch.validate_crc():
                    raise kafka_errors.CorruptRecordException(f"Invalid CRC - {self._tp}")
                if batch.is_control_batch:
                    self.next_fetch_offset = batch.next_offset
                    continue
                for record in batch:  # a compressed batch is decompressed here
                    offset = record.offset
                    if offset < self.next_fetch_offset:
                        continue  # before the position asked for (a batch is returned whole)
                    # Before the yield: a caller that stops here (``max_records``) resumes after this record.
                    self.next_fetch_offset = offset + 1
                    yield record
                self.next_fetch_offset = batch.next_offset
        except kafka_errors.KafkaError as exc:
            # Reported, not raised (module docstring); the position stays at the first record not read.
            self._faults[self._tp] = (self.next_fetch_offset, exc)


def install() -> bool:
    """Let consumers whose ``value_deserializer`` is a ``RawValues`` take raw records; True when in effect."""
    if aiokafka_fetcher.PartitionRecords is _PartitionRecords:
        return True
    params = list(inspect.signature(aiokafka_fetcher.PartitionRecords.__init__).parameters)
    if aiokafka.__version__ != "0.14.0" or params != _EXPECTED_PARAMETERS:
        log.warning("aiokafka %s: the ingest reads ConsumerRecords (slower)", aiokafka.__version__)
        return False
    aiokafka_fetcher.PartitionRecords = _PartitionRecords
    return True
