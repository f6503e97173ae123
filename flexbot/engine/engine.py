"""The engine: market events in, strategy intents out, through risk, the journal and the tracker.

    feed ──book──────► view ──► each strategy's inbox (conflated)
         ──ticker────► view ──► each strategy's inbox (bounded, oldest dropped)
         ──trade─────► tracker ──changes──► the owning strategy's inbox (never dropped)
    strategy ──place──► validate ──► risk (strategy, then global) ──► journal ──► broker
                                                                       (market, or paper)

Each strategy runs in its own task (`runner.py`). Placement is serialized from the risk check to
the journal entry, so two strategies cannot both pass a limit that only one of them fits; the
submission itself runs unlocked. Around it:
- the resolver looks for the orders of unknown submissions (a listing, where the market has one)
  and lapses those whose expiry passed unseen;
- the kill switch watcher halts trading and cancels every open order while the switch is engaged;
- timers wake strategies on their schedules; the paper broker's expiries are ticked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

import attrs
import trio
from attrs import frozen

from flexbot import logs, model, rules, wire
from flexbot.backoff import Backoff
from flexbot.clock import Clock, MarketClock
from flexbot.config import EngineConfig
from flexbot.engine.inbox import Fact
from flexbot.engine.killswitch import KillSwitch
from flexbot.engine.loader import StrategySpec
from flexbot.engine.orders import (
    Change,
    DuplicateIntent,
    Intent,
    OrderTracker,
    Unclaimed,
    could_be,
    lapse_due,
)
from flexbot.engine.paper import PaperBroker
from flexbot.engine.risk import Exposure, OrderRate, Rejection, RiskLimits, TradingState, check
from flexbot.engine.runner import StrategyRunner, Supervision
from flexbot.engine.view import MarketView, without_own
from flexbot.market import Conflict, MarketError, MarketFeed, NotFound, OutcomeUnknown, TradeEvent
from flexbot.schedule import run_timer
from flexbot.trading import IntentState, OwnOrder, Window

log = logs.get_logger("flexbot.engine")

FORGET_AFTER = timedelta(days=1)
STOP_CALLBACK_S = 5.0  # at shutdown: on_stop, and orders still being sent, get this long


class Broker(Protocol):
    """The market client's order calls (`MarketClient`, or the `PaperBroker`)."""

    async def submit_order(self, request: model.OrderRequest) -> model.Order: ...
    async def get_order(self, order_id: str) -> model.Order: ...
    async def list_orders(self) -> list[model.Order]: ...
    async def cancel_order(self, order_id: str) -> model.Order | None: ...


@frozen
class EngineSettings:
    dry_run: bool = False
    cancel_on_shutdown: bool = True
    expiry_lead_s: int = 60
    ticker_buffer: int = 256
    supervision: Supervision = Supervision()
    resolve_interval_s: float = 5.0
    not_placed_after_s: float = 10.0  # unknown, absent from a listing this long: not placed
    lapse_grace_s: float = 60.0  # unknown this long past its expiry: lapsed
    kill_switch_poll_s: float = 1.0
    paper_tick_s: float = 1.0
    trades_kept: int = 100
    cancel_in_flight: int = 4

    @classmethod
    def from_config(cls, engine: EngineConfig) -> EngineSettings:
        return cls(
            dry_run=engine.dry_run,
            cancel_on_shutdown=engine.cancel_on_shutdown,
            expiry_lead_s=engine.expiry_lead_s,
            ticker_buffer=engine.ticker_buffer,
            supervision=Supervision(
                max_failures=engine.max_failures,
                failure_window_s=engine.failure_window_s,
                backoff=Backoff(
                    base_s=engine.restart_backoff_s, cap_s=engine.restart_backoff_cap_s
                ),
                callback_timeout_s=engine.callback_timeout_s,
            ),
            resolve_interval_s=engine.resolve_interval_s,
        )


