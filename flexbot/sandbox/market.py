"""The sandbox market: the state behind the HTTP routes, free of HTTP.

It owns the clock, the token issuer, the rate limiter, the matching engine and the introspection
counters, and turns decoded request bodies into model objects or located errors. Every state change
produces matching events, which go to the subscribers (the WebSocket fan-out) in order.
"""

from __future__ import annotations

import os
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import attrs
from attrs import frozen

from flexbot import model, rules, wire
from flexbot.clock import MarketClock
from flexbot.problems import Invalid
from flexbot.sandbox.auth import TokenIssuer
from flexbot.sandbox.events import ContractChanged, Event
from flexbot.sandbox.faults import Faults, FaultSettings
from flexbot.sandbox.lifecycle import ContractLifecycle, LifecycleRules
from flexbot.sandbox.matching import Matcher, MatchingRules, NotASell
from flexbot.sandbox.ratelimit import RateLimit, RateLimiter

Subscriber = Callable[[list[Event]], None]

# The operator's token for the routes that change the sandbox (`POST /sandbox/faults`), read from
# the environment so that it never shows in a process list or a shell history.
ADMIN_TOKEN_ENV = "FLEXBOT_SANDBOX_ADMIN_TOKEN"


def _admin_token_from_env() -> str | None:
    return os.environ.get(ADMIN_TOKEN_ENV) or None


def _faults_on_at_start(settings: MarketSettings) -> bool:
    return settings.faults != FaultSettings()


@frozen
class MarketSettings:
    users: Mapping[str, str] = attrs.field(factory=lambda: {"demo": "demo"})
    token_ttl_s: int = 300
    refresh_ttl_s: int = 1800
    strict_refresh: bool = False
    rate_limit: RateLimit | None = attrs.field(factory=lambda: RateLimit(10, 1.0))
    time_scale: float = 1.0
    seed: int | None = None
    gate_closure_s: int = 0
    lifecycle: LifecycleRules = attrs.field(factory=LifecycleRules)
    faults: FaultSettings = attrs.field(factory=FaultSettings)
    # Faults may be changed while running (`POST /sandbox/faults`) without the admin token: by
    # default when the sandbox started with a fault on (a chaos run, a test); otherwise only the
    # operator, holding `admin_token`, may switch them (a shared sandbox must not be sabotaged).
    faults_switchable: bool = attrs.field(
        default=attrs.Factory(_faults_on_at_start, takes_self=True)
    )
    admin_token: str | None = attrs.field(factory=_admin_token_from_env, repr=False)
    # Caps on one order (all assumed, see `flexbot.rules`); None lifts them.
    caps: rules.MarketCaps | None = attrs.field(factory=rules.MarketCaps)
    # GET /api/v1/order/ lists the caller's orders: a sandbox convenience the real market does
    # not document (False: answered 405, as a client must expect of the real one).
    listing: bool = True
    counterparties: int = 0
    counterparty_interval_s: float = 2.0  # mean wall seconds between one trader's actions


