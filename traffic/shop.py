"""Synthetic, realistic shop traffic (JSON lines): browsing, carts, orders, sign-ups, identifies, a few leads,
sessions that start from marketing campaigns (UTM data in the landing page's context.campaign) and an A/B test
(``Experiment Viewed`` exposures) whose treatment really does sell more.

Beside those shoppers, persons whose identity only OneID resolution (docs/identity.md) puts together: shoppers who
browse anonymously on the web and in the app (``context.device.id``) and then log in and buy; mini-program
shoppers known by their openid (``identities.miniapp_openid``, ``context.wechat.appid``), who later give a phone
number (a Segment-style identify, ``traits.phone``) and may order on the web logged in; persons sharing a store's
tablet (two userIds on one device); and apps sending placeholder userIds (``"null"``, ``"0"``) or the QA phone
number, which must never join persons. ``truth()`` says which person sent each event.

Deterministic for a seed and an end time, so tests and benchmarks can count on exact contents.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

CATEGORIES = ["mother_baby", "beauty", "electronics", "apparel", "home", "food"]
CHANNELS = ["web", "app", "miniapp", "official_account"]
PAGES = ["home", "category", "search_results", "promo", "help"]
# Where campaign sessions come from: (source, medium, campaign names, session weight, buying intent relative to
# an untagged session), so that channels differ in conversion and attribution has something to tell apart.
CAMPAIGNS = [
    ("wechat_ads", "cpc", ["double11", "new_arrivals"], 5, 1.0),
    ("baidu_sem", "cpc", ["brand_terms", "generic_terms"], 4, 1.3),
    ("douyin", "social", ["livestream", "short_video"], 4, 0.8),
    ("sms", "crm", ["member_day"], 2, 1.5),
    ("email", "crm", ["weekly_digest"], 2, 1.2),
    ("organic", "social", ["kol_posts"], 3, 1.0),
]
CAMPAIGN_SESSION_SHARE = 0.35
# The A/B test: a share of persons is exposed, half of them to the treatment, which adds to carts more often.
EXPERIMENT_ID = "checkout_redesign"
EXPERIMENT_VARIANTS = ("control", "treatment")
EXPERIMENT_SHARE = 0.5
TREATMENT_CART_LIFT = 1.5
# The persons only identity resolution joins, as shares of the shoppers above (at least one of each kind).
LOGIN_SHARE = 0.15  # browse anonymously (web; half of them in the app too), then log in and buy
MINIAPP_SHARE = 0.10  # mini-program openid, later a phone number, maybe a web order
TABLET_SHARE = 0.007  # a store's tablet used by two logged-in customers: two userIds on one device id
BLOCKED_SHARE = 0.015  # apps that send placeholder userIds, forms that get the QA phone number
MINIAPP_APPID = "wx5f3c2a1b9d8e7f60"
PLACEHOLDER_USER_IDS = ("null", "0")
TEST_PHONE = "13800000000"  # rules/events.yaml blocks it: the QA number typed into sign-up forms
PERSON_KINDS = ("shopper", "login", "miniapp", "tablet", "placeholder_user_id", "test_phone")


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ShopTraffic:
    def __init__(self, users: int, days: float, seed: int, end: datetime | None = None):
        self.users = users
        self.days = days
        self.rng = random.Random(seed)
        self.seed = seed
        end = end or datetime.now(UTC)
        self.end = end.replace(microsecond=0)
        self.start = self.end - timedelta(days=days)
        self._n = 0
        # The identity-resolution persons draw from their own generator: the shoppers' events stay what they were.
        self.identity_rng = random.Random(f"shop-identity-{seed}")
        self._person_of: dict[str, int] = {}
        self._kinds: list[str] = []
        self._events: list[dict[str, Any]] | None = None

    def _mid(self) -> str:
        self._n += 1
        return f"gen-{self.seed}-{self._n:09d}"

    def _event(self, r: random.Random, typ: str, t: datetime, person: dict[str, Any], **kw: Any
               ) -> dict[str, Any]:
        # As a collector would have archived it: sent shortly after it happened, received shortly after that.
        sent = t + timedelta(milliseconds=r.randint(5, 900))
        received = sent + timedelta(milliseconds=r.randint(20, 300))
        ev: dict[str, Any] = {"type": typ, "messageId": self._mid(), "anonymousId": person["anon"],
                              "timestamp": _iso(t), "sentAt": _iso(sent), "receivedAt": _iso(received),
                              "context": {"channel": person["channel"]}}
        if person["known"]:
            ev["userId"] = person["user_id"]
        # Where an SDK puts its other identifiers: the app's device, the mini-program's app id and openid.
        if "device" in person:
            ev["context"]["device"] = dict(person["device"])
        if "appid" in person:
            ev["context"]["wechat"] = {"appid": person["appid"]}
        if "identities" in person:
            kw["identities"] = {**person["identities"], **kw.get("identities", {})}
        ev.update(kw)
        self._person_of[ev["messageId"]] = person["person"]
        return ev

    def _product(self, r: random.Random) -> dict[str, Any]:
        cat = r.choice(CATEGORIES)
        return {"sku": f"SKU-{cat[:3].upper()}-{r.randint(1, 400):04d}", "category": cat,
                "price": round(r.uniform(9, 999), 2)}

    def _session(self, t: datetime, p: dict[str, Any]) -> Iterator[tuple[datetime, dict[str, Any]]]:
        r = self.rng

        def step(lo: int = 3, hi: int = 90) -> datetime:
            nonlocal t
            t = t + timedelta(seconds=r.randint(lo, hi))
            return t

        landing = self._event(r, "page", t, p, name="home", properties={"path": "/"})
        intent = 1.0
        if r.random() < CAMPAIGN_SESSION_SHARE:
            source, medium, names, _, intent = r.choices(CAMPAIGNS, weights=[c[3] for c in CAMPAIGNS])[0]
            landing["context"]["campaign"] = {"source": source, "medium": medium, "name": r.choice(names)}
        yield t, landing
        if p["variant"]:
            yield step(1, 3), self._event(r, "track", t, p, event="Experiment Viewed",
                                         properties={"experiment_id": EXPERIMENT_ID, "variation_id": p["variant"]})
            if p["variant"] == "treatment":
                intent *= TREATMENT_CART_LIFT
        if not p["known"] and r.random() < 0.25:
            p["known"] = True
            yield step(), self._event(r, "track", t, p, event="signup", properties={"method": "phone"})
            yield step(1, 5), self._event(r, "identify", t, p, identities={"phone": p["phone"], "email": p["email"]},
                                         traits={"phone_verified": True, "marketing_consent": True,
                                                 "timezone": "Asia/Shanghai", "gender": p["gender"],
                                                 "age": p["age"]})
        elif p["known"] and r.random() < 0.3:
            yield step(), self._event(r, "track", t, p, event="login", properties={})
            yield step(1, 5), self._event(r, "identify", t, p, identities={"phone": p["phone"]}, traits={})
        viewed = []
        for _ in range(r.randint(1, 8)):
            if r.random() < 0.2:
                yield step(), self._event(r, "track", t, p, event="search", properties={"query": r.choice(CATEGORIES)})
            prod = self._product(r)
            viewed.append(prod)
            yield step(), self._event(r, "track", t, p, event="product_view", properties=prod)
        if r.random() < min(0.9, 0.35 * intent):
            prod = r.choice(viewed)
            yield step(), self._event(r, "track", t, p, event="add_to_cart", properties={**prod, "quantity": 1})
            if r.random() < 0.45:
                yield step(), self._event(r, "track", t, p, event="checkout_start", properties={})
                # Some pay at once, some come back hours later, some never.
                late = r.random() < 0.3
                pay_t = step(7200, 30000) if late else step(20, 600)
                yield pay_t, self._event(r, "track", pay_t, p, event="order_paid",
                                         properties={"order_id": f"ord-{self.seed}-{self._n}",
                                                     "amount": prod["price"], "currency": "CNY"})
        if r.random() < 0.03:
            yield step(), self._event(r, "track", t, p, event="whitepaper_download", properties={"asset_id": "wp-1"})
        if r.random() < 0.02:
            yield step(), self._event(r, "track", t, p, event="price_inquiry", properties={})

    def _visit(self, r: random.Random, t: datetime, p: dict[str, Any], viewed: list[dict[str, Any]],
               identify: dict[str, Any] | None = None, views: tuple[int, int] = (1, 6), cart: float = 0.35,
               pay: float = 0.5) -> Iterator[tuple[datetime, dict[str, Any]]]:
        """A session of an identity-resolution person: landing page; with ``identify``, a login (when the person
        has a userId not sent yet) and a Segment-style identify with these traits; product views (added to
        ``viewed``, the person's views across sessions and devices); maybe a cart (of anything viewed) and an
        order."""

        def step(lo: int = 3, hi: int = 90) -> datetime:
            nonlocal t
            t = t + timedelta(seconds=r.randint(lo, hi))
            return t

        yield t, self._event(r, "page", t, p, name="home", properties={"path": "/"})
        if identify is not None:
            if p.get("user_id") and not p["known"]:
                p["known"] = True
                yield step(), self._event(r, "track", t, p, event="login", properties={"method": "password"})
            yield step(1, 5), self._event(r, "identify", t, p, traits=identify)
        for _ in range(r.randint(*views)):
            prod = self._product(r)
            viewed.append(prod)
            yield step(), self._event(r, "track", t, p, event="product_view", properties=prod)
        if viewed and r.random() < cart:
            prod = r.choice(viewed)
            yield step(), self._event(r, "track", t, p, event="add_to_cart", properties={**prod, "quantity": 1})
            if r.random() < pay:
                yield step(), self._event(r, "track", t, p, event="checkout_start", properties={})
                yield step(20, 600), self._event(r, "track", t, p, event="order_paid",
                                                 properties={"order_id": f"ord-{self.seed}-{self._n}",
                                                             "amount": prod["price"], "currency": "CNY"})

    def _new_person(self, kind: str) -> int:
        self._kinds.append(kind)
        return len(self._kinds) - 1

    def _times(self, r: random.Random, n: int, before: datetime | None = None, within_s: float = 30 * 3600
               ) -> list[datetime]:
        """n sorted session starts within ``within_s`` before ``before`` (default: a random time), no earlier than
        the traffic's start and, so that a session that links identifiers is never cut off by the end, at least a
        little before its end."""
        latest = self._latest()
        last = self.start + (latest - self.start) * r.uniform(0.3, 1.0) if before is None else max(self.start, before)
        first = max(self.start, last - timedelta(seconds=within_s))
        return sorted(first + (last - first) * r.random() for _ in range(n))

    def _latest(self) -> datetime:
        return self.end - timedelta(seconds=min(3600.0, (self.end - self.start).total_seconds() * 0.05))

    def _phone(self, person: int) -> str:
        # 19x numbers: never one of the shoppers' (13x, 15x, 17x, 18x), one per person.
        return f"19{self.seed % 10}{person % 100_000_000:08d}"

    def _login_shopper(self, r: random.Random) -> Iterator[tuple[datetime, dict[str, Any]]]:
        """Browses anonymously on the web, half of them in the app too (its own anonymousId and device id), then
        logs in on the web and buys; an app user logs in in the app as well, later."""
        i = self._new_person("login")
        user_id = f"u{self.seed}-l{i:06d}"
        web = {"person": i, "anon": f"anon-{self.seed}-w{i:06d}", "channel": "web", "user_id": user_id,
               "known": False}
        login_at, *_ = self._times(r, 1)
        viewed: list[dict[str, Any]] = []
        devices = [web]
        if r.random() < 0.5:
            devices.append({"person": i, "anon": f"anon-{self.seed}-a{i:06d}", "channel": "app", "user_id": user_id,
                            "known": False, "device": {"id": _uuid(r), "type": r.choice(["ios", "android"])}})
        for t in self._times(r, r.randint(1, 3), before=login_at - timedelta(hours=1)):
            yield from self._visit(r, t, r.choice(devices), viewed, views=(1, 4), cart=0.15, pay=0.0)
        traits = {"phone": self._phone(i)} if r.random() < 0.5 else {}
        yield from self._visit(r, login_at, web, viewed, identify=traits, views=(0, 2), cart=0.8, pay=0.75)
        for app in devices[1:]:
            t = login_at + (self._latest() - login_at) * r.uniform(0.1, 1.0)
            yield from self._visit(r, t, app, viewed, identify={}, views=(1, 3), cart=0.3, pay=0.5)

    def _miniapp_shopper(self, r: random.Random) -> Iterator[tuple[datetime, dict[str, Any]]]:
        """Shops in the mini-program (its openid, no userId); most give their phone number in it (an identify with
        traits.phone only, written as they typed it); half of those later order on the web, logged in, giving
        the number again."""
        i = self._new_person("miniapp")
        phone = self._phone(i)
        mini = {"person": i, "anon": f"anon-{self.seed}-m{i:06d}", "channel": "miniapp", "known": False,
                "appid": MINIAPP_APPID, "identities": {"miniapp_openid": _openid(r)}}
        identified, web_order = r.random() < 0.8, r.random() < 0.5
        times = self._times(r, r.randint(1, 4) + (identified and web_order))
        mini_times = times[:-1] if identified and web_order else times
        at = r.randrange(len(mini_times)) if identified else -1
        viewed: list[dict[str, Any]] = []
        for k, t in enumerate(mini_times):
            traits = {"phone": r.choice([phone, f"+86 {phone[:3]} {phone[3:7]} {phone[7:]}"])} if k == at else None
            yield from self._visit(r, t, mini, viewed, identify=traits, cart=0.3, pay=0.4)
        if identified and web_order:
            web = {"person": i, "anon": f"anon-{self.seed}-mw{i:06d}", "channel": "web",
                   "user_id": f"u{self.seed}-m{i:06d}", "known": False}
            yield from self._visit(r, times[-1], web, viewed, identify={"phone": phone}, views=(0, 2), cart=0.8,
                                   pay=0.8)

    def _tablet(self, r: random.Random) -> Iterator[tuple[datetime, dict[str, Any]]]:
        """A store's tablet: two customers log in on it (one device id, one app install), every event logged in.
        Their userIds must never join, and neither gets the other's events."""
        device = {"id": _uuid(r), "type": "android"}
        anon = f"anon-{self.seed}-t{len(self._kinds):06d}"
        for _ in range(2):
            i = self._new_person("tablet")
            p = {"person": i, "anon": anon, "channel": "app", "user_id": f"u{self.seed}-t{i:06d}", "known": True,
                 "device": device}
            for k, t in enumerate(self._times(r, r.randint(1, 3))):
                yield from self._visit(r, t, p, [], identify={"phone": self._phone(i)} if k == 0 else None,
                                       cart=0.4, pay=0.5)

    def _blocked(self, r: random.Random, k: int) -> Iterator[tuple[datetime, dict[str, Any]]]:
        """An app that sends a placeholder userId on every event, or an anonymous sign-up with the QA phone number:
        identifiers no two persons may be joined by, so each stays their own."""
        # By turns: userId "null", userId "0", the QA phone number.
        placeholder = PLACEHOLDER_USER_IDS[k % 3] if k % 3 < len(PLACEHOLDER_USER_IDS) else None
        kind = "test_phone" if placeholder is None else "placeholder_user_id"
        i = self._new_person(kind)
        p: dict[str, Any] = {"person": i, "anon": f"anon-{self.seed}-b{i:06d}", "channel": r.choice(CHANNELS),
                             "known": placeholder is not None, "user_id": placeholder}
        viewed: list[dict[str, Any]] = []
        for n, t in enumerate(self._times(r, r.randint(1, 3))):
            traits = {"phone": TEST_PHONE} if kind == "test_phone" and n == 0 else None
            yield from self._visit(r, t, p, viewed, identify=traits, cart=0.4, pay=0.5)

    def _identity_persons(self) -> Iterator[tuple[datetime, dict[str, Any]]]:
        r = self.identity_rng
        for _ in range(_share(self.users, LOGIN_SHARE)):
            yield from self._login_shopper(r)
        for _ in range(_share(self.users, MINIAPP_SHARE)):
            yield from self._miniapp_shopper(r)
        for _ in range(_share(self.users, TABLET_SHARE)):
            yield from self._tablet(r)
        for k in range(_share(self.users, BLOCKED_SHARE)):
            yield from self._blocked(r, k)

    def events(self) -> list[dict[str, Any]]:
        """The events in time order (generated once per instance)."""
        if self._events is not None:
            return self._events
        r = self.rng
        people = []
        for i in range(self.users):
            people.append({
                "user_id": f"u{self.seed}-{i:06d}", "anon": f"anon-{self.seed}-{i:06d}",
                "phone": f"1{r.choice('3578')}{r.randint(0, 9)}{r.randint(0, 99999999):08d}",
                "email": f"user{i}@example.com", "known": r.random() < 0.4, "channel": r.choice(CHANNELS),
                "gender": r.choice(["female", "male"]), "age": r.randint(18, 60),
                "variant": r.choice(EXPERIMENT_VARIANTS) if r.random() < EXPERIMENT_SHARE else None,
                "person": self._new_person("shopper"),
            })
        out: list[tuple[datetime, int, dict[str, Any]]] = []
        span = (self.end - self.start).total_seconds()
        for p in people:
            sessions = max(1, int(r.expovariate(1 / max(1.0, self.days * 0.6))))
            for _ in range(sessions):
                t0 = self.start + timedelta(seconds=r.uniform(0, span * 0.98))
                for t, ev in self._session(t0, p):
                    if t <= self.end:
                        out.append((t, len(out), ev))
        for t, ev in self._identity_persons():
            if t <= self.end:
                out.append((t, len(out), ev))
        out.sort(key=lambda x: (x[0], x[1]))
        self._events = [ev for _, _, ev in out]
        return self._events

    def truth(self) -> dict[str, int]:
        """Each event's messageId -> the index of the person who really sent it (``kinds()[index]`` is what kind
        of person that is): what identity resolution should find, to count true persons."""
        return {ev["messageId"]: self._person_of[ev["messageId"]] for ev in self.events()}

    def kinds(self) -> list[str]:
        """Each person's kind (one of PERSON_KINDS), by person index: the shoppers are 0 .. users - 1."""
        self.events()
        return list(self._kinds)


def _share(users: int, share: float) -> int:
    """How many of a kind of person ``users`` shoppers come with: the share, rounded, at least one of each."""
    return max(1, round(users * share)) if users else 0


def _uuid(r: random.Random) -> str:
    return str(uuid.UUID(int=r.getrandbits(128), version=4)).upper()


def _openid(r: random.Random) -> str:
    # WeChat openids: 28 characters of URL-safe base64, starting with "o".
    return "o" + "".join(r.choice(_OPENID_CHARS) for _ in range(27))


_OPENID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def generate(users: int, days: float, seed: int, end: datetime | None = None) -> list[dict[str, Any]]:
    return ShopTraffic(users, days, seed, end).events()
