"""OneID on the real broker with 4 partitions and two worker processes: the persons the pipeline forms are the
reference model's, fed the same events in the order the link writer read them."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from core.envelope import decode_envelope
from core.ids import identifier_hash
from core.normalize import normalize_phone
from ops.topics import publish_lines, read_topic, wait_processed
from ops.worker import WorkerProcess, query
from rules.loader import default_identity
from tests.core.test_identity_reference import ReferenceGraph
from tests.integration.conftest import free_port, run

pytestmark = pytest.mark.integration


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def shoppers(n: int, seed: int) -> list[bytes]:
    """Events of ``n`` shoppers across channels: anonymous browsing, then login; mini-program openids and a phone
    given in an identify's traits; devices in context; some share a tablet; blocked ids; a mistyped phone."""
    r = random.Random(seed)
    t0 = datetime.now(UTC) - timedelta(days=2)
    out: list[tuple[datetime, dict]] = []
    k = 0

    def ev(t: datetime, **kw: object) -> None:
        nonlocal k
        k += 1
        out.append((t, {"type": "track", "event": "product_view", "messageId": f"m{seed}-{k}",
                        "timestamp": _iso(t), **kw}))

    tablet = "tablet-shared-1"
    for i in range(n):
        t = t0 + timedelta(minutes=r.randint(0, 2000))
        user, anon, phone = f"user-{seed}-{i}", f"anon-{seed}-{i}", f"139{i:08d}"
        device = f"dev-{seed}-{i}"
        for _ in range(r.randint(1, 3)):  # anonymous browsing, in the app
            ev(t, anonymousId=anon, context={"device": {"id": device}})
            t += timedelta(minutes=3)
        if r.random() < 0.7:  # logs in
            ev(t, event="login", userId=user, anonymousId=anon)
            ev(t + timedelta(seconds=5), type="identify", userId=user, traits={"phone": phone})
            t += timedelta(minutes=1)
        if r.random() < 0.4:  # the mini-program, then an identify with the phone (Segment style: traits)
            openid = f"oid-{seed}-{i}"
            ev(t, identities={"miniapp_openid": openid}, context={"wechat": {"appid": "wxapp1"}})
            ev(t + timedelta(seconds=3), type="identify", identities={"miniapp_openid": openid},
               traits={"phone": phone}, context={"wechat": {"appid": "wxapp1"}})
        if r.random() < 0.1:  # the family tablet: another user logs in on it
            ev(t, event="login", userId=user, context={"device": {"id": tablet}})
        if r.random() < 0.05:
            ev(t, userId="null", anonymousId=anon)  # a placeholder never links anyone
            ev(t, identities={"phone": "13800000000"}, anonymousId=anon)  # the blocked test number
        if r.random() < 0.1 and i > 0:  # an order with a mistyped phone: another customer's number
            ev(t, event="order_paid", userId=user, identities={"phone": f"139{i - 1:08d}"})
    out.sort(key=lambda x: x[0])
    return [orjson.dumps(e) for _, e in out]


def second_worker(deployment, tmp_path) -> WorkerProcess:
    # Workers that share persons share the salt of identifier hashes (the first's data directory made it).
    env = {**deployment.env, "CDP_DATA_DIR": str(tmp_path / "w2"), "CDP_WEB_PORT": str(free_port()),
           "CDP_PII_SALT": deployment.settings.salt,
           "CDP_CLICKHOUSE_URL": f"chdb://{tmp_path / 'w2' / 'clickhouse'}"}
    return WorkerProcess(env=env, log_path=tmp_path / "worker2.log")


def directory_partition(s) -> dict[str, frozenset[str]]:
    """The persons the link writer's directory holds: OneID -> identifier hashes (merge pointers followed)."""
    latest: dict[bytes, bytes] = {}
    for m in run(read_topic(s, s.identity_directory_topic)):
        latest[m.key] = m.value
    into = {k[2:].decode(): v.decode() for k, v in latest.items() if k.startswith(b"m:") and v}
    persons: dict[str, set[str]] = defaultdict(set)
    for k, v in latest.items():
        if k.startswith(b"i:"):
            o = v.decode()
            for _ in range(64):
                if o not in into:
                    break
                o = into[o]
            persons[o].add(k[2:].decode())
    return {o: frozenset(hs) for o, hs in persons.items()}


