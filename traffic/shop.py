"""Synthetic, realistic shop traffic (JSON lines): browsing, carts, orders, sign-ups, identifies, a few leads,
sessions that start from marketing campaigns (UTM data in the landing page's context.campaign) and an A/B test
(``Experiment Viewed`` exposures) whose treatment really does sell more.

Deterministic for a seed and an end time, so tests and benchmarks can count on exact contents.
"""

from __future__ import annotations

import random
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

    def _mid(self) -> str:
        self._n += 1
        return f"gen-{self.seed}-{self._n:09d}"

    def _event(self, typ: str, t: datetime, person: dict[str, Any], **kw: Any) -> dict[str, Any]:
        # As a collector would have archived it: sent shortly after it happened, received shortly after that.
        sent = t + timedelta(milliseconds=self.rng.randint(5, 900))
        received = sent + timedelta(milliseconds=self.rng.randint(20, 300))
        ev: dict[str, Any] = {"type": typ, "messageId": self._mid(), "anonymousId": person["anon"],
                              "timestamp": _iso(t), "sentAt": _iso(sent), "receivedAt": _iso(received),
                              "context": {"channel": person["channel"]}}
        if person["known"]:
            ev["userId"] = person["user_id"]
        ev.update(kw)
        return ev

    def _product(self) -> dict[str, Any]:
        cat = self.rng.choice(CATEGORIES)
        return {"sku": f"SKU-{cat[:3].upper()}-{self.rng.randint(1, 400):04d}", "category": cat,
                "price": round(self.rng.uniform(9, 999), 2)}

    def _session(self, t: datetime, p: dict[str, Any]) -> Iterator[tuple[datetime, dict[str, Any]]]:
        r = self.rng

        def step(lo: int = 3, hi: int = 90) -> datetime:
            nonlocal t
            t = t + timedelta(seconds=r.randint(lo, hi))
            return t

        landing = self._event("page", t, p, name="home", properties={"path": "/"})
        intent = 1.0
        if r.random() < CAMPAIGN_SESSION_SHARE:
            source, medium, names, _, intent = r.choices(CAMPAIGNS, weights=[c[3] for c in CAMPAIGNS])[0]
            landing["context"]["campaign"] = {"source": source, "medium": medium, "name": r.choice(names)}
        yield t, landing
        if p["variant"]:
            yield step(1, 3), self._event("track", t, p, event="Experiment Viewed",
                                         properties={"experiment_id": EXPERIMENT_ID, "variation_id": p["variant"]})
            if p["variant"] == "treatment":
                intent *= TREATMENT_CART_LIFT
        if not p["known"] and r.random() < 0.25:
            p["known"] = True
            yield step(), self._event("track", t, p, event="signup", properties={"method": "phone"})
            yield step(1, 5), self._event("identify", t, p, identities={"phone": p["phone"], "email": p["email"]},
                                         traits={"phone_verified": True, "marketing_consent": True,
                                                 "timezone": "Asia/Shanghai", "gender": p["gender"],
                                                 "age": p["age"]})
        elif p["known"] and r.random() < 0.3:
            yield step(), self._event("track", t, p, event="login", properties={})
            yield step(1, 5), self._event("identify", t, p, identities={"phone": p["phone"]}, traits={})
        viewed = []
        for _ in range(r.randint(1, 8)):
            if r.random() < 0.2:
                yield step(), self._event("track", t, p, event="search", properties={"query": r.choice(CATEGORIES)})
            prod = self._product()
            viewed.append(prod)
            yield step(), self._event("track", t, p, event="product_view", properties=prod)
        if r.random() < min(0.9, 0.35 * intent):
            prod = r.choice(viewed)
            yield step(), self._event("track", t, p, event="add_to_cart", properties={**prod, "quantity": 1})
            if r.random() < 0.45:
                yield step(), self._event("track", t, p, event="checkout_start", properties={})
                # Some pay at once, some come back hours later, some never.
                late = r.random() < 0.3
                pay_t = step(7200, 30000) if late else step(20, 600)
                yield pay_t, self._event("track", pay_t, p, event="order_paid",
                                         properties={"order_id": f"ord-{self.seed}-{self._n}",
                                                     "amount": prod["price"], "currency": "CNY"})
        if r.random() < 0.03:
            yield step(), self._event("track", t, p, event="whitepaper_download", properties={"asset_id": "wp-1"})
        if r.random() < 0.02:
            yield step(), self._event("track", t, p, event="price_inquiry", properties={})

    def events(self) -> list[dict[str, Any]]:
        r = self.rng
        people = []
        for i in range(self.users):
            people.append({
                "user_id": f"u{self.seed}-{i:06d}", "anon": f"anon-{self.seed}-{i:06d}",
                "phone": f"1{r.choice('3578')}{r.randint(0, 9)}{r.randint(0, 99999999):08d}",
                "email": f"user{i}@example.com", "known": r.random() < 0.4, "channel": r.choice(CHANNELS),
                "gender": r.choice(["female", "male"]), "age": r.randint(18, 60),
                "variant": r.choice(EXPERIMENT_VARIANTS) if r.random() < EXPERIMENT_SHARE else None,
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
        out.sort(key=lambda x: (x[0], x[1]))
        return [ev for _, _, ev in out]


def generate(users: int, days: float, seed: int, end: datetime | None = None) -> list[dict[str, Any]]:
    return ShopTraffic(users, days, seed, end).events()
