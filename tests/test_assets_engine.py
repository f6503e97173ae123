"""Offers sized by the assets, through the engine and the sandbox market (real loopback HTTP and
WebSocket): the example seller offers what the fleet can deliver, energy shared across windows;
the availability limit refuses what it cannot; a stale fleet offers nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import attrs
import orjson
import pytest
from structlog.testing import capture_logs

from flexbot import model, wire
from flexbot.assets import AssetSettings, Fleet
from flexbot.engine.deliverable import pool_rooms
from flexbot.engine.orders import OrderTracker
from flexbot.engine.risk import Exposure, PoolRoom, RiskLimits, check
from flexbot.strategy import Context, IntentState, OwnOrder, Side, Strategy, Window
from strategies import seller
from tests.conftest import Sandbox
from tests.engine_harness import Harness, running_engine, spec, until
from tests.test_engine_sandbox import open_on_market

pytestmark = pytest.mark.anyio


def battery_state(at: datetime, **changes: object) -> bytes:
    """4000 W of reduction (idle, down to a 4000 W discharge), 1500 Wh above its floor."""
    state = {
        "ts": wire.format_datetime(at),
        "kind": "battery",
        "power_w": 0,
        "min_power_w": -4000,
        "max_power_w": 4000,
        "energy_wh": 2500,
        "min_energy_wh": 1000,
        "max_energy_wh": 5000,
        "efficiency": 1.0,
    }
    state.update(changes)
    return orjson.dumps(state)


def fleet_at(sandbox: Sandbox, **changes: object) -> Fleet:
    fleet = Fleet(AssetSettings(staleness_s=120))
    now = sandbox.market.clock.now()
    fleet.receive("flexbot/v1/site-1/bat-1/state", battery_state(now, **changes))
    return fleet


def seller_params(**changes: object) -> seller.SellerParams:
    fields: dict[str, object] = {
        "floor_price": Decimal("0.15"),
        "ask_price": Decimal("0.30"),
        "capacity_w": None,
        "windows_ahead": 3,
        "lead_s": 0,
    }
    fields.update(changes)
    return seller.SellerParams(**fields)  # type: ignore[arg-type]


async def test_the_seller_offers_what_the_battery_can_deliver_window_after_window(
    sandbox: Sandbox,
) -> None:
    fleet = fleet_at(sandbox)
    strategy = spec(seller.FlexSeller, seller_params())
    async with running_engine(sandbox, [strategy], fleet=fleet) as h:
        await until(lambda: len(open_on_market(sandbox)) == 2)
        offers = sorted(open_on_market(sandbox), key=lambda o: str(o["delivery_start"]))
        # 4000 W for the first quarter hour takes 1000 Wh; the 500 Wh left give 2000 W in the
        # second; nothing is left for the third.
        assert [o["power"] for o in offers] == [4000.0, 2000.0]
        windows = Window.upcoming(sandbox.market.clock.now(), 3)
        told = h.engine.desk.deliverable(["site-1"], windows, dry_run=False)
        assert told is not None
        assert [(d.capacity_w, d.committed_w, d.available_w, d.assets) for d in told] == [
            (Decimal(4000), Decimal(4000), Decimal(0), 1),
            (Decimal(4000), Decimal(2000), Decimal(0), 1),
            (Decimal(4000), Decimal(0), Decimal(0), 1),
        ]


@attrs.frozen
class OversellerParams:
    powers_w: tuple[Decimal, ...] = (Decimal(3000), Decimal(3000))


class Overseller(Strategy[OversellerParams]):
    """Sells the given power in each of the next windows, once."""

    version = "1"

    def __init__(self, params: OversellerParams) -> None:
        super().__init__(params)
        self.placed: list[OwnOrder] = []

    async def on_start(self, ctx: Context) -> None:
        windows = Window.upcoming(ctx.now, len(self.params.powers_w))
        for window, power in zip(windows, self.params.powers_w, strict=True):
            self.placed.append(await ctx.place(Side.SELL, window, power_w=power, price=Decimal(1)))


def placed_by(h: Harness, name: str) -> list[OwnOrder]:
    placed: list[OwnOrder] = h.engine.runners[name].strategy.placed  # type: ignore[attr-defined]
    return placed


async def test_a_sell_beyond_what_the_assets_can_deliver_is_refused_by_the_availability_limit(
    sandbox: Sandbox,
) -> None:
    powers = (Decimal(5000), Decimal(3000), Decimal(3000), Decimal(3000))
    strategy = spec(Overseller, OversellerParams(powers))
    async with running_engine(sandbox, [strategy], fleet=fleet_at(sandbox)) as h:
        await until(lambda: len(placed_by(h, "overseller")) == 4)
    placed = placed_by(h, "overseller")
    # Beyond the battery's power; then 750 Wh a window, from 1500 Wh: twice.
    states = [o.state for o in placed]
    assert states == [
        IntentState.REJECTED,
        IntentState.OPEN,
        IntentState.OPEN,
        IntentState.REJECTED,
    ]
    assert placed[0].reason == (
        "global availability: 0 W committed + 5000 W > 1 × 4000 W the assets can deliver"
    )
    assert placed[3].reason == (
        "global availability: 0 W committed + 3000 W > 1 × 0 W the assets can deliver"
    )


async def test_a_fleet_whose_state_is_stale_offers_nothing(sandbox: Sandbox) -> None:
    old = sandbox.market.clock.now() - timedelta(minutes=10)
    fleet = Fleet(AssetSettings(staleness_s=120))
    fleet.receive("flexbot/v1/site-1/bat-1/state", battery_state(old))
    strategy = spec(seller.FlexSeller, seller_params())
    async with running_engine(sandbox, [strategy, spec(Overseller)], fleet=fleet) as h:
        await until(lambda: len(placed_by(h, "overseller")) == 2)
        windows = Window.upcoming(sandbox.market.clock.now(), 1)
        told = h.engine.desk.deliverable(["site-1"], windows, dry_run=False, ratio=Decimal(1))
    assert open_on_market(sandbox) == []
    assert [o.state for o in placed_by(h, "overseller")] == [IntentState.REJECTED] * 2
    assert told is not None
    assert (told[0].capacity_w, told[0].assets) == (0, 0)


async def test_without_a_portfolio_the_seller_offers_its_fixed_capacity(sandbox: Sandbox) -> None:
    strategy = spec(seller.FlexSeller, seller_params(capacity_w=Decimal(1500), windows_ahead=2))
    async with running_engine(sandbox, [strategy]) as h:
        await until(lambda: len(open_on_market(sandbox)) == 2)
        assert h.engine.desk.deliverable(["site-1"], [], dry_run=False, ratio=Decimal(1)) is None
    assert {o["power"] for o in open_on_market(sandbox)} == {1500.0}


async def test_open_offers_the_assets_can_no_longer_deliver_are_withdrawn(
    sandbox: Sandbox,
) -> None:
    fleet = fleet_at(sandbox)
    strategy = spec(Overseller, OversellerParams((Decimal(2000), Decimal(1000))))
    with capture_logs() as logs:
        async with running_engine(sandbox, [strategy], fleet=fleet) as h:
            await until(lambda: len(open_on_market(sandbox)) == 2)
            # Nothing to withdraw while the battery can serve both.
            assert await h.engine.desk.withdraw_undeliverable() == 0
            # It now holds 400 Wh above its floor: the first window's 500 Wh cannot be served,
            # the second's 250 Wh can once the first's offer is gone.
            now = sandbox.market.clock.now()
            fleet.receive("flexbot/v1/site-1/bat-1/state", battery_state(now, energy_wh=1400))
            assert await h.engine.desk.withdraw_undeliverable() == 1
            await until(lambda: len(open_on_market(sandbox)) == 1)
            assert open_on_market(sandbox)[0]["power"] == 1000.0
            # 100 Wh: the second's cannot be served either.
            fleet.receive("flexbot/v1/site-1/bat-1/state", battery_state(now, energy_wh=1100))
            assert await h.engine.desk.withdraw_undeliverable() == 1
            await until(lambda: open_on_market(sandbox) == [])
            assert await h.engine.desk.withdraw_undeliverable() == 0
    withdrawn = [e for e in logs if e["event"] == "availability.withdrawn"]
    assert [e["power_w"] for e in withdrawn] == [2000.0, 1000.0]


async def test_the_accounts_ratio_overbooks_and_a_strategys_own_holds_back(
    sandbox: Sandbox,
) -> None:
    overbooking = RiskLimits(max_commit_ratio=Decimal("1.5"))
    strategy = spec(Overseller, OversellerParams((Decimal(5000),)))
    async with running_engine(
        sandbox, [strategy], fleet=fleet_at(sandbox), limits=overbooking
    ) as h:
        await until(lambda: len(placed_by(h, "overseller")) == 1)
    assert placed_by(h, "overseller")[0].state is IntentState.OPEN  # 5000 W ≤ 1.5 × 4000 W
    careful = spec(
        Overseller,
        OversellerParams((Decimal(3000),)),
        name="careful",
        risk=RiskLimits(max_commit_ratio=Decimal("0.5")),
    )
    async with running_engine(sandbox, [careful], fleet=fleet_at(sandbox), limits=overbooking) as h:
        await until(lambda: len(placed_by(h, "careful")) == 1)
        told = h.engine.desk.deliverable(
            ["site-1"],
            Window.upcoming(sandbox.market.clock.now(), 1),
            dry_run=False,
            ratio=Decimal("0.5"),
        )
    (refused,) = placed_by(h, "careful")
    assert refused.reason == (
        "careful availability: 0 W committed + 3000 W > 0.5 × 4000 W the assets can deliver"
    )
    assert told is not None
    assert told[0].available_w == 2000


async def test_an_hours_sell_counts_in_each_of_its_quarters_for_the_limit() -> None:
    """A sell for 10:00–11:00 commits the assets in each quarter of that hour: a quarter's sell
    inside it finds that hour's power committed there."""
    now = datetime(2026, 12, 6, 9, 50, tzinfo=UTC)
    fleet = Fleet(AssetSettings())
    fleet.receive(
        "flexbot/v1/site-1/gen/state",
        orjson.dumps(
            {
                "ts": wire.format_datetime(now),
                "kind": "generator",
                "power_w": 0,
                "min_power_w": -5000,
            }
        ),
    )
    tracker = OrderTracker(None)
    hour = Window(datetime(2026, 12, 6, 10, tzinfo=UTC), datetime(2026, 12, 6, 11, tzinfo=UTC))
    quarter = Window(hour.start + timedelta(minutes=15), hour.start + timedelta(minutes=30))
    await tracker.new_intent("s", "1", sell(hour, 5000), now)
    rooms = pool_rooms(fleet, tracker, ["site-1"], [quarter, hour], now=now)
    assert rooms[quarter][0] == PoolRoom(Decimal(5000), Decimal(5000))
    refused = check(sell(quarter, 1000), RiskLimits(), Exposure(pool=rooms[quarter][0]))
    assert refused is not None
    assert refused.limit == "availability"


def sell(window: Window, power: int) -> model.OrderRequest:
    return model.OrderRequest(
        side=model.Side.SELL,
        power=Decimal(power),
        price=Decimal("0.2"),
        delivery_start=window.start,
        delivery_end=window.end,
        expiry_time=window.start - timedelta(minutes=5),
        location=model.Location(location_id=("site-1",), country_code="DE"),
    )
