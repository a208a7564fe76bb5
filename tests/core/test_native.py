"""The compiled core (core/native.py) is used only when built from the very sources, and does what they say."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import native

ROOT = Path(__file__).resolve().parents[2]

# Everything the per-event modules decide, as bytes: envelopes, bad rows, ClickHouse rows, person states, actions.
_PIPELINE_DIGEST = r"""
import hashlib, sys
from datetime import UTC, datetime
import orjson
import core
from cdp_cli.generate import generate
from core.envelope import decode_envelope, encode_envelopes
from core.ingest import RawRecord, ingest_records
from core.person import PersonState, apply_events, fire_due
from core.rows import action_row, event_rows
from core.settings import Settings
from rules.loader import load_rules

now = 1_796_000_000_000
events = [orjson.dumps(e) for e in generate(300, 3, 7, end=datetime.fromtimestamp(now / 1000 - 60, UTC))]
events += [b"{not json", b'{"type":"track"}', b"",
           b'{"type":"track","event":"x","messageId":"f1","userId":"u1","timestamp":"2099-01-01T00:00:00Z"}',
           b'{"type":"track","event":"x","message_id":"s1","user_id":" u2 ",'
           b'"identities":{"phone":"+86 138-0013-8000"}}',
           b'{"type":"identify","messageId":"p1","anonymousId":"null",'
           b'"identities":{"email":"A@B.CO","x":"undefined"}}',
           b'{"type":"track","event":"x","messageId":"n1","userId":"u3","properties":{"big":123456789012345678901234}}']
rules = load_rules(Settings().resolved_rules_dir)
h = hashlib.sha256()
states = {}
seen = {"bad": 0, "actions": 0, "duplicates": 0, "flagged": 0}
for start in range(0, len(events), 997):
    records = [RawRecord("raw", i % 3, i, now - 5000, None, v) for i, v in enumerate(events[start:start + 997], start)]
    res = ingest_records(records, rules, 4, now)
    h.update(orjson.dumps([res.ok, sorted(res.max_event_ts.items()), sorted(res.dropped_identifiers.items()),
                           sorted(res.flagged.items())]))
    seen["bad"] += len(res.bad_rows)
    seen["flagged"] += sum(res.flagged.values())
    for _, bad in res.bad_rows:
        h.update(bad.model_dump_json().encode())
    for part in sorted(res.entries):
        for env in encode_envelopes("src", now - 9000, res.entries[part]):
            h.update(env)
            by_person = {}
            for en in decode_envelope(env).entries:
                by_person.setdefault(en.pk, []).append(en)
            for pk, entries in by_person.items():
                st = states.setdefault(pk, PersonState.new(pk))
                out = apply_events(st, entries + entries[:1], rules)
                h.update(b"".join(event_rows(out.accepted, st.oneid)))
                h.update(orjson.dumps([out.duplicates, [d.reason for d in out.dropped]]))
                seen["duplicates"] += out.duplicates
for pk in sorted(states):
    fired = fire_due(states[pk], now, rules, now)
    h.update(b"".join(action_row(a.action) for a in fired.actions))
    seen["actions"] += len(fired.actions)
    h.update(states[pk].to_bytes())
print(orjson.dumps({"native": core.NATIVE, "digest": h.hexdigest(), **seen}).decode())
"""


def _pipeline_digest(pure: bool) -> dict:
    env = {**os.environ, "CDP_PURE_PYTHON": "1" if pure else ""}
    return json.loads(subprocess.run([sys.executable, "-c", _PIPELINE_DIGEST], cwd=ROOT, env=env,
                                     capture_output=True, text=True, check=True).stdout)


def test_compiled_core_turns_events_into_the_same_bytes_as_the_sources() -> None:
    if native.usable_build(ROOT / "core") is None:
        pytest.skip("no compiled core for these sources (make setup builds it)")
    compiled = _pipeline_digest(pure=False)
    pure = _pipeline_digest(pure=True)
    assert compiled.pop("native") and not pure.pop("native")
    assert compiled == pure
    # The events went through every outcome: bad rows, untrusted times, duplicates dropped, actions fired.
    assert pure["bad"] >= 4 and pure["flagged"] >= 1 and pure["duplicates"] >= 1 and pure["actions"] >= 1


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
