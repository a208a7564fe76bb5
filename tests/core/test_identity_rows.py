"""The link writer's rows: JSON arrays in their tables' column order, which insert into the migrated tables (real
chDB) and read back as built; times exact to the millisecond; a replayed batch collapses into the first."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.identity import IdentityRow, Link, Merge, Refusal, Resolution
from core.identity_rows import (
    IDENTITY_COLUMNS,
    IDENTITY_TABLES,
    LINK_COLUMNS,
    MERGE_COLUMNS,
    REFUSAL_COLUMNS,
    ch_time,
    identity_lines,
    link_lines,
    merge_lines,
    refusal_lines,
    resolution_lines,
)
from sinks import clickhouse

T0 = 1_767_225_600_123  # 2026-01-01 00:00:00.123 UTC
# Times where a fraction is easily lost: a millisecond either side of a second, the epoch, far ahead.
EDGE_MS = [0, 1, 999, 1_000, T0, T0 + 876, 1_767_225_600_999, 4_102_444_799_999]


def _rows(tag: str) -> Resolution:
    """One resolution of each kind of row, its ids made unique by ``tag`` (the test session shares one engine)."""
    h = {k: f"h-{tag}-{k}" for k in ("phone", "device", "user")}
    a, b = f"o_{tag}_a", f"o_{tag}_b"
    return Resolution(
        oneid=b,
        identities=[IdentityRow("phone", h["phone"], "138****8000", b, T0, T0 + 5),
                    IdentityRow("device_id", h["device"], "de***01", b, T0 - 86_400_000, T0 + 5)],
        merges=[Merge(a, b, T0 + 5, f"m-{tag}", "link")],
        links=[Link("device_id", h["device"], "phone", h["phone"], b, T0 + 5, f"m-{tag}")],
        refusals=[Refusal("unique", "user_id", h["user"], "u1***42", a, b, T0 + 7, f"m-{tag}")],
    )


def test_lines_are_arrays_of_their_columns_in_order():
    res = _rows("order")
    (ident, _), (merge,), (link,), (refusal,) = (identity_lines(res.identities), merge_lines(res.merges),
                                                 link_lines(res.links, 3), refusal_lines(res.refusals, 3))
    assert dict(zip(IDENTITY_COLUMNS, orjson.loads(ident), strict=True)) == {
        "identifier_type": "phone", "identifier_hash": "h-order-phone", "identifier_masked": "138****8000",
        "oneid": "o_order_b", "first_seen": T0 / 1000, "updated_at": (T0 + 5) / 1000}
    assert dict(zip(MERGE_COLUMNS, orjson.loads(merge), strict=True)) == {
        "from_oneid": "o_order_a", "into_oneid": "o_order_b", "at": (T0 + 5) / 1000, "reason": "link",
        "op": "merge", "message_id": "m-order"}
    assert dict(zip(LINK_COLUMNS, orjson.loads(link), strict=True)) == {
        "at": (T0 + 5) / 1000, "message_id": "m-order", "id_type": "device_id", "id_hash": "h-order-device",
        "other_type": "phone", "other_hash": "h-order-phone", "oneid": "o_order_b", "rule_version": 3}
    assert dict(zip(REFUSAL_COLUMNS, orjson.loads(refusal), strict=True)) == {
        "at": (T0 + 7) / 1000, "message_id": "m-order", "reason": "unique", "id_type": "user_id",
        "id_hash": "h-order-user", "id_masked": "u1***42", "oneid": "o_order_a", "other_oneid": "o_order_b",
        "rule_version": 3}


def test_resolution_lines_group_a_batch_by_table_and_leave_out_empty_tables():
    full, bare = _rows("group1"), Resolution(oneid="o_group_c",
                                             identities=[IdentityRow("anonymous_id", "h-g", "an***01", "o_group_c",
                                                                     T0, T0)])
    out = resolution_lines([full, bare], 1)
    assert set(out) <= set(IDENTITY_TABLES)
    assert {t: len(lines) for t, lines in out.items()} == {"identities": 3, "identity_merges": 1,
                                                          "identity_links": 1, "identity_refusals": 1}
    assert out["identities"][2] == identity_lines(bare.identities)[0]
    assert resolution_lines([bare], 1).keys() == {"identities"}
    assert resolution_lines([], 1) == {}


@given(st.integers(min_value=0, max_value=4_102_444_799_999))
def test_a_time_is_exact_to_the_millisecond(ms):
    text = orjson.dumps(ch_time(ms)).decode()
    assert Decimal(text) == Decimal(ms) / 1000
    assert len(text.partition(".")[2]) <= 3


@pytest.fixture()
def sink(chdb_sink):
    chdb_sink.migrate()
    return chdb_sink


def test_the_rows_columns_are_their_tables_columns(sink):
    """Every column of the link and refusal tables, in their order; identities and merges have all of theirs."""
    def table_columns(table: str) -> list[str]:
        return [r[0] for r in sink.rows("SELECT name FROM system.columns WHERE database = 'cdp' AND table = {t:String} "
                                        "ORDER BY position", {"t": table})]

    assert table_columns("identity_links") == list(LINK_COLUMNS) == clickhouse.IDENTITY_LINK_COLUMNS
    assert table_columns("identity_refusals") == list(REFUSAL_COLUMNS) == clickhouse.IDENTITY_REFUSAL_COLUMNS
    assert table_columns("identities") == list(IDENTITY_COLUMNS) == clickhouse.IDENTITY_COLUMNS
    assert set(MERGE_COLUMNS) == set(table_columns("identity_merges"))
    assert list(MERGE_COLUMNS) == clickhouse.IDENTITY_MERGE_COLUMNS


def _insert(sink, lines: dict[str, list[bytes]], token: str) -> None:
    for table, table_lines in lines.items():
        sink.insert_json(table, table_lines, IDENTITY_TABLES[table], token=f"{token}-{table}", compact=True)


def test_rows_insert_into_the_migrated_tables_and_read_back_as_built(sink):
    res = _rows("back")
    _insert(sink, resolution_lines([res], 4), "back")
    ms = "toUnixTimestamp64Milli"
    assert sink.rows(f"SELECT identifier_type, identifier_masked, oneid, {ms}(first_seen), {ms}(updated_at) "
                     "FROM cdp.identities FINAL WHERE identifier_hash LIKE 'h-back-%' ORDER BY identifier_type") == [
        ("device_id", "de***01", "o_back_b", T0 - 86_400_000, T0 + 5), ("phone", "138****8000", "o_back_b", T0, T0 + 5)]
    assert sink.rows(f"SELECT into_oneid, {ms}(at), reason, op, message_id FROM cdp.identity_merges FINAL "
                     "WHERE from_oneid = 'o_back_a'") == [("o_back_b", T0 + 5, "link", "merge", "m-back")]
    assert sink.rows(f"SELECT {ms}(at), message_id, id_type, id_hash, other_type, other_hash, oneid, rule_version "
                     "FROM cdp.identity_links FINAL WHERE oneid = 'o_back_b'") == [
        (T0 + 5, "m-back", "device_id", "h-back-device", "phone", "h-back-phone", "o_back_b", 4)]
    assert sink.rows(f"SELECT {ms}(at), message_id, reason, id_type, id_hash, id_masked, oneid, other_oneid, "
                     "rule_version FROM cdp.identity_refusals FINAL WHERE other_oneid = 'o_back_b'") == [
        (T0 + 7, "m-back", "unique", "user_id", "h-back-user", "u1***42", "o_back_a", "o_back_b", 4)]
    # The merge row is read by the merge-aware view as any other
    assert sink.rows("SELECT oneid FROM cdp.oneid_current WHERE from_oneid = 'o_back_a'") == [("o_back_b",)]


def test_times_read_back_exact_to_the_millisecond(sink):
    links = [Link("device_id", f"h-ms-{i}", "phone", "h-ms-p", "o_ms", ms, f"m-ms-{i}") for i, ms in enumerate(EDGE_MS)]
    sink.insert_json("identity_links", link_lines(links, 1), clickhouse.IDENTITY_LINK_COLUMNS, token="ms",
                     compact=True)
    got = dict(sink.rows("SELECT id_hash, toUnixTimestamp64Milli(at) FROM cdp.identity_links FINAL "
                         "WHERE oneid = 'o_ms'"))
    assert got == {f"h-ms-{i}": ms for i, ms in enumerate(EDGE_MS)}


def test_a_replayed_batch_collapses_into_the_first(sink):
    """The link writer replays a batch after a crash with the same decisions: under another insert token (a batch
    cut differently), its rows still collapse, table by table, into one each."""
    lines = resolution_lines([_rows("replay")], 2)
    _insert(sink, lines, "replay-1")
    _insert(sink, lines, "replay-2")
    counts = {
        "identities": "SELECT count() FROM cdp.identities FINAL WHERE identifier_hash LIKE 'h-replay-%'",
        "identity_merges": "SELECT count() FROM cdp.identity_merges FINAL WHERE from_oneid = 'o_replay_a'",
        "identity_links": "SELECT count() FROM cdp.identity_links FINAL WHERE oneid = 'o_replay_b'",
        "identity_refusals": "SELECT count() FROM cdp.identity_refusals FINAL WHERE oneid = 'o_replay_a'",
    }
    assert {t: sink.rows(sql)[0][0] for t, sql in counts.items()} == {
        "identities": 2, "identity_merges": 1, "identity_links": 1, "identity_refusals": 1}
