"""A strategy's own-order events under a flood (`flexbot.engine.inbox`): bounded, and the strategy
still learns the final state of each of its orders.

The engine runs its real runner on trio's autojump clock; the market's reports go in through
`Engine.on_trade`, as the feed's pump delivers them, far faster than the slow strategy reads.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trio.testing
from structlog.testing import capture_logs

from flexbot import model
from flexbot.clock import MarketClock
from flexbot.engine.engine import Engine
from flexbot.engine.inbox import Inbox
from flexbot.engine.loader import StrategySpec
from flexbot.engine.orders import Change, Intent, OrderTracker
from flexbot.engine.settings import EngineSettings
from flexbot.market import TradeEvent
from flexbot.strategy import Context, NoParams, OwnOrder, Strategy

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
START = NOW + timedelta(hours=2)
END = START + timedelta(minutes=15)
NAME = "slow"


class Slow(Strategy[NoParams]):
    """Takes a second over every own-order callback and remembers what it was told."""

    def __init__(self, params: NoParams) -> None:
        super().__init__(params)
        self.told: list[tuple[str, datetime | None]] = []  # (client id, the report's time)
        self.orders: dict[str, OwnOrder] = {}
        self.contracts: dict[str, model.Contract] = {}

    async def on_order(self, ctx: Context, order: OwnOrder) -> None:
        self._learn(order)
        await trio.sleep(1)

    async def on_contract(self, ctx: Context, contract: model.Contract, order: OwnOrder) -> None:
        self.contracts[contract.contract_id] = contract
        self._learn(order)
        await trio.sleep(1)

    def _learn(self, order: OwnOrder) -> None:
        self.orders[order.client_id] = order
        self.told.append((order.client_id, order.order.updated_at if order.order else None))


def request(i: int) -> model.OrderRequest:
    return model.OrderRequest(
        side=model.Side.BUY,
        power=Decimal(1000),
        price=Decimal("0.10") + Decimal(i) / 100,
        delivery_start=START,
        delivery_end=END,
        expiry_time=START - timedelta(minutes=1),
        location=model.Location(("site-1",), "DE"),
    )


def order_of(
    req: model.OrderRequest, order_id: str, status: model.OrderStatus, at_s: int
) -> model.Order:
    return model.Order(
        order_id=order_id,
        side=req.side,
        power=req.power,
        price=req.price,
        delivery_start=req.delivery_start,
        delivery_end=req.delivery_end,
        status=status,
        expiry_time=req.expiry_time,
        location=req.location,
        created_at=NOW,
        updated_at=NOW + timedelta(seconds=at_s),
    )


def report(intent: Intent, status: model.OrderStatus, at_s: int) -> TradeEvent:
    assert intent.order_id is not None
    order = order_of(intent.request, intent.order_id, status, at_s)
    return TradeEvent(model.OrderStatusUpdate(data=order, name=str(status)))


def contract(intent: Intent, status: model.ContractStatus) -> TradeEvent:
    req = intent.request
    assert intent.order_id is not None
    made = model.Contract(
        contract_id=f"c-{intent.order_id}",
        buy_order_id=intent.order_id,
        sell_order_id="someone-else",
        power=req.power,
        energy=Decimal(250),
        price=req.price,
        delivery_start=req.delivery_start,
        delivery_end=req.delivery_end,
        status=status,
        created_at=NOW,
    )
    return TradeEvent(model.ContractStatusUpdate(data=made, name=str(status)))


async def engine_with_orders(count: int) -> tuple[Engine, list[Intent]]:
    """An engine running `Slow`, whose tracker holds `count` accepted orders of it."""
    tracker = OrderTracker(None)
    intents = []
    for i in range(count):
        intent = await tracker.new_intent(NAME, "0", request(i), NOW)
        accepted = order_of(intent.request, f"m-{i}", model.OrderStatus.ACCEPTED, 0)
        await tracker.placed(intent, accepted, NOW)
        intents.append(intent)
    spec = StrategySpec(name=NAME, path=Path("slow.yaml"), cls=Slow, params=NoParams())
    engine = Engine(
        EngineSettings(dry_run=True), [spec], clock=MarketClock(), tracker=tracker, broker=None
    )
    return engine, intents


def run(main: Any) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def never_back_in_time(told: list[tuple[str, datetime | None]]) -> bool:
    latest: dict[str, datetime] = {}
    for client_id, at in told:
        assert at is not None
        if at < latest.get(client_id, at):
            return False
        latest[client_id] = at
    return True


CONTRACT_LIFE = (
    model.ContractStatus.CREATED,
    model.ContractStatus.VERIFICATION_INITIATED,
    model.ContractStatus.VERIFICATION_COMPLETED_SUCCESS,
    model.ContractStatus.SETTLEMENT_INITIATED,
    model.ContractStatus.SETTLEMENT_COMPLETED_SUCCESS,
)


def test_a_flood_to_a_slow_strategy_stays_bounded_and_it_learns_how_each_order_ended() -> None:
    """30 rounds of reports for 12 orders (every other one filled, its contract through its whole
    life, the rest cancelled) to a strategy that takes a second per callback: the inbox never
    holds more than one change per order and contract, nothing is dropped, the strategy is called
    for a fraction of the changes, never sees an order go back in time, and ends knowing each
    order's final state and each contract's."""

    async def main() -> None:
        engine, intents = await engine_with_orders(12)
        made: list[Change] = []
        engine.observers.append(made.append)
        inbox = engine.runners[NAME].inbox
        most = 0
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(engine.run, duties=False))
            for at_s in range(1, 31):
                for i, intent in enumerate(intents):
                    await engine.on_trade(report(intent, model.OrderStatus.MATCHING_ACTIVE, at_s))
                    if i % 2 == 0 and at_s > 30 - len(CONTRACT_LIFE):
                        await engine.on_trade(contract(intent, CONTRACT_LIFE[at_s - 26]))
                    most = max(most, len(inbox.changes))
                await trio.sleep(0.5)  # the strategy gets half a callback in per round
            for i, intent in enumerate(intents):
                final = model.OrderStatus.FILLED if i % 2 == 0 else model.OrderStatus.CANCELLED
                await engine.on_trade(report(intent, final, 100))
                most = max(most, len(inbox.changes))
            await trio.sleep(3600)  # time to read it all
            nursery.cancel_scope.cancel()
        strategy = engine.runners[NAME].strategy
        assert isinstance(strategy, Slow)
        assert most <= 12 + 6  # one per order, one per contract
        assert inbox.changes.dropped == 0
        assert inbox.resyncs == 0
        assert len(made) >= 30 * 12 + 6 * len(CONTRACT_LIFE) + 12
        assert len(strategy.told) < len(made) / 4
        assert never_back_in_time(strategy.told)
        for i, intent in enumerate(intents):
            final = model.OrderStatus.FILLED if i % 2 == 0 else model.OrderStatus.CANCELLED
            assert strategy.orders[intent.client_id].status == final
        assert {c.contract_id: c.status for c in strategy.contracts.values()} == {
            f"c-m-{i}": model.ContractStatus.SETTLEMENT_COMPLETED_SUCCESS for i in range(0, 12, 2)
        }

    run(main)


def test_past_its_capacity_the_inbox_resyncs_and_the_strategy_still_learns_each_final_state() -> (
    None
):
    """Ten orders end while the strategy is busy and its inbox holds four changes: six are
    dropped (counted), the rest superseded by a resync, and the strategy is told, once each, of
    every order as it now is: nothing ends without it hearing; it is logged."""

    async def main() -> None:
        engine, intents = await engine_with_orders(10)
        runner = engine.runners[NAME]
        runner.inbox = inbox = Inbox(order_capacity=4, tracker=engine.tracker, strategy=NAME)
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(engine.run, duties=False))
            await engine.on_trade(report(intents[0], model.OrderStatus.MATCHING_ACTIVE, 1))
            await trio.testing.wait_all_tasks_blocked()  # the strategy is busy with it
            with capture_logs() as logs:
                for intent in intents:
                    await engine.on_trade(report(intent, model.OrderStatus.CANCELLED, 2))
                assert len(inbox.changes) == 4
                await trio.sleep(3600)
            nursery.cancel_scope.cancel()
        strategy = runner.strategy
        assert isinstance(strategy, Slow)
        assert inbox.changes.dropped == 6
        assert inbox.resyncs == 1
        assert inbox.pending() == 0
        assert strategy.told[0] == (intents[0].client_id, NOW + timedelta(seconds=1))
        assert sorted(c for c, _ in strategy.told[1:]) == sorted(i.client_id for i in intents)
        assert all(
            strategy.orders[i.client_id].status == model.OrderStatus.CANCELLED for i in intents
        )
        [line] = [e for e in logs if e["event"] == "strategy.orders_resynced"]
        assert line["strategy"] == NAME
        assert (line["orders"], line["superseded"], line["dropped"]) == (10, 4, 6)

    run(main)


def test_an_inbox_without_a_tracker_only_counts_what_it_drops() -> None:
    """No present to resync from: the changes still waiting are delivered, the drop counted."""

    async def main() -> None:
        _, intents = await engine_with_orders(3)
        inbox = Inbox(order_capacity=2)
        for intent in intents:
            inbox.put_change(Change(intent.snapshot()))
        assert (len(inbox.changes), inbox.changes.dropped, inbox.pending()) == (2, 1, 2)
        items = [await inbox.next(), await inbox.next()]
        assert [item.change and item.change.order.client_id for item in items] == [
            intents[1].client_id,
            intents[2].client_id,
        ]

    run(main)
