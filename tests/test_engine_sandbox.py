"""The engine and the example strategies against the sandbox, over real loopback sockets.

The sandbox's own introspection (`introspect_orders`) is the referee: what the market holds, not
what flexbot believes. Market time stands still (a manual wall) unless a test moves it.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import attrs
import pytest
import trio

from flexbot import model
from flexbot.engine.killswitch import KillSwitch
from flexbot.engine.settings import EngineSettings
from flexbot.market.streams import Endpoint
from flexbot.sandbox.market import MarketSettings
from flexbot.strategy import Context, IntentState, Strategy, Window
from strategies import buyer, seller, spread
from tests.conftest import USERS, Sandbox
from tests.engine_harness import BOUND_S, FAST, running_engine, spec, trader, until

pytestmark = pytest.mark.anyio


def open_on_market(sandbox: Sandbox, user: str = "alice") -> list[dict[str, object]]:
    return [
        o
        for o in sandbox.market.introspect_orders()
        if o["owner"] == user and not model.is_final_order_status(str(o["status"]))
    ]


def all_on_market(sandbox: Sandbox, user: str = "alice") -> list[dict[str, object]]:
    return [o for o in sandbox.market.introspect_orders() if o["owner"] == user]


@attrs.frozen
class OnceParams:
    side: model.Side = model.Side.BUY
    power_w: Decimal = Decimal(1000)
    price: Decimal = Decimal("0.20")
    window_index: int = 1


class PlaceOnce(Strategy[OnceParams]):
    """Places one order in one window, unless it already has a stake there."""

    Params = OnceParams

    async def on_start(self, ctx: Context) -> None:
        p = self.params
        window = Window.upcoming(ctx.now, p.window_index + 1)[p.window_index]
        position = ctx.position(window)
        if position.open_buy_w + position.bought_w + position.open_sell_w + position.sold_w == 0:
            await ctx.place(p.side, window, power_w=p.power_w, price=p.price)


class Boom(Strategy[OnceParams]):
    """Raises in every callback."""

    Params = OnceParams

    async def on_start(self, ctx: Context) -> None:
        raise RuntimeError("boom at start")

    async def on_book(self, ctx: Context, book: model.OrderBook) -> None:
        raise RuntimeError("boom on a book")


# --- the example strategies ---------------------------------------------------------------------


async def test_the_buyer_takes_an_offer_at_or_below_its_limit(sandbox: Sandbox) -> None:
    params = buyer.BuyerParams(limit_price=Decimal("0.30"), power_w=Decimal(4000), lead_s=0)
    async with (
        trader(sandbox) as bob,
        running_engine(sandbox, [spec(buyer.FlexBuyer, params)]) as h,
    ):
        window = bob.window(1)
        await bob.place(model.Side.SELL, 5000, 0.25, window)  # too big: sells are all-or-nothing
        await bob.place(model.Side.SELL, 2000, 0.35, window)  # too dear
        cheap = await bob.place(model.Side.SELL, 2000, 0.25, window)
        await until(lambda: h.tracker.position(window).bought_w == 2000)
        filled = await bob.client.get_order(cheap.order_id)
        assert filled.status == model.OrderStatus.FILLED
        mine = [i for i in h.tracker if i.strategy == "flexbuyer"]
        assert [(i.request.power, i.request.price, i.state) for i in mine] == [
            (Decimal(2000), Decimal("0.25"), IntentState.DONE)
        ]


async def test_the_buyer_bids_once_and_only_for_offers_of_its_own_country(
    sandbox: Sandbox,
) -> None:
    """An offer from another country cannot meet the buyer's bids (its location is in DE, its
    `country` param left empty): it is not bid for. An offer it has a live bid for is not bid for
    again, however many books show it."""
    params = buyer.BuyerParams(limit_price=Decimal("0.30"), power_w=Decimal(4000), lead_s=0)
    async with (
        trader(sandbox) as bob,
        running_engine(sandbox, [spec(buyer.FlexBuyer, params)]) as h,
    ):
        window = bob.window(1)
        france = model.Location(location_id=("paris-1",), country_code="FR")
        await bob.place(model.Side.SELL, 500, 0.20, window, location=france)
        german = await bob.place(model.Side.SELL, 500, 0.25, window)
        await until(lambda: h.tracker.position(window).bought_w == 500)
        # More books, each read by the buyer: offers in another window change the book.
        runner = h.engine.runners["flexbuyer"]
        for _ in range(3):
            seen = runner.callbacks
            await bob.place(model.Side.SELL, 9000, 0.90, bob.window(2))
            await until(lambda: runner.callbacks > seen)  # noqa: B023 - awaited in the loop
        mine = [i for i in h.tracker if i.strategy == "flexbuyer"]
        assert [(i.request.power, i.request.price, i.state) for i in mine] == [
            (Decimal(500), Decimal("0.25"), IntentState.DONE)
        ]
        filled = await bob.client.get_order(german.order_id)
        assert filled.status == model.OrderStatus.FILLED


async def test_the_seller_offers_its_capacity_and_reprices_down_to_a_bid(sandbox: Sandbox) -> None:
    params = seller.SellerParams(
        floor_price=Decimal("0.15"),
        ask_price=Decimal("0.30"),
        capacity_w=Decimal(3000),
        windows_ahead=2,
        lead_s=0,
    )
    async with (
        trader(sandbox) as bob,
        running_engine(sandbox, [spec(seller.FlexSeller, params)]) as h,
    ):
        windows = Window.upcoming(sandbox.market.clock.now(), 2)
        await until(lambda: len(open_on_market(sandbox)) == 2)
        offers = open_on_market(sandbox)
        assert {(o["side"], o["power"], o["price"]) for o in offers} == {("sell", 3000.0, 0.30)}
        assert all(o["status"] == "matching_active" for o in offers)  # the baseline came along
        # A bid below the floor changes nothing; one above it is met at its price.
        await bob.place(model.Side.BUY, 3000, 0.10, windows[0])
        await bob.place(model.Side.BUY, 3000, 0.22, windows[0])
        await until(lambda: h.tracker.position(windows[0]).sold_w == 3000)
        contracts = list(sandbox.market.matcher.contracts.values())
        assert [(c.price, c.power) for c in contracts] == [(Decimal("0.22"), Decimal(3000))]
        # The other window's offer is untouched, and the sold window gets no new offer.
        assert {o["price"] for o in open_on_market(sandbox)} == {0.30}
        assert len(open_on_market(sandbox)) == 1


async def test_the_market_maker_quotes_both_sides_and_respects_its_inventory_limit(
    sandbox: Sandbox,
) -> None:
    params = spread.SpreadParams(
        fair_price=Decimal("0.25"),
        half_spread=Decimal("0.02"),
        quote_w=Decimal(2000),
        max_net_w=Decimal(3000),
        windows_ahead=1,
        lead_s=0,
    )
    async with (
        trader(sandbox) as bob,
        running_engine(sandbox, [spec(spread.MarketMaker, params)]) as h,
    ):
        window = Window.upcoming(sandbox.market.clock.now(), 1)[0]
        await until(lambda: len(open_on_market(sandbox)) == 2)
        quotes = {(o["side"], o["price"]) for o in open_on_market(sandbox)}
        assert quotes == {("buy", 0.23), ("sell", 0.27)}
        # Bob hits the bid: the maker is long 2000 W; one more bid could make it 4000 > 3000.
        await bob.place(model.Side.SELL, 2000, 0.23, window)
        await until(lambda: h.tracker.position(window).bought_w == 2000)
        await until(lambda: {o["side"] for o in open_on_market(sandbox)} == {"sell"})
        # Its ask was re-centred on the trade's price (0.23 + 0.02).
        await until(lambda: [o["price"] for o in open_on_market(sandbox)] == [0.25])


# --- isolation, paper trading, ambiguity ----------------------------------------------------------


async def test_a_strategy_that_always_raises_is_disabled_and_the_others_keep_trading(
    sandbox: Sandbox,
) -> None:
    params = buyer.BuyerParams(limit_price=Decimal("0.30"), power_w=Decimal(4000), lead_s=0)
    specs = [spec(Boom, name="boom"), spec(buyer.FlexBuyer, params)]
    async with trader(sandbox) as bob, running_engine(sandbox, specs) as h:
        boom = h.engine.runners["boom"]
        await until(lambda: boom.state == "disabled")
        assert len(boom.failures) == FAST.supervision.max_failures
        window = bob.window(1)
        await bob.place(model.Side.SELL, 1000, 0.20, window)
        await until(lambda: h.tracker.position(window).bought_w == 1000)
        assert h.engine.runners["flexbuyer"].state == "running"


async def test_dry_run_sends_nothing_and_fills_on_paper(sandbox: Sandbox) -> None:
    params = buyer.BuyerParams(limit_price=Decimal("0.30"), power_w=Decimal(4000), lead_s=0)
    specs = [spec(buyer.FlexBuyer, params, dry_run=True)]
    async with trader(sandbox) as bob, running_engine(sandbox, specs) as h:
        window = bob.window(1)
        offer = await bob.place(model.Side.SELL, 1000, 0.20, window)
        await until(lambda: h.tracker.position(window).bought_w == 1000)
        assert all_on_market(sandbox, "alice") == []
        assert sandbox.market.requests[("POST /api/v1/order", 200)] == 1  # bob's offer only
        still = await bob.client.get_order(offer.order_id)
        assert still.status == model.OrderStatus.MATCHING_ACTIVE  # paper fills take nothing
        (intent,) = h.tracker
        assert intent.dry_run
        assert (intent.order_id or "").startswith("paper-")


@pytest.mark.parametrize(
    "market_settings",
    [MarketSettings(users=USERS, seed=7, faults=attrs.evolve(MarketSettings().faults))],
)
@pytest.mark.parametrize("trade_stream", [True, False], ids=["via-trade", "via-listing"])
async def test_an_ambiguous_submit_ends_with_exactly_one_order(
    sandbox: Sandbox, trade_stream: bool
) -> None:
    sandbox.market.faults.update({"ambiguous_rate": 1.0, "ambiguous_mode": "504"})
    endpoints = tuple(Endpoint) if trade_stream else (Endpoint.ORDERBOOK, Endpoint.TICKER)
    async with running_engine(sandbox, [spec(PlaceOnce)], endpoints=endpoints) as h:
        await until(lambda: [i.state for i in h.tracker] == [IntentState.OPEN])
        (intent,) = h.tracker
        lost = ("POST /api/v1/order", 504)
        await until(lambda: sandbox.market.requests[lost] == 1)  # its answer was lost
        # The strategy starting again must not resend: its stake in the window is known.
        sandbox.market.faults.update({"ambiguous_rate": 0.0})
        runner = h.engine.runners["placeonce"]
        await runner.strategy.on_start(runner.context)
    orders = all_on_market(sandbox)
    assert len(orders) == 1
    assert orders[0]["order_id"] == intent.order_id


# --- the journal and the kill switch -------------------------------------------------------------


async def test_a_restart_rebuilds_the_tracker_from_the_journal_without_a_second_order(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    store = tmp_path / "flexbot.db"
    settings = attrs.evolve(FAST, cancel_on_shutdown=False)
    async with running_engine(sandbox, [spec(PlaceOnce)], store_path=store, settings=settings) as h:
        assert h.store is not None
        journal = h.store
        # The tracker changes in memory first and journals in a thread: leave once it is written
        # (an exit before that restores the intent as unknown, which is the next test's case).
        with trio.fail_after(BOUND_S):
            while [r.state for r in await journal.run(journal.sync.followed)] != ["open"]:  # noqa: ASYNC110 - the journal has no event
                await trio.sleep(0.02)
    async with running_engine(sandbox, [spec(PlaceOnce)], store_path=store, settings=settings) as h:
        (intent,) = h.tracker
        assert intent.state is IntentState.OPEN
        await trio.sleep(0.2)  # time for a wrong second placement to show (there is none)
    assert len(all_on_market(sandbox)) == 1


async def test_a_submit_cut_off_by_a_crash_is_resolved_after_the_restart(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The order reached the market, the daemon died before the answer: the journal says
    PENDING; after the restart the intent is found on the market, not placed again."""
    store = tmp_path / "flexbot.db"
    settings = attrs.evolve(FAST, cancel_on_shutdown=False)
    sandbox.market.faults.update({"ambiguous_rate": 1.0, "ambiguous_mode": "hang"})
    no_trade = (Endpoint.ORDERBOOK,)  # no /trade report may name the order before the "crash"
    async with running_engine(
        sandbox, [spec(PlaceOnce)], store_path=store, settings=settings, endpoints=no_trade
    ) as h:
        await until(lambda: len(all_on_market(sandbox)) == 1)
        (intent,) = h.tracker
        assert intent.state is IntentState.PENDING  # the answer never came: the "crash" is now
    sandbox.market.faults.update({"ambiguous_rate": 0.0})
    async with running_engine(sandbox, [spec(PlaceOnce)], store_path=store, settings=settings) as h:
        await until(lambda: not h.tracker.unresolved())
        (intent,) = h.tracker
        assert intent.state is IntentState.OPEN
    assert [o["order_id"] for o in all_on_market(sandbox)] == [intent.order_id]


