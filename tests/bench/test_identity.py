"""``cdp bench``'s identity figures at a tiny size: the known directory the pipeline runs with, the link writer's
rate on new persons, and RocksDB bytes per million identifiers."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

from rocksdict import Options, Rdict

from bench.identity import (
    IDS_PER_PERSON,
    identity_figures,
    known_directory,
    link_writer_rate,
    new_person_events,
    storage_bytes,
)
from bench.pipeline import bench_events
from cdp_cli.main import build_parser
from config.settings import Settings
from core.ingest import UNRESOLVED, RawRecord, ingest_records
from rules.loader import load_rules
from streams.directory import DirectoryReplica

Record = namedtuple("Record", "key value offset")
SALTED = Settings(pii_salt="bench-test")


def test_a_replica_holding_the_known_directory_resolves_nearly_every_event_itself(tmp_path: Path):
    s = Settings(pii_salt="bench-test")
    lines = bench_events(2_000, 200)
    known = known_directory(lines, s)
    assert known["events"] == 2_000
    assert all(k.startswith((b"i:", b"m:")) for k, _ in known["records"])
    # The real replica (RocksDB behind its LRU) over those records, as the ingest resolves through it.
    replica = DirectoryReplica(s, "directory", tmp_path / "directory", cache_size=100)
    replica._db = Rdict(str(tmp_path / "directory"), Options(raw_mode=True))
    try:
        replica._apply([Record(k, v, i) for i, (k, v) in enumerate(known["records"])])
        res = ingest_records([RawRecord("raw", 0, i, 0, None, v) for i, v in enumerate(lines)],
                             load_rules(s.resolved_rules_dir), 4, 0, resolve=replica.resolve, salt=s.salt)
    finally:
        replica._db.close()
    unresolved = len(res.entries.get(UNRESOLVED, []))
    assert unresolved == known["events"] - known["resolved"]
    assert known["resolved"] / known["events"] >= 0.95


def test_new_person_events_are_a_visit_then_a_login_per_person():
    lines = new_person_events(500)
    assert len(lines) == 1_000
    assert sum(b'"identify"' in line for line in lines) == 500


def test_the_link_writer_makes_every_new_person_and_merges_each_visit_into_its_login(tmp_path: Path):
    r = link_writer_rate(1_000, tmp_path / "lw", SALTED)
    assert r["events"] == 2_000
    assert r["merges"] == 1_000  # the visit's person into the user's
    assert r["links"] == 3_000  # anonymous id to device id; at login the email and the visit's person
    assert r["refusals"] == 0
    assert r["eps"] > 0
    # Each event's envelope share, its directory records, a merge command and a profile change per merge.
    assert r["messages_per_event"] > 1


def test_storage_counts_bytes_on_disk_for_both_databases(tmp_path: Path):
    r = storage_bytes(2_000, tmp_path / "st", SALTED)
    assert r["identifiers"] == 2_000 and r["persons"] == 2_000 // IDS_PER_PERSON
    assert r["link_writer_bytes"] > 0 and r["directory_bytes"] > 0
    assert r["link_writer_bytes_per_million_ids"] == round(r["link_writer_bytes"] * 500)
    # A directory record is an i: key (66 bytes) and a OneID (26), or a merge pointer: about 100 bytes each.
    assert 90 <= r["directory_record_bytes_per_id"] <= 130
    # The link writer's hold the identifier record and its share of the person's (members, links).
    assert r["link_writer_record_bytes_per_id"] > r["directory_record_bytes_per_id"]


def test_the_bench_json_has_the_identity_keys_with_sane_values(tmp_path: Path):
    out = identity_figures(100_000.0, tmp_path, 500, 2_000, SALTED)
    assert {"identity_new_eps", "identity_new_ratio", "link_writer_bytes_per_million_ids",
            "directory_bytes_per_million_ids"} <= set(out)
    assert out["identity_new_ratio"] == round(out["identity_new_eps"] / 100_000, 3)
    assert out["identity_new_events"] == 1_000
    assert out["identity_storage_ids"] == 2_000
    assert out["link_writer_bytes_per_million_ids"] > out["directory_bytes_per_million_ids"] > 0


def test_each_part_can_be_skipped(tmp_path: Path):
    assert identity_figures(100_000.0, tmp_path, 0, 0) == {}
    args = build_parser().parse_args(["bench", "--identity-ids", "0", "--identity-persons", "0"])
    assert args.identity_ids == 0 and args.identity_persons == 0
    assert build_parser().parse_args(["bench"]).identity_ids == 1_000_000
