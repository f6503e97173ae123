"""`flexbot replay`: run one strategy over a recording, against the paper broker (a backtest).

Market time is the recording's: each event sets the clock, and the strategy's timer fires at its
scheduled times in between. Every event is handled to the end (the strategy idle again) before
the next is read, so a replay is deterministic. Books and ticker events are replayed; the recorded
`/trade` events belonged to the recording account's own orders and are not the strategy's.

Fills follow the paper broker's model (`flexbot.engine.paper`): at the order's own price, taking
whole offers, never selling one book entry twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import attrs
import trio
import trio.testing
from attrs import define, frozen

from flexbot import model, wire
from flexbot.clock import SetClock
from flexbot.engine.engine import Engine
from flexbot.engine.loader import StrategySpec
from flexbot.engine.orders import OrderTracker
from flexbot.engine.recording import Recorded, read
from flexbot.engine.settings import EngineSettings
from flexbot.ledger import amount_eur, energy_kwh
from flexbot.market import Endpoint, TradeEvent
from flexbot.problems import Invalid
from flexbot.schedule import Schedule
from flexbot.trading import IntentState, Window


@define
class WindowResult:
    bought_kwh: Decimal = Decimal(0)
    sold_kwh: Decimal = Decimal(0)
    cash_eur: Decimal = Decimal(0)  # sales in, purchases out
    fills: int = 0


@frozen
class ReplayReport:
    events: int
    orders: int
    filled: int
    cancelled: int
    rejected: int
    windows: dict[Window, WindowResult]

    @property
    def cash_eur(self) -> Decimal:
        return sum((w.cash_eur for w in self.windows.values()), Decimal(0))

    def lines(self) -> list[str]:
        out = [
            f"events {self.events}, orders {self.orders}, filled {self.filled}, "
            f"cancelled {self.cancelled}, rejected by risk {self.rejected}",
            f"{'window':<24} {'bought kWh':>11} {'sold kWh':>10} {'fills':>6} {'P&L €':>10}",
        ]
        for window in sorted(self.windows):
            r = self.windows[window]
            out.append(
                f"{window!s:<24} {r.bought_kwh:>11.3f} {r.sold_kwh:>10.3f} "
                f"{r.fills:>6} {r.cash_eur:>10.4f}"
            )
        bought = sum((r.bought_kwh for r in self.windows.values()), Decimal(0))
        sold = sum((r.sold_kwh for r in self.windows.values()), Decimal(0))
        out.append(f"{'total':<24} {bought:>11.3f} {sold:>10.3f} {'':>6} {self.cash_eur:>10.4f}")
        return out


async def replay(
    spec: StrategySpec, events: Iterable[Recorded], settings: EngineSettings = EngineSettings()
) -> ReplayReport:
    events = iter(events)
    first = next(events, None)
    if first is None:
        raise Invalid.single((), "the recording holds no event")
    clock = SetClock(first.at)
    tracker = OrderTracker(None)
    spec = attrs.evolve(spec, enabled=True, dry_run=True)
    engine = Engine(
        attrs.evolve(settings, dry_run=True, cancel_on_shutdown=False),
        [spec],
        clock=clock,
        tracker=tracker,
        broker=None,
    )
    runner = engine.runners[spec.name]
    schedule = Schedule(spec.timer, first.at) if spec.timer is not None else None
    next_fire = schedule.next_after(first.at) if schedule is not None else None
    count = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: engine.run(duties=False, task_status=task_status))
        await trio.testing.wait_all_tasks_blocked()
        for event in _chain(first, events):
            while schedule is not None and next_fire is not None and next_fire <= event.at:
                clock.set(next_fire)
                await _expire(engine)
                runner.inbox.put_timer()
                await trio.testing.wait_all_tasks_blocked()
                next_fire = schedule.next_after(next_fire + timedelta(microseconds=1))
            clock.set(event.at)
            await _expire(engine)
            await _feed(engine, event)
            await trio.testing.wait_all_tasks_blocked()
            count += 1
        nursery.cancel_scope.cancel()
    return _report(tracker, count, engine.counts.get("risk_rejected", 0))


def _chain(first: Recorded, rest: Iterable[Recorded]) -> Iterable[Recorded]:
    yield first
    yield from rest


async def _expire(engine: Engine) -> None:
    for message in engine.paper.expire():
        assert isinstance(message, model.OrderStatusUpdate)
        await engine.on_trade(TradeEvent(message))


async def _feed(engine: Engine, event: Recorded) -> None:
    if event.endpoint is Endpoint.TRADE:
        return
    try:
        message = wire.message_from_data(event.message)
    except Invalid:
        return  # recorded as received; the live daemon skipped it too
    if isinstance(message, model.OrderBookUpdate):
        for fill in engine.on_book(message.data):
            assert isinstance(fill, model.OrderStatusUpdate | model.ContractStatusUpdate)
            await engine.on_trade(TradeEvent(fill))
    elif isinstance(message, model.TickerUpdate | model.ExpiredOrderUpdate):
        engine.on_fact(message.data)


def _report(tracker: OrderTracker, events: int, rejected: int) -> ReplayReport:
    windows: defaultdict[Window, WindowResult] = defaultdict(WindowResult)
    orders = filled = cancelled = 0
    for intent in tracker:
        orders += 1
        order = intent.order
        if order is None:
            continue
        if order.status == model.OrderStatus.CANCELLED:
            cancelled += 1
        window = Window.of(intent.request)
        for contract in order.contracts:
            result = windows[window]
            result.fills += 1
            kwh, eur = energy_kwh(contract), amount_eur(contract)
            if intent.request.side is model.Side.BUY:
                result.bought_kwh += kwh
                result.cash_eur -= eur
            else:
                result.sold_kwh += kwh
                result.cash_eur += eur
        if order.contracts:
            filled += 1
    assert all(
        i.state is not IntentState.UNKNOWN for i in tracker
    )  # paper orders are never unknown
    return ReplayReport(events, orders, filled, cancelled, rejected, dict(windows))


def load_recording(path: Path) -> list[Recorded]:
    """One recording file: the live `.jsonl`, or a rotated, compressed `.jsonl.gz`."""
    return list(read(path))
