"""The order desk: every order out and every cancel, for all strategies.

    strategy ──place──► validate ──► risk (strategy, then global) ──► journal ──► broker
                                                                       (market, or paper)

Placement is serialized from the risk check to the journal entry, so two strategies cannot both
pass a limit that only one of them fits; the submission itself runs unlocked. A submission whose
answer is lost (a timeout, a cut connection, a cancellation) may have reached the market: its
intent becomes UNKNOWN, never resent, and the resolver is woken to find it (`resolver.py`).

An order that cannot be cancelled yet (no market id) is cancelled the moment it shows up, and so
is every order while the kill switch is engaged (`halt`): the desk runs those cancels in its own
nursery (`run`).
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

import attrs
import trio

from flexbot import logs, model, rules, wire
from flexbot.assets import Fleet
from flexbot.clock import Clock
from flexbot.engine.deliverable import deliverable, pool_rooms
from flexbot.engine.loader import StrategySpec
from flexbot.engine.orders import Change, DuplicateIntent, Intent, OrderTracker
from flexbot.engine.paper import PaperBroker
from flexbot.engine.risk import (
    DEFAULT_COMMIT_RATIO,
    Exposure,
    OrderRate,
    PoolRoom,
    Rejection,
    RiskLimits,
    TradingState,
    check,
)
from flexbot.engine.settings import EngineSettings
from flexbot.market import Conflict, MarketError, NotFound, OutcomeUnknown
from flexbot.trading import Deliverable, IntentState, OwnOrder, Window

log = logs.get_logger("flexbot.engine.desk")


class Broker(Protocol):
    """The market client's order calls (`MarketClient`, or the `PaperBroker`)."""

    async def submit_order(self, request: model.OrderRequest) -> model.Order: ...
    async def get_order(self, order_id: str) -> model.Order: ...
    async def list_orders(self) -> list[model.Order]: ...
    async def cancel_order(self, order_id: str) -> model.Order | None: ...


class Placer(Protocol):
    """Whose order it is: a strategy's runner, as far as the desk needs it."""

    @property
    def name(self) -> str: ...
    @property
    def spec(self) -> StrategySpec: ...
    @property
    def active(self) -> bool: ...
    @property
    def state(self) -> str: ...


Deliver = Callable[[Sequence[Change]], None]