def test_two_workers_on_four_partitions_form_the_reference_models_persons(deployment, tmp_path, monkeypatch):
    monkeypatch.setenv("CDP_PARTITIONS", "4")
    deployment.env["CDP_PARTITIONS"] = "4"
    s = type(deployment.settings)()
    assert s.partitions == 4
    lines = shoppers(150, seed=7)
    w2 = second_worker(deployment, tmp_path)
    with deployment.worker() as w1, w2:
        w1.start(s)
        w2.start(s)
        run(publish_lines(s, lines))
        run(wait_processed(s, timeout_s=240))
        # Known shoppers come back: the ingests' directory replicas know them now.
        again = [orjson.dumps({"type": "track", "event": "app_open", "messageId": f"again-{i}",
                               "anonymousId": f"anon-7-{i}", "context": {"device": {"id": f"dev-7-{i}"}}})
                 for i in range(150)]
        run(publish_lines(s, again))
        run(wait_processed(s, timeout_s=240))
        h1, h2 = w1.health() or {}, w2.health() or {}
    # Both workers took part: the ingest of each read raw partitions.
    assert h1["ingest"]["assigned"] and h2["ingest"]["assigned"]

    # The reference, fed what the link writer read, in its order (the events the ingest resolved itself held
    # only identifiers already one person: to the reference they change nothing).
    ref = ReferenceGraph(default_identity(), s.salt)
    slow_again = 0
    for m in run(read_topic(s, s.identity_topic)):
        for en in decode_envelope(m.value).entries:
            ref.resolve([(t, h) for t, h, _ in en.ids], en.ts)
            slow_again += en.message_id.startswith("again-")
    assert slow_again == 0  # every returning shopper's event went straight to their person's partition
    got = directory_partition(s)
    assert got == ref.partition()

    # What users would check: two user_ids never share a person; the shared tablet and the blocked test phone
    # made no mega-user; an anonymous shopper who logged in is one person under the user_id's OneID.
    salt = s.salt
    types = {identifier_hash(salt, "user_id", f"user-7-{i}"): "user_id" for i in range(150)}
    assert all(sum(1 for h in hs if h in types) <= 1 for hs in got.values())
    # The largest person holds one shopper's identifiers (7 kinds at most) and perhaps those of a shopper known
    # only by a mini-program openid and the phone a customer mistyped on an order: nothing like a mega-user.
    assert max(len(hs) for hs in got.values()) <= 11
    assert identifier_hash(salt, "phone", "13800000000") not in {h for hs in got.values() for h in hs}
    by_hash = {h: o for o, hs in got.items() for h in hs}
    logged_in = [i for i in range(150) if identifier_hash(salt, "user_id", f"user-7-{i}") in by_hash]
    assert logged_in
    for i in logged_in[:20]:
        uid = identifier_hash(salt, "user_id", f"user-7-{i}")
        assert by_hash[identifier_hash(salt, "anonymous_id", f"anon-7-{i}")] == by_hash[uid]
        assert by_hash[identifier_hash(salt, "phone", normalize_phone(f"139{i:08d}") or "")] == by_hash[uid]


