"""The engine: market events in, strategy intents out.

    feed ──book──────► view ──► each strategy's inbox (conflated)
         ──ticker────► view ──► each strategy's inbox (bounded, oldest dropped)
         ──trade─────► tracker ──changes──► the owning strategy's inbox (latest per order)
    strategy ──place/cancel──► the order desk (`desk.py`: validate, risk, journal, broker)

Each strategy runs in its own task (`runner.py`). Beside them, in the engine's nursery: the desk's
cancels, the resolver of unknown submissions (`resolver.py`), the kill switch's watch
(`killswitch.py`), the strategies' timers and the paper broker's expiries. Every change to an own
order passes through `_deliver`: logged, told to the observers (verification, metrics), handed to
its strategy, and shown to the desk (which cancels it at sight if it must).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import attrs
import trio

from flexbot import logs, model, wire
from flexbot.assets import Fleet
from flexbot.clock import Clock, MarketClock
from flexbot.engine import killswitch
from flexbot.engine.desk import Broker, OrderDesk, describe
from flexbot.engine.inbox import Fact
from flexbot.engine.killswitch import KillSwitch
from flexbot.engine.loader import StrategySpec
from flexbot.engine.orders import Change, OrderTracker
from flexbot.engine.resolver import Resolver
from flexbot.engine.risk import RiskLimits
from flexbot.engine.runner import StrategyRunner
from flexbot.engine.settings import EngineSettings
from flexbot.engine.states import StateKeeper
from flexbot.engine.view import MarketView, without_own
from flexbot.market import MarketFeed, TradeEvent
from flexbot.schedule import run_timer
from flexbot.trading import IntentState

log = logs.get_logger("flexbot.engine")

STOP_CALLBACK_S = 5.0  # at shutdown: on_stop, and orders still being sent, get this long


WITHDRAW_EVERY_S = 5.0  # at most between two looks for offers the assets can no longer deliver


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
        states: StateKeeper | None = None,  # where strategies keep their state; None: nowhere
        fleet: Fleet | None = None,  # the portfolio's assets: sells are checked against them
    ) -> None:
        if broker is None and not settings.dry_run:
            raise ValueError("a live engine needs a broker (the market client)")
        self.settings = settings
        self.clock = clock
        self.tracker = tracker
        self.kill_switch = kill_switch or KillSwitch()
        self.view = MarketView(settings.trades_kept)
        self.observers = list(observers)  # told of every own-order change (verification, metrics)
        self.counts: Counter[str] = Counter()
        self.resolver = Resolver(
            settings, clock=clock, tracker=tracker, broker=broker, deliver=self._deliver
        )
        self.desk = OrderDesk(
            settings,
            clock=clock,
            tracker=tracker,
            broker=broker,
            limits=limits,
            deliver=self._deliver,
            unknown_found=self.resolver.wake,
            counts=self.counts,
            fleet=fleet,
        )
        self.paper = self.desk.paper
        self.runners: dict[str, StrategyRunner] = {}
        for spec in specs:
            if spec.enabled:
                self.runners[spec.name] = StrategyRunner(
                    spec, self, settings.supervision, settings.ticker_buffer, states=states
                )
            else:
                log.info("strategy.not_enabled", strategy=spec.name)

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
        self.desk.halted = await self.kill_switch.refresh()
        if self.desk.halted:
            log.warning("killswitch.engaged", reasons=self.desk.halted)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.desk.run)
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
                nursery.start_soon(self.resolver.run)
                nursery.start_soon(
                    killswitch.watch, self.kill_switch, self.desk, self.settings.kill_switch_poll_s
                )
                nursery.start_soon(self._tick_paper)
                fleet = self.desk.fleet
                if fleet is not None:
                    every_s = min(WITHDRAW_EVERY_S, fleet.settings.staleness_s / 4)
                    nursery.start_soon(self.desk.watch_availability, every_s)
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
        self.desk.stopping = True
        timeout = min(self.settings.supervision.callback_timeout_s, STOP_CALLBACK_S)
        async with trio.open_nursery() as nursery:
            for runner in self.runners.values():
                nursery.start_soon(runner.stop, timeout)
        if self.settings.cancel_on_shutdown:
            # An order still being sent is waited for (briefly), so it can be cancelled too.
            with trio.move_on_after(STOP_CALLBACK_S):
                while any(i.state is IntentState.PENDING for i in self.tracker.live()):  # noqa: ASYNC110 - tracker state has no event
                    await trio.sleep(0.05)
            cancelled = await self.desk.cancel_all()
            log.info("engine.cancelled_on_shutdown", orders=cancelled)

    def reload(self, specs: Sequence[StrategySpec], limits: RiskLimits) -> None:
        """Apply new params and risk limits. The reload re-imports each strategy's module, so
        params are compared by value and re-made with the running class: the code in use does
        not change on a reload. Anything else (a class, the timer, the location, dry_run, a
        strategy added or removed) needs a restart, and says so."""
        self.desk.limits = limits
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

    async def engage_kill_switch(self, why: str) -> None:
        """Engage the latch (a signal, an alarm), halt trading and cancel every order."""
        await self.kill_switch.engage(why, wire.format_datetime(self.clock.now()))
        self.desk.halted = self.kill_switch.reasons()
        log.warning("killswitch.engaged", reasons=self.desk.halted)
        await self.desk.cancel_all()

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
                    **describe(order),
                    contract_id=contract.contract_id,
                    contract_status=str(contract.status),
                    contract_power_w=float(contract.power),
                    contract_price=float(contract.price),
                )
                if contract.status == model.ContractStatus.CREATED:
                    self.counts["fills"] += 1
            else:
                log.info(
                    "order.status",
                    **describe(order),
                    state=str(order.state),
                    status=str(order.status),
                )
            for observer in self.observers:
                observer(change)
            runner = self.runners.get(order.strategy)
            if runner is not None and runner.active:
                runner.inbox.put_change(change)
            self.desk.changed(order)

    async def _tick_paper(self) -> None:
        while True:
            await trio.sleep(self.settings.paper_tick_s)
            for message in self.paper.expire():
                await self.on_trade(TradeEvent(_as_trade(message)))


def _as_trade(message: model.Message) -> model.OrderStatusUpdate | model.ContractStatusUpdate:
    assert isinstance(message, model.OrderStatusUpdate | model.ContractStatusUpdate)
    return message
