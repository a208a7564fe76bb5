"""Bad rows are recoverable: fix the rule that refused them, replay, and they are processed once."""

from __future__ import annotations

import shutil

import orjson
import pytest

from config.settings import PACKAGE_RULES_DIR
from ops.dlq import dlq_replay, dlq_stats
from ops.topics import publish_lines, wait_processed
from ops.worker import query
from tests.integration.conftest import run

pytestmark = pytest.mark.integration


def test_replay_after_a_rule_fix_processes_each_event_once(deployment, tmp_path):
    s = deployment.settings
    rules = tmp_path / "rules"
    shutil.copytree(PACKAGE_RULES_DIR, rules, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    events = rules / "events.yaml"
    original = events.read_text()
    # A store's POS scanner number wrongly listed as a test number: its purchases are refused.
    events.write_text(original.replace('phone: ["13800000000"', 'phone: ["13911112222", "13800000000"'))
    deployment.env["CDP_RULES_DIR"] = str(rules)
    lines = [orjson.dumps({"type": "track", "messageId": f"pos-{i}", "event": "store_purchase",
                           "identities": {"phone": "139-1111-2222"}, "properties": {"amount": 10 + i}})
             for i in range(3)]
    lines.append(orjson.dumps({"type": "track", "messageId": "ok-1", "event": "login", "userId": "u-ok"}))
    with deployment.worker() as w:
        w.start()
        run(publish_lines(s, lines))
        # And something on the internal topic that is no envelope: the person stage dead-letters it and goes on.
        run(publish_lines(s, [b"not an envelope"], topic=s.person_events_topic))
        run(wait_processed(s, timeout_s=120))
        assert run(dlq_stats(s)) == {("validate", "no_identifier"): 3, ("process", "bad_envelope"): 1}
    events.write_text(original)  # the fix
    with deployment.worker() as w:
        w.start()
        # Everything replayable is replayed; the envelope is not an event and stays where it is.
        first = run(dlq_replay(s))
        assert (first.replayed, first.seen, first.skipped, first.records, first.error) == (3, 4, 0, 1, None)
        again = run(dlq_replay(s, reason="no_identifier"))  # an operator replays twice
        assert (again.replayed, again.seen, again.skipped, again.error) == (3, 4, 0, None)
        run(wait_processed(s, timeout_s=120))
        got = query(s, "SELECT message_id FROM cdp.events ORDER BY message_id", "TabSeparated").decode().split()
    assert got == ["ok-1", "pos-0", "pos-1", "pos-2"]
