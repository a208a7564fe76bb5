"""The ingest's raw records (streams.raw_records) against aiokafka's own ConsumerRecords, on record batches built
by aiokafka's C builder in every codec Kafka has: the same records, offsets, checks and consumed positions, and the
same ingest result; a batch that cannot be read is reported where it is, neither delivered nor skipped."""

from __future__ import annotations

import struct

import orjson
import pytest
from aiokafka import codec as aiokafka_codec
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import ConsumerRecord, TopicPartition

from core.ingest import RawRecord, ingest_batches, ingest_records
from streams import raw_records
from tests.core.helpers import RULES

TP = TopicPartition("cdp.events.raw", 3)
NOW = 1_790_000_000_000
# Kafka's codecs, as a record batch's attributes number them.
CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def _batch(base_offset: int, values: list[bytes | None], control: bool = False, compression: int = 0) -> bytes:
    b = DefaultRecordBatchBuilder(magic=2, compression_type=compression, is_transactional=0, producer_id=-1,
                                  producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for i, v in enumerate(values):
        key = None if i % 3 == 0 else f"k{i}".encode()
        headers = [("h", f"v{i}".encode())] if i % 2 else []
        b.append(i, timestamp=NOW - 1000 + base_offset + i, key=key, value=v, headers=headers)
    data = bytearray(b.build())
    data[0:8] = struct.pack(">q", base_offset)
    if control:  # the control flag is in the attributes, which the CRC covers
        attrs = struct.unpack(">h", data[21:23])[0] | 0x20
        data[21:23] = struct.pack(">h", attrs)
        data[17:21] = struct.pack(">I", calc_crc32c(bytes(data[21:])))
    return bytes(data)


def _event(i: int) -> bytes:
    return orjson.dumps({"type": "track", "event": "product_view", "messageId": f"m-{i}", "userId": f"u{i % 7}",
                         "timestamp": "2026-09-21T10:00:00.000Z", "properties": {"sku": f"S-{i}"}})


def _records(fetch_offset: int, *batches: bytes, value_deserializer=None) -> aiokafka_fetcher.PartitionRecords:
    """A fetch's records of one partition as aiokafka's fetcher makes them (streams.raw_records installed)."""
    assert raw_records.install()
    return aiokafka_fetcher.PartitionRecords(TP, MemoryRecords(b"".join(batches)), [], fetch_offset, None,
                                             value_deserializer, True, 0)


def _fields(rec) -> tuple:
    return rec.offset, rec.timestamp, rec.key, rec.value, tuple(rec.headers)


def test_every_codec_kafka_has_can_be_read():
    assert aiokafka_codec.has_gzip() and aiokafka_codec.has_snappy() and aiokafka_codec.has_lz4()
    assert aiokafka_codec.has_zstd()


@pytest.mark.parametrize("compression", list(CODECS.values()), ids=list(CODECS))
def test_raw_records_are_the_consumer_records_fields_from_the_fetch_position(compression):
    batches = (_batch(100, [_event(i) for i in range(5)], compression=compression),
               _batch(105, [_event(i) for i in range(5, 12)], compression=compression))
    assert {struct.unpack(">h", b[21:23])[0] & 0x07 for b in batches} == {compression}
    # A fetch from inside the first batch: the broker returns the batch whole, the records before it are skipped.
    stock = _records(102, *batches)
    values = raw_records.RawValues()
    raw = _records(102, *batches, value_deserializer=values)
    stock_records = list(stock)
    raw_records_read = list(raw)
    assert all(type(r) is ConsumerRecord for r in stock_records)
    assert not any(isinstance(r, ConsumerRecord) for r in raw_records_read)
    assert [_fields(r) for r in raw_records_read] == [_fields(r) for r in stock_records]
    assert [r.offset for r in raw_records_read] == list(range(102, 112))
    assert raw.next_fetch_offset == stock.next_fetch_offset == 112
    assert values.faults == {}


@pytest.mark.parametrize("compression", list(CODECS.values()), ids=list(CODECS))
def test_a_read_stopped_at_max_records_resumes_after_the_last_record_taken(compression):
    raw = _records(0, _batch(0, [_event(i) for i in range(10)], compression=compression),
                   value_deserializer=raw_records.RawValues())
    taken = []
    for rec in raw:  # as aiokafka's FetchResult.getall does, stopping at max_records
        taken.append(rec.offset)
        if len(taken) == 4:
            break
    assert raw.next_fetch_offset == 4  # the position getmany commits to the subscription
    assert [rec.offset for rec in raw] == list(range(4, 10))
    assert raw.next_fetch_offset == 10


def test_control_batches_are_skipped():
    raw = _records(0, _batch(0, [_event(0), _event(1)]), _batch(2, [b"\x00\x00\x00\x00"], control=True),
                   _batch(3, [_event(3)]), value_deserializer=raw_records.RawValues())
    assert [rec.offset for rec in raw] == [0, 1, 3]
    assert raw.next_fetch_offset == 4


@pytest.mark.parametrize("compression", list(CODECS.values()), ids=list(CODECS))
def test_a_corrupt_batch_is_reported_where_it_is_neither_delivered_nor_skipped(compression):
    good = _batch(0, [_event(0), _event(1)], compression=compression)
    corrupt = bytearray(_batch(2, [_event(2), _event(3)], compression=compression))
    corrupt[-3] ^= 0xFF
    after = _batch(4, [_event(4)], compression=compression)
    # aiokafka's own records raise (out of getmany, with whatever other partitions gave that call).
    with pytest.raises(CorruptRecordException):
        list(_records(2, bytes(corrupt), after))
    values = raw_records.RawValues()
    raw = _records(0, good, bytes(corrupt), after, value_deserializer=values)
    assert [rec.offset for rec in raw] == [0, 1]  # the records before it, and nothing after it
    assert raw.next_fetch_offset == 2  # the position getmany keeps: the next fetch starts at the corrupt batch
    offset, exc = values.faults[TP]
    assert offset == 2 and isinstance(exc, CorruptRecordException)


@pytest.mark.parametrize("codec", ["snappy", "lz4", "zstd"])
def test_a_codec_this_process_cannot_decompress_stops_the_read_at_its_batch(monkeypatch, codec):
    plain = _batch(10, [_event(i) for i in range(3)])
    compressed = _batch(13, [_event(i) for i in range(3, 6)], compression=CODECS[codec])
    # The codec's library missing, as aiokafka's batch reader checks it.
    monkeypatch.setattr(aiokafka_codec, f"has_{codec}", lambda: False)
    with pytest.raises(UnsupportedCodecError):
        list(_records(13, compressed))
    values = raw_records.RawValues()
    raw = _records(10, plain, compressed, value_deserializer=values)
    assert [rec.offset for rec in raw] == [10, 11, 12]
    assert raw.next_fetch_offset == 13
    offset, exc = values.faults.pop(TP)
    assert offset == 13 and isinstance(exc, UnsupportedCodecError) and codec in str(exc)
    # Fetched again from there, it is met at once; with the library back, it is read.
    again = _records(13, compressed, value_deserializer=values)
    assert list(again) == [] and again.next_fetch_offset == 13 and values.faults.pop(TP)[0] == 13
    monkeypatch.undo()
    assert [rec.offset for rec in _records(13, compressed, value_deserializer=values)] == [13, 14, 15]
    assert values.faults == {}


def test_the_ingest_makes_the_same_entries_and_bad_rows_from_raw_records():
    values = [_event(i) for i in range(20)]
    values[4] = b"{not json"
    values[9] = None
    values[13] = orjson.dumps({"type": "track", "event": "x", "messageId": "m-13"})  # no identifier
    raw = list(_records(0, _batch(0, values), value_deserializer=raw_records.RawValues()))
    from_raw = ingest_batches({TP: raw}, RULES, 4, NOW)
    plain = [RawRecord(TP.topic, TP.partition, r.offset, r.timestamp, r.key, r.value, tuple(r.headers))
             for r in raw]
    from_plain = ingest_records(plain, RULES, 4, NOW)
    assert from_raw.ok == from_plain.ok == 17
    assert from_raw.entries == from_plain.entries
    assert [(k, b.model_dump()) for k, b in from_raw.bad_rows] == [(k, b.model_dump()) for k, b in from_plain.bad_rows]
    assert [b.source for _, b in from_raw.bad_rows] == [
        {"topic": TP.topic, "partition": 3, "offset": o} for o in (4, 9, 13)]
    assert from_raw.max_event_ts == from_plain.max_event_ts


def test_an_unknown_aiokafka_leaves_the_consumer_records_in_place(monkeypatch):
    monkeypatch.setattr(aiokafka_fetcher, "PartitionRecords", raw_records._PartitionRecords.__bases__[0])
    monkeypatch.setattr(raw_records.aiokafka, "__version__", "0.15.0")
    assert raw_records.install() is False
    assert aiokafka_fetcher.PartitionRecords is not raw_records._PartitionRecords
    # The marker is then an identity deserializer: ConsumerRecords with the same values.
    recs = list(aiokafka_fetcher.PartitionRecords(TP, MemoryRecords(_batch(0, [_event(0)])), [], 0, None,
                                                  raw_records.RawValues(), True, 0))
    assert type(recs[0]) is ConsumerRecord and recs[0].value == _event(0)