class Engine:
    def __init__(
        self,
        settings: EngineSettings,
        specs: Iterable[StrategySpec],
        *,
        clock: Clock,
        tracker: OrderTracker,
        broker: Broker | None,
        limits: RiskLimits = RiskLimits(),
        kill_switch: KillSwitch | None = None,
        observers: Sequence[Callable[[Change], None]] = (),
    ) -> None:
        if broker is None and not settings.dry_run:
            raise ValueError("a live engine needs a broker (the market client)")
        self.settings = settings
        self.clock = clock
        self.tracker = tracker
        self.broker = broker
        self.paper = PaperBroker(clock.now)
        self.limits = limits
        self.kill_switch = kill_switch or KillSwitch()
        self.view = MarketView(settings.trades_kept)
        self.observers = list(observers)  # told of every own-order change (verification, metrics)
        self.runners: dict[str, StrategyRunner] = {}
        for spec in specs:
            if spec.enabled:
                self.runners[spec.name] = StrategyRunner(
                    spec, self, settings.supervision, settings.ticker_buffer
                )
            else:
                log.info("strategy.not_enabled", strategy=spec.name)
        self._risk_lock = trio.Lock()
        self._rate = OrderRate(trio.current_time)
        self._strategy_rates = {name: OrderRate(trio.current_time) for name in self.runners}
        self._cancel_on_sight: set[str] = set()  # client ids to cancel as soon as they exist
        self._ambiguous: set[str] = set()  # unknown intents logged as `order.ambiguous` once
        self._resolve_now = trio.Event()
        self._killed: list[str] = []
        self._listing: bool | None = None  # does the market list our orders? None: not tried
        self._unknown_since: dict[str, float] = {}  # client id → trio time first found unlisted
        self._nursery: trio.Nursery | None = None
        self.counts: dict[str, int] = {}
        self.stopping = False

    # --- running --------------------------------------------------------------------------------

    async def run(
        self,
        feed: MarketFeed | None = None,
        *,
        duties: bool = True,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the strategies (and pump `feed` into them) until cancelled. `duties=False` leaves
        out the timed background work (resolver, kill switch, paper expiry, timers): a replay
        drives time itself."""
        self._killed = await self.kill_switch.refresh()
        if self._killed:
            log.warning("killswitch.engaged", reasons=self._killed)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if feed is not None:
                nursery.start_soon(self._pump_books, feed)
                nursery.start_soon(self._pump_ticker, feed)
                nursery.start_soon(self._pump_trades, feed)
            for runner in self.runners.values():
                nursery.start_soon(runner.run)
                timer = runner.spec.timer
                if duties and timer is not None and isinstance(self.clock, MarketClock):
                    nursery.start_soon(
                        run_timer, timer, self.clock, lambda _, r=runner: r.inbox.put_timer()
                    )
            if duties:
                nursery.start_soon(self._resolve_loop)
                nursery.start_soon(self._watch_kill_switch)
                nursery.start_soon(self._tick_paper)
            log.info(
                "engine.started",
                strategies=sorted(self.runners),
                dry_run=self.settings.dry_run,
                open_orders=len(self.tracker.live()),
            )
            task_status.started()

    async def shutdown(self) -> None:
        """Refuse new orders, let each strategy stop (`on_stop`), and, if configured, cancel every
        live order. The caller bounds how long this may take."""
        self.stopping = True
        timeout = min(self.settings.supervision.callback_timeout_s, STOP_CALLBACK_S)
        async with trio.open_nursery() as nursery:
            for runner in self.runners.values():
                nursery.start_soon(runner.stop, timeout)
        if self.settings.cancel_on_shutdown:
            # An order still being sent is waited for (briefly), so it can be cancelled too.
            with trio.move_on_after(STOP_CALLBACK_S):
                while any(i.state is IntentState.PENDING for i in self.tracker.live()):  # noqa: ASYNC110 - tracker state has no event
                    await trio.sleep(0.05)
            cancelled = await self.cancel_all()
            log.info("engine.cancelled_on_shutdown", orders=cancelled)

    def reload(self, specs: Sequence[StrategySpec], limits: RiskLimits) -> None:
        """Apply new params and risk limits. The reload re-imports each strategy's module, so
        params are compared by value and re-made with the running class: the code in use does
        not change on a reload. Anything else (a class, the timer, the location, dry_run, a
        strategy added or removed) needs a restart, and says so."""
        self.limits = limits
        new = {s.name: s for s in specs if s.enabled}
        for name, spec in new.items():
            runner = self.runners.get(name)
            if runner is None:
                continue
            old = runner.spec
            if spec.cls.__qualname__ != old.cls.__qualname__:
                log.warning("config.reload_needs_restart", strategy=name, why="class changed")
                continue
            others = [
                field
                for field in ("timer", "location", "dry_run")
                if getattr(spec, field) != getattr(old, field)
            ]
            if others:
                log.warning("config.reload_needs_restart", strategy=name, why=others)
            raw = wire.CONVERTER.unstructure(spec.params)
            if raw == wire.CONVERTER.unstructure(old.params) and spec.risk == old.risk:
                continue
            params = wire.structure(raw, old.cls.Params, converter=wire.STRICT_CONVERTER)
            runner.reload(attrs.evolve(old, params=params, risk=spec.risk))
            log.info("config.reloaded", strategy=name)
        changed = set(new) ^ set(self.runners)
        if changed:
            log.warning("config.reload_needs_restart", strategies=sorted(changed))

    # --- placing and cancelling -----------------------------------------------------------------

    async def place(
        self,
        runner: StrategyRunner,
        side: model.Side,
        power_w: Decimal,
        price: Decimal,
        window: Window,
        *,
        expiry: datetime | None = None,
        location: model.Location | None = None,
        baseline: model.MeterReading | None = None,
    ) -> OwnOrder:
        now = self.clock.now()
        request = model.OrderRequest(
            side=model.Side(side),
            power=Decimal(power_w),
            price=Decimal(price),
            delivery_start=window.start,
            delivery_end=window.end,
            expiry_time=expiry or window.start - timedelta(seconds=self.settings.expiry_lead_s),
            location=location if location is not None else runner.spec.location,
            baseline=baseline,
        )
        name = runner.name
        problems = rules.check_order_request(request, now)
        if problems:
            message = "; ".join(str(p) for p in problems)
            return self._refused(runner, request, Rejection("validation", message, name))
        dry_run = self.settings.dry_run or runner.spec.dry_run
        async with self._risk_lock:
            rejection = self._check_risk(runner, request, dry_run)
            if rejection is not None:
                return self._refused(runner, request, rejection)
            try:
                intent = await self.tracker.new_intent(
                    name, runner.spec.version, request, now, dry_run=dry_run
                )
            except DuplicateIntent as exc:
                why = f"an unresolved order with the same fingerprint exists ({exc})"
                return self._refused(runner, request, Rejection("duplicate_unresolved", why, name))
            self._rate.record()
            self._strategy_rates[name].record()
        self._count("intents")
        log.info("order.intent", **_describe(intent), version=intent.version, dry_run=dry_run)
        broker = self._broker_for(intent)
        try:
            order = await self._submit(broker, intent)
            if intent.dry_run:  # a paper order may trade at once with the book it was placed into
                order = self.paper.fill_at_once(order.order_id) or order
        except OutcomeUnknown as exc:
            await self._unknown(intent, str(exc))
        except MarketError as exc:  # refused before it was processed (422, 401, 429, …)
            change = await self.tracker.set_state(intent, IntentState.REJECTED, now, str(exc))
            log.warning("order.rejected", **_describe(intent), by="market", reason=str(exc))
            self._count("rejected")
            self._deliver([change])
        except Exception as exc:  # anything else may have reached the market: find out
            log.exception("order.submit_error", **_describe(intent))
            await self._unknown(intent, f"{type(exc).__name__}: {exc}")
        else:
            change = await self.tracker.placed(intent, order, self.clock.now())
            log.info("order.placed", **_describe(intent), status=str(order.status))
            self._count("placed")
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
        self, runner: StrategyRunner, request: model.OrderRequest, dry_run: bool
    ) -> Rejection | None:
        limits = self.limits
        if self._killed:
            limits = attrs.evolve(limits, state=TradingState.HALTED)
        if self.stopping:
            return Rejection("trading_state", "the engine is stopping", "global")
        if not runner.active:
            return Rejection("trading_state", f"strategy is {runner.state}", runner.name)
        for scope, scope_limits, strategy, rate in (
            (runner.name, runner.spec.risk, runner.name, self._strategy_rates[runner.name]),
            ("global", limits, None, self._rate),
        ):
            window = Window.of(request)
            country = request.location.country_code
            exposure = Exposure(
                open_orders=len(self.tracker.live(strategy, dry_run=dry_run)),
                window=self.tracker.position(window, strategy=strategy, dry_run=dry_run),
                country_window=self.tracker.position(
                    window, strategy=strategy, country=country, dry_run=dry_run
                ),
                orders_last_minute=rate.count(),
            )
            rejection = check(request, scope_limits, exposure, scope=scope)
            if rejection is not None:
                return rejection
        return None

    def _refused(
        self, runner: StrategyRunner, request: model.OrderRequest, rejection: Rejection
    ) -> OwnOrder:
        log.warning(
            "risk.rejected",
            strategy=runner.name,
            limit=rejection.limit,
            scope=rejection.scope,
            reason=rejection.message,
            side=str(request.side),
            power_w=float(request.power),
            price=float(request.price),
            delivery_start=wire.format_datetime(request.delivery_start),
        )
        self._count("risk_rejected")
        self._count(f"risk_rejected:{rejection.limit}")
        return OwnOrder(
            client_id="",
            strategy=runner.name,
            request=request,
            state=IntentState.REJECTED,
            reason=str(rejection),
        )

    async def _unknown(self, intent: Intent, reason: str) -> None:
        if intent.order_id is not None:
            # Its report on /trade outran the lost answer: the order is known already.
            log.info("order.answer_lost", **_describe(intent), reason=reason)
            return
        await self.tracker.set_state(intent, IntentState.UNKNOWN, self.clock.now(), reason)
        log.warning("order.unknown", **_describe(intent), reason=reason)
        self._count("unknown")
        self._resolve_now.set()

    async def cancel(self, client_id: str, *, strategy: str | None = None) -> OwnOrder:
        intent = self.tracker.get(client_id)
        if intent is None or (strategy is not None and intent.strategy != strategy):
            raise KeyError(f"no order {client_id!r} of strategy {strategy!r}")
        if intent.state.is_unresolved:
            # Cannot cancel what has no id yet: cancel it the moment it shows up.
            self._cancel_on_sight.add(client_id)
            log.info("order.cancel_deferred", **_describe(intent))
            return intent.snapshot()
        if intent.state is not IntentState.OPEN or intent.order_id is None:
            return intent.snapshot()
        broker = self._broker_for(intent)
        try:
            order = await broker.cancel_order(intent.order_id)
        except (NotFound, Conflict) as exc:
            log.info("order.cancel_refused", **_describe(intent), reason=str(exc))
            try:
                order = await broker.get_order(intent.order_id)
            except MarketError:
                return intent.snapshot()
        except MarketError as exc:
            log.warning("order.cancel_failed", **_describe(intent), reason=str(exc))
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
            "order.cancelled", **_describe(intent), status=str(intent.order and intent.order.status)
        )
        self._count("cancelled")
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

    def _broker_for(self, intent: Intent) -> Broker:
        if intent.dry_run:
            return self.paper
        assert self.broker is not None
        return self.broker

    # --- market events --------------------------------------------------------------------------

    def on_book(self, book: model.OrderBook) -> list[model.Message]:
        """A new book: paper fills, the view, every strategy's inbox (the book without our own
        orders). Returns the `/trade` messages of the paper fills it made."""
        fills = self.paper.match(book)
        theirs = without_own(book, (i.snapshot() for i in self.tracker.live(dry_run=False)))
        self.view.book = theirs
        for runner in self.runners.values():
            if runner.active:
                runner.inbox.put_book(theirs)
        return fills

    def on_fact(self, fact: Fact) -> None:
        if isinstance(fact, model.Ticker):
            self.view.trades.append(fact)
        for runner in self.runners.values():
            if runner.active and not runner.inbox.put_fact(fact):
                dropped = runner.inbox.dropped_facts
                if dropped == 1 or dropped % 100 == 0:
                    log.warning("strategy.facts_dropped", strategy=runner.name, dropped=dropped)

    async def on_trade(self, event: TradeEvent) -> None:
        self._deliver(await self.tracker.apply(event, self.clock.now()))

    async def _pump_books(self, feed: MarketFeed) -> None:
        while True:
            book = await feed.next_book()
            if book is None:
                self.view.book = None
                continue
            for message in self.on_book(book):
                await self.on_trade(TradeEvent(_as_trade(message)))

    async def _pump_ticker(self, feed: MarketFeed) -> None:
        while True:
            message = await feed.ticker.get()
            if isinstance(message, model.TickerUpdate | model.ExpiredOrderUpdate):
                self.on_fact(message.data)

    async def _pump_trades(self, feed: MarketFeed) -> None:
        async for event in feed.trade:
            await self.on_trade(event)

    def _deliver(self, changes: Sequence[Change]) -> None:
        for change in changes:
            order = change.order
            if change.contract is not None:
                contract = change.contract
                event = (
                    "order.filled"
                    if contract.status == model.ContractStatus.CREATED
                    else "contract.status"
                )
                log.info(
                    event,
                    **_describe_own(order),
                    contract_id=contract.contract_id,
                    contract_status=str(contract.status),
                    contract_power_w=float(contract.power),
                    contract_price=float(contract.price),
                )
                if contract.status == model.ContractStatus.CREATED:
                    self._count("fills")
            else:
                log.info(
                    "order.status",
                    **_describe_own(order),
                    state=str(order.state),
                    status=str(order.status),
                )
            for observer in self.observers:
                observer(change)
            runner = self.runners.get(order.strategy)
            if runner is not None and runner.active:
                runner.inbox.put_change(change)
            must_cancel = self._killed or order.client_id in self._cancel_on_sight
            if must_cancel and order.state is IntentState.OPEN and self._nursery is not None:
                self._cancel_on_sight.discard(order.client_id)
                self._nursery.start_soon(self._cancel_quietly, order.client_id)

    async def _cancel_quietly(self, client_id: str) -> None:
        with contextlib.suppress(KeyError):  # forgotten meanwhile: nothing left to cancel
            await self.cancel(client_id)

    # --- background duties ----------------------------------------------------------------------

    async def _resolve_loop(self) -> None:
        while True:
            with trio.move_on_after(self.settings.resolve_interval_s):
                await self._resolve_now.wait()
            self._resolve_now = trio.Event()
            if self.tracker.unresolved():
                await self.resolve()
            # Memory stays bounded over months: what is settled and long past is let go (the
            # journal keeps it), and so are the notes kept about orders no longer live.
            self.tracker.forget_finished(self.clock.now() - FORGET_AFTER)
            live = {i.client_id for i in self.tracker.live()}
            self._cancel_on_sight &= live
            self._ambiguous &= live
            self._unknown_since = {k: v for k, v in self._unknown_since.items() if k in live}

    async def resolve(self) -> None:
        """Find the orders of unknown submissions; lapse those past their expiry."""
        listed = await self._list_orders()
        now = self.clock.now()
        started = trio.current_time()
        sorted_out = await self.tracker.unclaimed(listed) if listed is not None else Unclaimed([])
        found = sorted_out.free
        for intent in self.tracker.unresolved():
            if intent.dry_run or intent.state is not IntentState.UNKNOWN:
                continue  # paper, or resolved by /trade while an earlier one was saved
            if listed is not None:
                found = [o for o in found if self.tracker.by_order_id(o.order_id) is None]
                order = next((o for o in found if could_be(intent, o)), None)
                if order is not None:
                    log.info("order.resolved", **_describe(intent), how="listing")
                    self._deliver([await self.tracker.placed(intent, order, now)])
                    continue
                if any(could_be(intent, o) for o in sorted_out.ambiguous):
                    # Ours or the operator's: not "not placed"; wait for the operator's answer.
                    if intent.client_id not in self._ambiguous:
                        self._ambiguous.add(intent.client_id)
                        log.info("order.ambiguous", **_describe(intent), like="an operator's order")
                else:
                    age = started - self._unknown_since.setdefault(intent.client_id, started)
                    if age >= self.settings.not_placed_after_s:
                        reason = "not on the market: the unknown submission did not take effect"
                        change = await self.tracker.set_state(
                            intent, IntentState.REJECTED, now, reason
                        )
                        log.warning("order.not_placed", **_describe(intent))
                        self._deliver([change])
                        continue
            if lapse_due(intent, now, timedelta(seconds=self.settings.lapse_grace_s)):
                reason = "never seen on the market before its expiry"
                change = await self.tracker.set_state(intent, IntentState.LAPSED, now, reason)
                log.warning("order.lapsed", **_describe(intent))
                self._deliver([change])

    async def _list_orders(self) -> list[model.Order] | None:
        """The market's list of our orders, or None where it has none (the real market)."""
        if self._listing is False or self.broker is None:
            return None
        try:
            listed = await self.broker.list_orders()
        except MarketError as exc:
            if exc.status in (404, 405):
                self._listing = False
                log.info("reconcile.listing_unavailable", status=exc.status)
            else:
                log.info("reconcile.listing_failed", reason=str(exc))
            return None
        self._listing = True
        return listed

    async def _watch_kill_switch(self) -> None:
        while True:
            reasons = await self.kill_switch.refresh()
            if reasons and not self._killed:
                log.warning("killswitch.engaged", reasons=reasons)
            elif self._killed and not reasons:
                log.warning("killswitch.released")
            self._killed = reasons
            if reasons:
                for intent in self.tracker.live():
                    if intent.state is IntentState.OPEN:
                        await self._cancel_quietly(intent.client_id)
                    else:
                        self._cancel_on_sight.add(intent.client_id)
            await trio.sleep(self.settings.kill_switch_poll_s)

    async def engage_kill_switch(self, why: str) -> None:
        await self.kill_switch.engage(why, wire.format_datetime(self.clock.now()))
        self._killed = self.kill_switch.reasons()
        log.warning("killswitch.engaged", reasons=self._killed)
        await self.cancel_all()

    async def _tick_paper(self) -> None:
        while True:
            await trio.sleep(self.settings.paper_tick_s)
            for message in self.paper.expire():
                await self.on_trade(TradeEvent(_as_trade(message)))

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


def _as_trade(message: model.Message) -> model.OrderStatusUpdate | model.ContractStatusUpdate:
    assert isinstance(message, model.OrderStatusUpdate | model.ContractStatusUpdate)
    return message


def _describe(intent: Intent) -> Mapping[str, object]:
    return _describe_own(intent.snapshot())


def _describe_own(order: OwnOrder) -> dict[str, object]:
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
