"""The ClickHouse schema: migrations are idempotent, every contract table has the contract's columns, and the
merge-aware events view has every column of cdp.events."""

from __future__ import annotations

from sinks.clickhouse import migrations

# The public contract's tables and columns (docs: /work/shared/contract.md, "ClickHouse"); extra columns are
# allowed (versions, masked identifiers, the split marker), missing ones are not.
CONTRACT = {
    "events": {"message_id", "oneid", "type", "event", "ts", "received_at", "properties", "identities"},
    "identities": {"identifier_type", "identifier_hash", "identifier_masked", "oneid", "first_seen", "updated_at"},
    "identity_merges": {"from_oneid", "into_oneid", "at", "reason"},
    "tag_changes": {"oneid", "tag", "op", "at", "rule_version", "message_id"},
    "score_changes": {"oneid", "model", "item", "delta", "score", "at", "message_id"},
    "actions": {"action_id", "oneid", "rule_id", "channel", "template", "created_at"},
    "action_feedback": {"action_id", "status", "at"},
    "profiles": {"oneid", "tags", "scores", "lifecycle", "rfm", "updated_at"},
}


def columns(sink, table: str) -> list[str]:
    return [r[0] for r in sink.rows(
        "SELECT name FROM system.columns WHERE database = 'cdp' AND table = {t:String} ORDER BY position",
        parameters={"t": table})]


def test_migrate_twice_is_a_no_op(chdb_sink):
    chdb_sink.migrate()
    assert chdb_sink.migrate() == []
    applied = dict(chdb_sink.rows("SELECT version, checksum FROM cdp.schema_migrations FINAL"))
    assert applied == {m.version: m.checksum for m in migrations()}


def test_contract_tables_have_the_contract_columns(chdb_sink):
    chdb_sink.migrate()
    for table, cols in CONTRACT.items():
        have = set(columns(chdb_sink, table))
        assert cols <= have, (table, cols - have)


def test_replaced_rows_keep_the_latest_version(chdb_sink):
    """Tables whose rows are rewritten (identities, profiles) keep the latest version under FINAL."""
    chdb_sink.migrate()
    rows = [b'{"identifier_type":"phone","identifier_hash":"h-schema-1","identifier_masked":"138****0001",'
            b'"oneid":"o_schema_a","first_seen":"2026-01-05 00:00:00","updated_at":"2026-01-05 00:00:00"}',
            b'{"identifier_type":"phone","identifier_hash":"h-schema-1","identifier_masked":"138****0001",'
            b'"oneid":"o_schema_b","first_seen":"2026-01-05 00:00:00","updated_at":"2026-03-01 00:00:00"}']
    chdb_sink.insert_json("identities", rows, ["identifier_type", "identifier_hash", "identifier_masked", "oneid",
                                                "first_seen", "updated_at"], token="schema-identities")
    assert chdb_sink.rows("SELECT oneid FROM cdp.identities FINAL WHERE identifier_hash = 'h-schema-1'") == [
        ("o_schema_b",)]
    profiles = [b'{"oneid":"o_schema_p","tags":["vip"],"scores":{"intent":3},"lifecycle":"active","rfm":"",'
                b'"updated_at":"2026-02-01 00:00:00"}',
                b'{"oneid":"o_schema_p","tags":[],"scores":{"intent":1},"lifecycle":"lapsed","rfm":"",'
                b'"updated_at":"2026-01-01 00:00:00"}']
    chdb_sink.insert_json("profiles", profiles, ["oneid", "tags", "scores", "lifecycle", "rfm", "updated_at"],
                          token="schema-profiles")
    assert chdb_sink.rows("SELECT tags, lifecycle FROM cdp.profiles FINAL WHERE oneid = 'o_schema_p'") == [
        (["vip"], "active")]


def test_events_resolved_has_every_event_column(chdb_sink):
    """A view's columns are fixed when it is created: a migration that adds event columns must re-create it."""
    chdb_sink.migrate()
    assert columns(chdb_sink, "events_resolved") == [*columns(chdb_sink, "events"), "oneid_original"]
