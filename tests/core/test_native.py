"""The compiled core (core/native.py) is used only when built from the very sources, and does what they say."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from core import native
from tests.core.test_ingest import event_like as junk_events
from tests.streams.test_accepted_events_never_stop_the_person_stage import events as odd_events
from traffic.shop import generate

ROOT = Path(__file__).resolve().parents[2]

# Everything the per-event modules decide about the raw messages in the file named by argv[1], one JSON line per
# outcome: counts, bad rows, envelopes, ClickHouse rows, duplicates, actions and person states.
_PIPELINE_OUTCOMES = r"""
import sys
import orjson
import core
from core.envelope import decode_envelope, encode_envelopes
from core.ids import oneid_for_hash
from core.ingest import RawRecord, ingest_records
from core.person import PersonState, fire_due, fold_entries
from core.rows import action_row
from config.settings import Settings
from rules.loader import load_rules

now = 1_796_000_000_000
events = [orjson.loads(line) for line in open(sys.argv[1], "rb")]
events = [e.encode("latin-1") if isinstance(e, str) else orjson.dumps(e) for e in events]
rules = load_rules(Settings().resolved_rules_dir)
out = [orjson.dumps({"native": core.NATIVE})]
states = {}
for start in range(0, len(events), 997):
    records = [RawRecord("raw", i % 3, i, now - 5000, None, v) for i, v in enumerate(events[start:start + 997], start)]
    # A directory that knows every identifier: each event to its primary identifier's person.
    res = ingest_records(records, rules, 4, now, resolve=lambda hashes: oneid_for_hash("", hashes[0]))
    out.append(orjson.dumps([res.ok, sorted(res.max_event_ts.items()), sorted(res.dropped_identifiers.items()),
                             sorted(res.flagged.items())]))
    out += [bad.model_dump_json().encode() for _, bad in res.bad_rows]
    for part in sorted(res.entries):
        for env in encode_envelopes("src", now - 9000, res.entries[part]):
            out.append(env)
            entries = list(decode_envelope(env).entries)
            # As the person stage folds an envelope, with its first event once more: a duplicate.
            done = fold_entries(entries + entries[:1], lambda pk: states.setdefault(pk, PersonState.new(pk)), rules)
            out += done.event_lines
            out.append(orjson.dumps(["duplicates", done.duplicates, [d.reason for d in done.dropped],
                                     done.deadlines, [(pk, repr(exc)) for pk, _, exc in done.failed]]))
for pk in sorted(states):
    fired = fire_due(states[pk], now, rules, now)
    out += [action_row(a.action) for a in fired.actions]
    out.append(states[pk].to_bytes().hex().encode())  # msgpack: hex, to keep to one text line