async def test_the_kill_switch_file_cancels_everything_and_blocks_new_orders(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    kill = tmp_path / "KILL"
    specs = [
        spec(PlaceOnce, OnceParams(window_index=1), name="a"),
        spec(PlaceOnce, OnceParams(window_index=2, side=model.Side.BUY), name="b"),
    ]
    async with running_engine(
        sandbox, specs, kill_switch=lambda store: KillSwitch(file=kill, store=store)
    ) as h:
        await until(lambda: len(open_on_market(sandbox)) == 2)
        kill.touch()
        await until(lambda: open_on_market(sandbox) == [])
        runner = h.engine.runners["a"]
        window = Window.upcoming(sandbox.market.clock.now(), 4)[3]
        refused = await h.engine.desk.place(
            runner, model.Side.BUY, window, power_w=Decimal(1), price=Decimal("0.1")
        )
        assert refused.state is IntentState.REJECTED
        assert "halted" in (refused.reason or "")
        kill.unlink()
        await until(lambda: not h.engine.desk.halted)
        placed = await h.engine.desk.place(
            runner, model.Side.BUY, window, power_w=Decimal(1), price=Decimal("0.1")
        )
        assert placed.state is IntentState.OPEN


def test_engine_settings_are_fast_enough_for_tests() -> None:
    assert EngineSettings().resolve_interval_s > FAST.resolve_interval_s


async def test_a_submission_cut_off_by_the_callback_timeout_is_resolved_not_stuck(
    sandbox: Sandbox,
) -> None:
    """The strategy's callback times out while its order is being sent: the order may exist, so
    it becomes unknown (not stuck pending) and is then found on the market."""
    sandbox.market.faults.update({"rest_latency_ms": 1500})
    # The cut-off POST is still on its way for the rest of its 1.5 s latency: a listing before it
    # lands must not yet mean "not placed" (found flaky on a loaded machine with FAST's 0.5 s).
    settings = attrs.evolve(FAST, callback_timeout_s=0.5, max_failures=100, not_placed_after_s=5.0)
    async with running_engine(sandbox, [spec(PlaceOnce)], settings=settings) as h:
        await until(lambda: any(i.reason and "cancelled" in i.reason for i in h.tracker))
        sandbox.market.faults.update({"rest_latency_ms": 0})
        await until(lambda: [i.state for i in h.tracker][:1] == [IntentState.OPEN])
    assert len(all_on_market(sandbox)) == 1