def test_anonymous_events_before_login_count_for_the_customer(deployment):
    s = deployment.settings
    t = datetime.now(UTC) - timedelta(hours=5)
    lines = []
    for i in range(5):
        anon, user = f"a-{i}", f"u-{i}"
        lines.append(orjson.dumps({"type": "track", "event": "product_view", "messageId": f"pv-{i}",
                                   "anonymousId": anon, "timestamp": _iso(t)}))
        lines.append(orjson.dumps({"type": "track", "event": "add_to_cart", "messageId": f"ac-{i}",
                                   "anonymousId": anon, "timestamp": _iso(t + timedelta(minutes=1))}))
        lines.append(orjson.dumps({"type": "track", "event": "login", "messageId": f"li-{i}", "userId": user,
                                   "anonymousId": anon, "timestamp": _iso(t + timedelta(minutes=2))}))
        lines.append(orjson.dumps({"type": "track", "event": "order_paid", "messageId": f"op-{i}", "userId": user,
                                   "timestamp": _iso(t + timedelta(minutes=3))}))
    with deployment.worker() as w:
        w.start(s)
        run(publish_lines(s, lines))
        run(wait_processed(s, timeout_s=180))
        persons = query(s, "SELECT uniqExact(oneid) FROM cdp.events_resolved", "TabSeparated").decode().strip()
        # Each anonymous id and its user_id are one person (merged, or linked at once if the login came first).
        people = query(s, "SELECT uniqExact(oneid), count() FROM cdp.identities FINAL", "TabSeparated").decode()
        funnel = query(s, "SELECT level, count() FROM (SELECT oneid, windowFunnel(3600)(toDateTime(ts), "
                          "event = 'product_view', event = 'add_to_cart', event = 'order_paid') AS level "
                          "FROM cdp.events_resolved GROUP BY oneid) GROUP BY level ORDER BY level",
                       "TabSeparated").decode().strip()
        health = w.health() or {}
    assert persons == "5"
    assert people.split() == ["5", "10"]
    assert funnel == "3\t5"
    assert health["persons"]["events_sunk"] == len(lines)


def test_split_restores_both_persons_their_counts_and_funnel_rows(deployment):
    from ops.identity import split_identifier
    from ops.profile import profile

    s = deployment.settings
    t = datetime.now(UTC) - timedelta(hours=5)

    def ev(mid: str, minutes: int, **kw: object) -> bytes:
        return orjson.dumps({"type": "track", "messageId": mid, "timestamp": _iso(t + timedelta(minutes=minutes)),
                             **kw})

    lines = [
        # Customer A: a known user with a phone.
        ev("a1", 0, type="identify", userId="ua", traits={"phone": "13900000001"}),
        ev("a2", 1, event="product_view", userId="ua"),
        ev("a3", 2, event="add_to_cart", userId="ua"),
        # Customer B: a mini-program shopper who gave a phone, nothing else.
        ev("b1", 3, type="identify", anonymousId="bb", traits={"phone": "13900000002"}),
        ev("b2", 4, event="product_view", anonymousId="bb"),
        ev("b3", 5, event="product_view", anonymousId="bb"),
        # A's order, with B's number typed by mistake: no rule can tell, the two are merged.
        ev("a4", 10, event="order_paid", userId="ua", identities={"phone": "13900000002"}),
    ]

    def persons() -> str:
        return query(s, "SELECT uniqExact(oneid) FROM cdp.events_resolved", "TabSeparated").decode().strip()

    def funnel() -> str:
        return query(s, "SELECT level, count() FROM (SELECT oneid, windowFunnel(86400)(toDateTime(ts), "
                        "event = 'product_view', event = 'add_to_cart', event = 'order_paid') AS level "
                        "FROM cdp.events_resolved GROUP BY oneid) GROUP BY level ORDER BY level",
                     "TabSeparated").decode().strip()

    with deployment.worker() as w:
        w.start(s)
        run(publish_lines(s, lines))
        run(wait_processed(s, timeout_s=180))
        assert persons() == "1"
        merged = profile(s, "phone", "13900000002")
        assert merged["found"]
        req = split_identifier(s, "phone", "13900000002", ("user_id", "ua"))
        assert not req.error
        assert persons() == "2"
        assert funnel() == "1\t1\n3\t1"
        a, b = profile(s, "user_id", "ua"), profile(s, "anonymous_id", "bb")
        assert a["oneid"] != b["oneid"]
        assert b["oneid"] == profile(s, "phone", "13900000002")["oneid"]
        # The same person as before the split answers for A (its user_id's OneID); B is a person of its own.
        assert a["oneid"] == merged["oneid"]
        per_person = dict(tuple(r.split("\t")) for r in query(
            s, "SELECT oneid, count() FROM cdp.events_resolved GROUP BY oneid", "TabSeparated").decode().split("\n")
            if r)
        assert sorted(per_person.values()) == ["3", "4"]
        assert per_person[a["oneid"]] == "4"
        # The mistyped link is not made again when A's order is replayed.
        run(publish_lines(s, [lines[-1]]))
        run(wait_processed(s, timeout_s=180))
        assert persons() == "2"
        health = w.health() or {}
    assert health["persons"]["stopped"] is None
