"""The persons agent under Faust's test_context(): envelopes in; event rows, actions and state out."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from config.settings import Settings
from core.envelope import encode_entry, encode_envelopes
from core.ids import partition_for
from core.person import PersonState
from streams.app import build_pipeline

HOUR = 3_600_000
T0 = 1_790_000_000_000


class RecordingSink:
    def __init__(self):
        self.inserts: list[tuple[str, list[bytes], str | None]] = []

    def insert_json(self, table, lines, columns, token=None, unique_keys=False, compact=False):
        if lines:
            self.inserts.append((table, list(lines), token))
            if compact:  # arrays in column order, as ClickHouse reads them
                assert all(len(orjson.loads(ln)) == len(columns) for ln in lines)
                self.inserts[-1] = (table, [orjson.dumps(dict(zip(columns, orjson.loads(ln), strict=True)))
                                            for ln in lines], token)
        return len(lines)

    def rows(self, table):
        return [orjson.loads(ln) for t, lines, _ in self.inserts if t == table for ln in lines]


def envelope(wm: int, *events: tuple[str, int, dict]) -> bytes:
    entries = [encode_entry(pk, ts, ts, 0, i, orjson.dumps(ev)) for i, (pk, ts, ev) in enumerate(events)]
    return encode_envelopes("test-source", wm, entries)[0]


@pytest.fixture()
def pipeline(tmp_path):
    s = Settings(topic_prefix="agenttest", data_dir=tmp_path, partitions=1)
    sink = RecordingSink()
    p = build_pipeline(s, sink=sink, with_ingest=False, store="memory://")
    sent: list[tuple[str, bytes, bytes]] = []

    async def send_action(channel, key, value):
        sent.append((channel, key, value))

        async def ack():
            return None
        return ack()

    dead: list[tuple[bytes | None, object]] = []

    async def send_bad_row(key, row):
        dead.append((key, row))

        async def ack():
            return None
        return ack()

    p.stage.send_action = send_action
    p.stage.send_bad_row = send_bad_row
    p.sent = sent
    p.dead = dead
    p.app.finalize()
    p.app.flow_control.resume()
    return p


async def settled(pipeline, envelopes: int) -> None:
    """The agent carries out effects behind processing (pipelined): wait until it has done so for all."""
    for _ in range(500):
        if pipeline.stage.stats.envelopes >= envelopes:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {pipeline.stage.stats.envelopes} of {envelopes} envelopes carried out")


async def test_agent_sinks_events_keeps_state_and_fires_the_trigger_at_the_watermark(pipeline):
    pk = "user_id:u1"
    assert partition_for(pk, 1) == 0
    ident = {"type": "identify", "message_id": "i1", "user_id": "u1", "identities": {"phone": "13800138000"}}
    cart = {"type": "track", "message_id": "c1", "event": "add_to_cart", "user_id": "u1"}
    async with pipeline.persons_agent.test_context() as agent:
        await agent.put(envelope(T0, (pk, T0 - 1000, ident), (pk, T0, cart)), key=b"p0", partition=0)
        # The same events again (a redelivery) and a heartbeat that has not reached the deadline yet.
        await agent.put(envelope(T0 + HOUR - 1, (pk, T0, cart)), key=b"p0", partition=0)
        await settled(pipeline, 2)
        assert pipeline.sent == []
        # A heartbeat past the deadline fires the reminder, without any event of the person's.
        await agent.put(envelope(T0 + HOUR), key=b"p0", partition=0)
        await agent.put(envelope(T0 + 5 * HOUR), key=b"p0", partition=0)
        await settled(pipeline, 4)

    events = pipeline.sink.rows("events")
    assert sorted(r["message_id"] for r in events) == ["c1", "i1"]  # the redelivered copy is not sunk again
    assert {r["oneid"] for r in events} == {pk}  # a person is keyed by their OneID
    (ident_row,) = [r for r in events if r["message_id"] == "i1"]
    assert ident_row["identities"]["phone"] == "138****8000"  # masked, never the raw number
    assert len(pipeline.sent) == 1
    channel, key, value = pipeline.sent[0]
    action = orjson.loads(value)
    assert channel == "sms" and key == pk.encode() and action["to"] == {"phone": "13800138000"}
    assert [r["action_id"] for r in pipeline.sink.rows("actions")] == [action["action_id"]]
    state = PersonState.from_bytes(pipeline.stage.store.get(0, pk.encode()))
    assert state.n_events == 2 and state.pending == {} and "cart_not_paid_sms" in state.fired
    assert all(tok.startswith("agenttest.internal.events-by-person:0:") for _, _, tok in pipeline.sink.inserts)


async def test_agent_dead_letters_an_undecodable_envelope_and_goes_on(pipeline):
    pk = "user_id:u2"
    view = {"type": "track", "message_id": "v1", "event": "product_view", "user_id": "u2"}
    async with pipeline.persons_agent.test_context() as agent:
        await agent.put(b"\x00 not an envelope", key=b"p0", partition=0)
        await agent.put(envelope(T0, (pk, T0, view)), key=b"p0", partition=0)
        await settled(pipeline, 2)
    assert [r["message_id"] for r in pipeline.sink.rows("events")] == ["v1"]
    [(key, row)] = pipeline.dead
    assert (key, row.reason, row.original_bytes()) == (None, "bad_envelope", b"\x00 not an envelope")
    assert row.source == {"topic": "agenttest.internal.events-by-person", "partition": 0, "offset": 0}