sys.stdout.buffer.write(b"\n".join(line.replace(b"\n", b"\\n") for line in out))
"""

_ODD = [b"{not json", b'{"type":"track"}', b"",
        b'{"type":"track","event":"x","messageId":"f1","userId":"u1","timestamp":"2099-01-01T00:00:00Z"}',
        b'{"type":"track","event":"x","message_id":"s1","user_id":" u2 ","identities":{"phone":"+86 138-0013-8000"}}',
        b'{"type":"identify","messageId":"p1","anonymousId":"null","identities":{"email":"A@B.CO","x":"undefined"}}',
        b'{"type":"track","event":"x","messageId":"n1","userId":"u3","properties":{"big":123456789012345678901234}}']


def _outcomes(raw: list[bytes], tmp_path: Path, pure: bool) -> list[str]:
    path = tmp_path / "raw.jsonl"
    # Each raw message as a JSON string of its bytes (latin-1 keeps every byte), so any bytes at all go through.
    path.write_bytes(b"\n".join(orjson.dumps(r.decode("latin-1")) for r in raw))
    env = {**os.environ, "CDP_PURE_PYTHON": "1" if pure else ""}
    done = subprocess.run([sys.executable, "-c", _PIPELINE_OUTCOMES, str(path)], cwd=ROOT, env=env,
                          capture_output=True, check=True)
    return done.stdout.decode().split("\n")


def _compare(raw: list[bytes], tmp_path: Path) -> list[str]:
    compiled = _outcomes(raw, tmp_path, pure=False)
    pure = _outcomes(raw, tmp_path, pure=True)
    assert json.loads(compiled.pop(0)) == {"native": True} and json.loads(pure.pop(0)) == {"native": False}
    assert compiled == pure  # pytest shows the first outcome that differs
    return pure


def _draw(strategy: st.SearchStrategy[object], n: int) -> list[object]:
    """n distinct examples of one Hypothesis run, to be compared in one go (two processes per comparison).
    Not ``strategy.example()``: with ``CI`` set, Hypothesis derandomises, and every batch of ``example()`` is then
    the same ten examples (a CI run once compared 300 copies each of ten messages)."""
    drawn: list[object] = []

    @settings(max_examples=n, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example: object) -> None:
        drawn.append(example)

    collect()
    return drawn


@pytest.fixture()
def compiled_build() -> None:
    if native.usable_build(ROOT / "core") is None:
        pytest.skip("no compiled core for these sources (make setup builds it)")


@pytest.mark.usefixtures("compiled_build")
def test_compiled_core_turns_the_shop_s_events_into_the_same_bytes_as_the_sources(tmp_path: Path) -> None:
    now = datetime.fromtimestamp(1_796_000_000 - 60, UTC)
    raw = [orjson.dumps(e) for e in generate(300, 3, 7, end=now)] + _ODD
    outcomes = _compare(raw, tmp_path)
    # The events went through every outcome: bad rows, duplicates dropped, actions fired.
    assert sum('"reason":"' in o for o in outcomes) >= 4
    assert any(o.startswith('["duplicates",1') for o in outcomes)
    assert sum(o.startswith('{"action_id"') for o in outcomes) >= 1


@pytest.mark.usefixtures("compiled_build")
def test_compiled_core_treats_odd_and_junk_input_as_the_sources_do(tmp_path: Path) -> None:
    # Compiled code checks annotations at run time: a value of a type the sources never expected would fail there
    # and pass here (or the reverse). Thousands of drawn messages, valid events, odd ones and junk, must give the
    # same outcomes. Drawn afresh each run (the same ones where CI is set); a difference shows the outcome, whose
    # row or bad row names its message.
    drawn = _draw(st.one_of(odd_events, junk_events, st.binary(max_size=80)), 3000)
    raw = [d if isinstance(d, bytes) else json.dumps(d).encode() for d in drawn]
    outcomes = _compare(raw, tmp_path)
    assert sum('"reason":"' in o for o in outcomes) >= 100 and sum(o.startswith('["o_') for o in outcomes) >= 100


def _fake_package(tmp_path: Path) -> Path:
    pkg = tmp_path / "core"
    pkg.mkdir()
    for m in native.COMPILED:
        shutil.copy(ROOT / "core" / f"{m}.py", pkg)
    build = native.native_dir(pkg)
    (build / "core").mkdir(parents=True)
    (build / native.MANIFEST).write_text(json.dumps({
        "ok": True, "ext_suffix": native.EXT_SUFFIX, "group": "g__mypyc", "sources": native.source_digests(pkg)}))
    # Libraries that are not libraries: enough for the checks before anything is loaded.
    for lib in [build / f"g__mypyc{native.EXT_SUFFIX}", *(build / "core" / f"{m}{native.EXT_SUFFIX}"
                                                          for m in native.COMPILED)]:
        lib.write_bytes(b"not a library")
    return pkg


def test_a_build_is_used_only_while_every_source_is_the_one_compiled(tmp_path: Path) -> None:
    pkg = _fake_package(tmp_path)
    assert native.usable_build(pkg) is not None
    # An edited module: its compiled form would run the old code, so the whole build is left unused.
    with (pkg / "rows.py").open("a") as f:
        f.write("\n# edited\n")
    assert native.usable_build(pkg) is None
    assert native.enable([str(pkg)]) is False


def test_a_build_missing_a_library_or_failing_to_load_is_not_used(tmp_path: Path) -> None:
    pkg = _fake_package(tmp_path)
    # Its libraries do not load: the package keeps its sources (and nothing half-loaded stays behind).
    path = [str(pkg)]
    assert native.enable(path) is False
    assert path == [str(pkg)] and "g__mypyc" not in sys.modules
    # One module's library gone: the others are not used either (compiled and source modules would mix).
    (native.native_dir(pkg) / "core" / f"rows{native.EXT_SUFFIX}").unlink()
    assert native.usable_build(pkg) is None


def test_a_failed_or_foreign_build_is_not_used(tmp_path: Path) -> None:
    pkg = _fake_package(tmp_path)
    manifest_path = native.native_dir(pkg) / native.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "ok": False}))
    assert native.usable_build(pkg) is None
    manifest_path.write_text(json.dumps({**manifest, "ext_suffix": ".cpython-39-x86_64-linux-gnu.so"}))
    assert native.usable_build(pkg) is None
    manifest_path.write_text("{truncated")
    assert native.usable_build(pkg) is None


def test_pure_python_can_be_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = _fake_package(tmp_path)
    monkeypatch.setenv("CDP_PURE_PYTHON", "1")
    path = [str(pkg)]
    assert native.enable(path) is False
    assert path == [str(pkg)]
