"""OneID end to end: held-out shop traffic (anonymous browsing then a login, two devices, mini-program openids
then a phone number, shared tablets, placeholder userIds and the QA phone number) through the worker, and
``cdp funnel`` counts the true persons at every step: anonymous browsing before a login counts for the customer,
and no blocked value or shared device joins two persons."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from ops.topics import publish_lines, wait_processed
from ops.worker import query
from tests.analytics.test_funnel import person_level
from tests.integration.conftest import run
from traffic.shop import ShopTraffic

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
USERS, DAYS, SEED = 600, 2, 4242  # a seed no other test uses: traffic the pipeline was not tuned on
STEPS = ["product_view", "add_to_cart", "order_paid"]
WINDOW, WINDOW_S = "1d", 86_400


def cdp(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdp_cli.main", *args], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def tsv(s, sql: str) -> list[list[str]]:
    return [line.split("\t") for line in query(s, sql, "TabSeparated").decode().splitlines()]


def funnel_of(persons: dict[object, list[tuple[int, str]]]) -> list[int]:
    """Persons reaching each step, in order within the window (windowFunnel's default mode), by brute force."""
    levels = Counter(person_level(sorted(evs), STEPS, WINDOW_S, ()) for evs in persons.values())
    return [sum(n for level, n in levels.items() if level >= k) for k in range(1, len(STEPS) + 1)]


def test_the_funnel_counts_true_persons_anonymous_browsing_before_login_included(deployment):
    s = deployment.settings
    shop = ShopTraffic(USERS, DAYS, SEED)
    events, truth, kinds = shop.events(), shop.truth(), shop.kinds()
    # The traffic is one where identity matters: keyed by each event's own userId or anonymousId, the funnel is
    # another (anonymous browsing apart from the order, placeholder userIds joining strangers).
    naive: dict[object, list[tuple[int, str]]] = defaultdict(list)
    for e in events:
        if e.get("event") in STEPS:
            naive[e.get("userId") or e["anonymousId"]].append((int(datetime.fromisoformat(e["timestamp"]).timestamp()),
                                                               e["event"]))
    with deployment.worker() as w:
        w.start(s)
        run(publish_lines(s, [orjson.dumps(e) for e in events]))
        run(wait_processed(s, timeout_s=600))
        assert int(query(s, "SELECT count() FROM cdp.events", "TabSeparated").strip()) == len(events)
        steps_sql = ", ".join(f"'{step}'" for step in STEPS)
        rows = tsv(s, "SELECT message_id, oneid, event, toUnixTimestamp(ts) FROM cdp.events_resolved"
                      f" WHERE event IN ({steps_sql})")
        r = cdp("funnel", "--steps", ",".join(STEPS), "--window", WINDOW, "--json", env=deployment.env)
        assert r.returncode == 0, r.stderr
        got = [step["persons"] for step in orjson.loads(r.stdout)]

    true_persons: dict[object, list[tuple[int, str]]] = defaultdict(list)
    oneids_of: dict[int, set[str]] = defaultdict(set)
    persons_of: dict[str, set[int]] = defaultdict(set)
    for message_id, oneid, event, ts in rows:
        true_persons[truth[message_id]].append((int(ts), event))
        oneids_of[truth[message_id]].add(oneid)
        persons_of[oneid].add(truth[message_id])
    want = funnel_of(true_persons)
    assert funnel_of(naive) != want
    # Each true person is one OneID, and no OneID is two persons (by kind, where not).
    apart = Counter(kinds[p] for p, oneids in oneids_of.items() if len(oneids) > 1)
    joined = Counter(kinds[p] for persons in persons_of.values() if len(persons) > 1 for p in persons)
    assert (apart, joined) == (Counter(), Counter())
    assert got == want
