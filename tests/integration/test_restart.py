"""State survives a worker being replaced: a new worker, with an empty local state directory, recovers person
state from the changelog, so a full redelivery afterwards adds no event and sends no second reminder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from config.settings import Settings
from ops.topics import publish_lines, read_topic, wait_processed
from ops.worker import WorkerProcess, query
from tests.integration.conftest import run

pytestmark = pytest.mark.integration


def test_a_replacement_worker_recovers_state_and_redelivery_changes_nothing(deployment, tmp_path):
    s = deployment.settings
    t = datetime.now(UTC) - timedelta(hours=3)

    def at(minutes: int) -> str:
        return (t + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")

    lines = []
    for i in range(5):
        lines.append(orjson.dumps({"type": "identify", "messageId": f"r-id-{i}", "userId": f"r{i}",
                                   "identities": {"phone": f"1391234500{i}"}, "timestamp": at(0)}))
        lines.append(orjson.dumps({"type": "track", "messageId": f"r-cart-{i}", "userId": f"r{i}",
                                   "event": "add_to_cart", "timestamp": at(1)}))
    with deployment.worker() as w:
        w.start()
        run(publish_lines(s, lines))
        run(wait_processed(s, timeout_s=120))
    assert len(run(read_topic(s, s.action_topic("sms")))) == 5

    # The replacement: same deployment, a fresh machine's empty state directory.
    env2 = {**deployment.env, "CDP_DATA_DIR": str(tmp_path / "second")}
    s2 = Settings(**{**s.model_dump(), "data_dir": tmp_path / "second"})
    with WorkerProcess(env=env2, log_path=tmp_path / "second.log") as w2:
        w2.start()
        run(publish_lines(s2, lines))  # everything again, as a producer that retried it all
        run(wait_processed(s2, timeout_s=120))
        assert int(query(s2, "SELECT count() FROM cdp.events", "TabSeparated")) == 10
        assert int(query(s2, "SELECT count() FROM cdp.actions FINAL", "TabSeparated")) == 5
    assert len(run(read_topic(s, s.action_topic("sms")))) == 5