class SandboxMarket:
    def __init__(self, settings: MarketSettings, *, clock: MarketClock | None = None) -> None:
        self.settings = settings
        self.clock = clock or MarketClock(settings.time_scale)
        self.issuer = TokenIssuer(
            settings.users,
            wall=self.clock.wall,
            access_ttl_s=settings.token_ttl_s,
            refresh_ttl_s=settings.refresh_ttl_s,
            strict_refresh=settings.strict_refresh,
        )
        self.limiter = (
            RateLimiter(settings.rate_limit, self.clock.wall) if settings.rate_limit else None
        )
        # The token endpoint has its own buckets with the same limit: logging in again must stay
        # possible for a user whose REST budget is spent, and guessing passwords must not be free.
        self.token_limiter = (
            RateLimiter(settings.rate_limit, self.clock.wall) if settings.rate_limit else None
        )
        rng = random.Random(settings.seed)

        def new_id() -> str:
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))

        self.matcher = Matcher(
            new_id=new_id, rules=MatchingRules(gate_closure_s=settings.gate_closure_s)
        )
        self.lifecycle = ContractLifecycle(self.matcher, new_id, settings.lifecycle)
        self.faults = Faults(settings.faults, wall=self.clock.wall, seed=settings.seed)
        self.requests: Counter[tuple[str, int]] = Counter()
        self.verifications: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.duplicates: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._subscribers: list[Subscriber] = []

    # --- events ---------------------------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def _publish(self, events: list[Event]) -> None:
        if not events:
            return
        for event in events:
            if (
                isinstance(event, ContractChanged)
                and event.contract.status == model.ContractStatus.CREATED
            ):
                self.lifecycle.track(event.contract)
        for subscriber in self._subscribers:
            subscriber(events)

    def tick(self) -> datetime:
        """Bring the market up to the current market time (expiries, then contract steps) and
        return that time, so a command that follows acts at exactly the same instant."""
        now = self.clock.now()
        self._publish(self.matcher.expire_due(now))
        self._publish(self.lifecycle.advance(now))
        return now

    def next_deadline(self) -> datetime | None:
        """The next market time at which `tick` has something to do."""
        due = [d for d in (self.matcher.next_expiry(), self.lifecycle.next_due()) if d is not None]
        return min(due, default=None)

    # --- orders ---------------------------------------------------------------------------------

    def submit_order(self, user: str, body: Any) -> model.Order:
        """Decode, validate and place an order; raises `Invalid` (422) with located problems."""
        return self.place(user, wire.structure(body, model.OrderRequest))

    def place(self, user: str, request: model.OrderRequest) -> model.Order:
        now = self.tick()
        rules.validate_order_request(
            request,
            now,
            strictness=rules.Strictness.MARKET,
            gate_closure_s=self.settings.gate_closure_s,
            caps=self.settings.caps,
        )
        order, events = self.matcher.submit(user, request, now)
        self._publish(events)
        return self.matcher.snapshot(order)

    def get_order(self, user: str, order_id: str) -> model.Order:
        self.tick()
        return self.matcher.snapshot(self.matcher.get(user, order_id))

    def list_orders(self, user: str) -> list[model.Order]:
        self.tick()
        return [self.matcher.snapshot(o) for o in self.matcher.orders(user)]

    def cancel_order(self, user: str, order_id: str) -> model.Order:
        now = self.tick()
        self._publish(self.matcher.cancel(user, order_id, now))
        return self.matcher.snapshot(self.matcher.get(user, order_id))

    # --- verification ---------------------------------------------------------------------------

    def submit_verification(self, user: str, body: Any) -> model.VerificationReceipt:
        """Baseline or metering data for a sell order. The submission checks data types only
        (spec §7); verification judges the content later."""
        return self.record_verification(user, wire.structure(body, model.VerificationRequest))

    def record_verification(
        self, user: str, request: model.VerificationRequest
    ) -> model.VerificationReceipt:
        kind = request.measurement_type
        if not isinstance(kind, model.MeasurementType):
            raise Invalid.single(
                ("measurement_type",), f"must be one of baseline, metering, got {kind!r}"
            )
        now = self.tick()
        order = self.matcher.get(user, request.order_id)
        if order.side is not model.Side.SELL:
            raise NotASell(request.order_id)
        reading = request.metering_data
        if kind is model.MeasurementType.BASELINE:
            fresh = order.baseline != reading
            if fresh:
                self._publish(self.matcher.set_baseline(user, request.order_id, reading, now))
        else:
            fresh = self.lifecycle.record_metering(order, reading, now)
            self.tick()  # verification runs at once when delivery has ended
        # Exactly once per (order, measurement): an identical resubmission is recognised.
        counter = self.verifications if fresh else self.duplicates
        counter[request.order_id][kind.value] += 1
        return model.VerificationReceipt(order_id=request.order_id, measurement_type=kind)

    # --- introspection --------------------------------------------------------------------------

    def introspect_orders(self) -> list[dict[str, Any]]:
        self.tick()
        out = []
        for order in self.matcher.orders():
            data = wire.unstructure(self.matcher.snapshot(order))
            data["owner"] = order.owner
            data["filled_power"] = wire.decimal_to_json(order.filled_w)
            data["remaining_power"] = wire.decimal_to_json(order.remaining_w)
            out.append(data)
        return out

    def stats(self) -> dict[str, Any]:
        self.tick()
        by_route: dict[str, dict[str, int]] = defaultdict(dict)
        for (route, status), count in sorted(self.requests.items()):
            by_route[route][str(status)] = count
        orders = Counter(str(o.status) for o in self.matcher.orders())
        return {
            "requests": by_route,
            "orders_by_status": dict(sorted(orders.items())),
            "contracts": len(self.matcher.contracts),
            "verification_submissions": {k: dict(v) for k, v in self.verifications.items()},
            "verification_duplicates": {k: dict(v) for k, v in self.duplicates.items()},
            "contracts_by_status": dict(
                sorted(Counter(str(c.status) for c in self.matcher.contracts.values()).items())
            ),
            "faults": self.faults.snapshot(),
        }