class OrderDesk:
    def __init__(
        self,
        settings: EngineSettings,
        *,
        clock: Clock,
        tracker: OrderTracker,
        broker: Broker | None,
        limits: RiskLimits,
        deliver: Deliver,  # every change to an own order goes out through it (the engine)
        unknown_found: Callable[[], None],  # wakes the resolver
        counts: Counter[str],
        fleet: Fleet | None = None,  # the portfolio: sells are checked against what it can deliver
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.clock = clock
        self.tracker = tracker
        self.broker = broker
        self.paper = PaperBroker(clock.now)
        self.limits = limits
        self.halted: list[str] = []  # why the kill switch is engaged; empty: it is not
        self.stopping = False
        self._deliver = deliver
        self._unknown_found = unknown_found
        self._counts = counts
        self._risk_lock = trio.Lock()
        self._rate = OrderRate(trio.current_time)
        self._strategy_rates: defaultdict[str, OrderRate] = defaultdict(
            lambda: OrderRate(trio.current_time)
        )
        self._cancel_on_sight: set[str] = set()  # client ids to cancel as soon as they are open
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the cancels made at sight, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # --- placing --------------------------------------------------------------------------------

    async def place(
        self,
        placer: Placer,
        side: model.Side,
        window: Window,
        *,
        power_w: Decimal,
        price: Decimal,
        expiry: datetime | None = None,
        location: model.Location | None = None,
        baseline: model.MeterReading | None = None,
    ) -> OwnOrder:
        now = self.clock.now()
        spec = placer.spec
        request = model.OrderRequest(
            side=model.Side(side),
            power=Decimal(power_w),
            price=Decimal(price),
            delivery_start=window.start,
            delivery_end=window.end,
            expiry_time=expiry or window.start - timedelta(seconds=self.settings.expiry_lead_s),
            location=location if location is not None else spec.location,
            baseline=baseline,
        )
        name = placer.name
        problems = rules.check_order_request(request, now)
        if problems:
            message = "; ".join(str(p) for p in problems)
            return self._refused(name, request, Rejection("validation", message, name))
        dry_run = self.settings.dry_run or spec.dry_run
        async with self._risk_lock:
            rejection = self._check_risk(placer, request, dry_run)
            if rejection is not None:
                return self._refused(name, request, rejection)
            try:
                intent = await self.tracker.new_intent(
                    name, spec.version, request, now, dry_run=dry_run
                )
            except DuplicateIntent as exc:
                why = f"an unresolved order with the same fingerprint exists ({exc})"
                return self._refused(name, request, Rejection("duplicate_unresolved", why, name))
            self._rate.record()
            self._strategy_rates[name].record()
        self._counts["intents"] += 1
        log.info("order.intent", **describe(intent), version=intent.version, dry_run=dry_run)
        broker = self._broker_for(intent)
        try:
            order = await self._submit(broker, intent)
            if intent.dry_run:  # a paper order may trade at once with the book it was placed into
                order = self.paper.fill_at_once(order.order_id) or order
        except OutcomeUnknown as exc:
            await self._unknown(intent, str(exc))
        except MarketError as exc:  # refused before it was processed (422, 401, 429, …)
            change = await self.tracker.set_state(intent, IntentState.REJECTED, now, str(exc))
            log.warning("order.rejected", **describe(intent), by="market", reason=str(exc))
            self._counts["rejected"] += 1
            self._deliver([change])
        except Exception as exc:  # anything else may have reached the market: find out
            log.exception("order.submit_error", **describe(intent))
            await self._unknown(intent, f"{type(exc).__name__}: {exc}")
        else:
            change = await self.tracker.placed(intent, order, self.clock.now())
            log.info("order.placed", **describe(intent), status=str(order.status))
            self._counts["placed"] += 1
            self._deliver([change])
            for contract in order.contracts:  # immediate paper fills
                self._deliver([Change(intent.snapshot(), contract)])
        return intent.snapshot()

    async def _submit(self, broker: Broker, intent: Intent) -> model.Order:
        """Send; if cancelled meanwhile (a timeout, shutdown), the order may exist: it becomes
        UNKNOWN (resolved later, never resent) before the cancellation goes on."""
        try:
            return await broker.submit_order(intent.request)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await self._unknown(intent, "the submission was cancelled before its answer")
            raise

    def _check_risk(
        self, placer: Placer, request: model.OrderRequest, dry_run: bool
    ) -> Rejection | None:
        limits = self.limits
        if self.halted:
            limits = attrs.evolve(limits, state=TradingState.HALTED)
        if self.stopping:
            return Rejection("trading_state", "the engine is stopping", "global")
        if not placer.active:
            return Rejection("trading_state", f"strategy is {placer.state}", placer.name)
        window = Window.of(request)
        country = request.location.country_code
        pool: PoolRoom | None = None
        if self.fleet is not None and request.side is model.Side.SELL:
            sites = request.location.location_id
            rooms = pool_rooms(
                self.fleet, self.tracker, sites, [window], now=self.clock.now(), dry_run=dry_run
            )
            pool = rooms[window][0]
        for scope, scope_limits, strategy, rate in (
            (placer.name, placer.spec.risk, placer.name, self._strategy_rates[placer.name]),
            ("global", limits, None, self._rate),
        ):
            exposure = Exposure(
                open_orders=len(self.tracker.live(strategy, dry_run=dry_run)),
                window=self.tracker.position(window, strategy=strategy, dry_run=dry_run),
                country_window=self.tracker.position(
                    window, strategy=strategy, country=country, dry_run=dry_run
                ),
                orders_last_minute=rate.count(),
                pool=pool,
            )
            rejection = check(request, scope_limits, exposure, scope=scope)
            if rejection is not None:
                return rejection
        return None

    def deliverable(
        self,
        sites: Sequence[str | None],
        windows: Sequence[Window],
        *,
        dry_run: bool,
        ratio: Decimal | None = None,
    ) -> list[Deliverable] | None:
        """What the pool of `sites` can still deliver in each window (None: no portfolio);
        `ratio`: a strategy's own `max_commit_ratio`, if it has one."""
        if self.fleet is None:
            return None
        now = self.clock.now()
        ratio = commit_ratio(self.limits, ratio)
        return deliverable(
            self.fleet, self.tracker, sites, windows, now=now, ratio=ratio, dry_run=dry_run
        )

    async def withdraw_undeliverable(self) -> int:
        """Cancel open sells (what is not filled of them) where the assets can no longer serve
        what is committed (a state went stale, a battery ran low): pool by pool, the first window
        short first, its newest offers first, until the rest is within `max_commit_ratio` of what
        the assets can deliver (then the pool is weighed again: a withdrawn offer frees energy
        for the windows after it). Returns how many were asked to cancel."""
        if self.fleet is None or self.halted:
            return 0
        now = self.clock.now()
        pools: defaultdict[tuple[tuple[str, ...], bool], list[Intent]] = defaultdict(list)
        for intent in self.tracker.live():
            request = intent.request
            on_book = intent.state is IntentState.OPEN and request.delivery_start > now
            if request.side is model.Side.SELL and on_book:
                sites = tuple(dict.fromkeys(s for s in request.location.location_id if s))
                pools[(sites, intent.dry_run)].append(intent)
        ratio = commit_ratio(self.limits)
        asked = 0
        for (sites, dry_run), offers in pools.items():
            while offers:
                windows = sorted({Window.of(i.request) for i in offers})
                rooms = pool_rooms(
                    self.fleet, self.tracker, sites, windows, now=now, dry_run=dry_run
                )
                short = [
                    w for w in windows if rooms[w][0].committed_w > ratio * rooms[w][0].servable_w
                ]
                if not short:
                    break
                window = short[0]
                pool = rooms[window][0]
                excess = pool.committed_w - ratio * pool.servable_w
                here = [i for i in offers if Window.of(i.request) == window]
                for intent in sorted(here, key=lambda i: i.created_at, reverse=True):
                    if excess <= 0:
                        break
                    remaining = intent.snapshot().remaining_power_w
                    log.warning(
                        "availability.withdrawn",
                        **describe(intent),
                        committed_w=float(pool.committed_w),
                        deliverable_w=float(pool.servable_w),
                    )
                    self._counts["withdrawn"] += 1
                    await self.cancel(intent.client_id)
                    excess -= remaining
                    asked += 1
                # Weighed once: what is left there (sold, or cancels refused) stays as it is.
                offers = [i for i in offers if Window.of(i.request) != window]
        return asked

    async def watch_availability(self, every_s: float) -> None:
        """`withdraw_undeliverable`, every `every_s` (wall seconds), for ever."""
        while True:
            await trio.sleep(every_s)
            await self.withdraw_undeliverable()

    def _refused(self, name: str, request: model.OrderRequest, rejection: Rejection) -> OwnOrder:
        log.warning(
            "risk.rejected",
            strategy=name,
            limit=rejection.limit,
            scope=rejection.scope,
            reason=rejection.message,
            side=str(request.side),
            power_w=float(request.power),
            price=float(request.price),
            delivery_start=wire.format_datetime(request.delivery_start),
        )
        self._counts["risk_rejected"] += 1
        self._counts[f"risk_rejected:{rejection.limit}"] += 1
        return OwnOrder(
            client_id="",
            strategy=name,
            request=request,
            state=IntentState.REJECTED,
            reason=str(rejection),
        )

    async def _unknown(self, intent: Intent, reason: str) -> None:
        if intent.order_id is not None:
            # Its report on /trade outran the lost answer: the order is known already.
            log.info("order.answer_lost", **describe(intent), reason=reason)
            return
        await self.tracker.set_state(intent, IntentState.UNKNOWN, self.clock.now(), reason)
        log.warning("order.unknown", **describe(intent), reason=reason)
        self._counts["unknown"] += 1
        self._unknown_found()

    # --- cancelling -----------------------------------------------------------------------------

    async def cancel(self, client_id: str, *, strategy: str | None = None) -> OwnOrder:
        intent = self.tracker.get(client_id)
        if intent is None or (strategy is not None and intent.strategy != strategy):
            raise KeyError(f"no order {client_id!r} of strategy {strategy!r}")
        if intent.state.is_unresolved:
            # Cannot cancel what has no id yet: cancel it the moment it shows up.
            self._cancel_on_sight.add(client_id)
            log.info("order.cancel_deferred", **describe(intent))
            return intent.snapshot()
        if intent.state is not IntentState.OPEN or intent.order_id is None:
            return intent.snapshot()
        broker = self._broker_for(intent)
        try:
            order = await broker.cancel_order(intent.order_id)
        except (NotFound, Conflict) as exc:
            log.info("order.cancel_refused", **describe(intent), reason=str(exc))
            try:
                order = await broker.get_order(intent.order_id)
            except MarketError:
                return intent.snapshot()
        except MarketError as exc:
            log.warning("order.cancel_failed", **describe(intent), reason=str(exc))
            return intent.snapshot()
        if order is None:  # a 2xx without the order: cancelled, as far as we may know
            order = (
                attrs.evolve(intent.order, status=model.OrderStatus.CANCELLED)
                if intent.order
                else None
            )
        if order is not None:
            self._deliver(await self.tracker.apply_order(order, self.clock.now()))
        log.info(
            "order.cancelled", **describe(intent), status=str(intent.order and intent.order.status)
        )
        self._counts["cancelled"] += 1
        return intent.snapshot()

    async def cancel_all(self, strategy: str | None = None) -> int:
        live = self.tracker.live(strategy)
        limiter = trio.CapacityLimiter(self.settings.cancel_in_flight)

        async def one(intent: Intent) -> None:
            async with limiter:
                await self.cancel(intent.client_id)

        async with trio.open_nursery() as nursery:
            for intent in live:
                nursery.start_soon(one, intent)
        return len(live)

    async def halt(self, reasons: list[str]) -> None:
        """The kill switch, as last seen: while `reasons` is not empty every new order is
        refused, every open one cancelled, and every one still unresolved cancelled at sight."""
        self.halted = reasons
        if not reasons:
            return
        for intent in self.tracker.live():
            if intent.state is IntentState.OPEN:
                await self._cancel_quietly(intent.client_id)
            else:
                self._cancel_on_sight.add(intent.client_id)

    def changed(self, order: OwnOrder) -> None:
        """An own order changed: cancel it now if it was waiting to be, or trading is halted."""
        if not order.state.is_live:
            self._cancel_on_sight.discard(order.client_id)  # nothing left to cancel
            return
        must_cancel = self.halted or order.client_id in self._cancel_on_sight
        if must_cancel and order.state is IntentState.OPEN and self._nursery is not None:
            self._cancel_on_sight.discard(order.client_id)
            self._nursery.start_soon(self._cancel_quietly, order.client_id)

    async def _cancel_quietly(self, client_id: str) -> None:
        with contextlib.suppress(KeyError):  # forgotten meanwhile: nothing left to cancel
            await self.cancel(client_id)

    def _broker_for(self, intent: Intent) -> Broker:
        if intent.dry_run:
            return self.paper
        assert self.broker is not None
        return self.broker


def commit_ratio(limits: RiskLimits, strategy: Decimal | None = None) -> Decimal:
    """The share of what the assets can deliver that may be committed: the account's (1 unless
    set), or a strategy's own when it holds back more."""
    account = limits.max_commit_ratio or DEFAULT_COMMIT_RATIO
    return account if strategy is None else min(account, strategy)


def describe(order: Intent | OwnOrder) -> Mapping[str, object]:
    """An order's fields in a log event."""
    if isinstance(order, Intent):
        order = order.snapshot()
    request = order.request
    return {
        "strategy": order.strategy,
        "client_id": order.client_id,
        "order_id": order.order_id,
        "side": str(request.side),
        "power_w": float(request.power),
        "price": float(request.price),
        "delivery_start": wire.format_datetime(request.delivery_start),
    }
