"""Risk limits (`flexbot.engine.risk`) and the kill switch (`flexbot.engine.killswitch`).

The main property drives an in-memory `OrderTracker` the way the engine does (`Engine._check_risk`)
through generated sequences of intents, fills and cancels, under generated limits, and checks after
every step that no limit is exceeded: risk limits are never exceeded under any generated sequence
of intents and fills. Each decision of `check` is also compared with an independent list of the
limits the intent breaks (accepted iff none; a rejection names one of them), so that a check which
refuses too much fails as well. A second property: in the `reducing` state no accepted order's fill
grows the absolute net position of its window.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from flexbot import model
from flexbot.engine.killswitch import KillSwitch, engage_latch, latch_of, release_latch
from flexbot.engine.orders import Intent, OrderTracker
from flexbot.engine.risk import (
    Exposure,
    OrderRate,
    Rejection,
    RiskLimits,
    TradingState,
    check,
    committed_w,
    reduces,
)
from flexbot.problems import Invalid
from flexbot.store import AsyncStore, Store
from flexbot.strategy import Position, Window

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
QUARTER = timedelta(minutes=15)
WINDOWS = tuple(
    Window(NOW + (4 + i) * QUARTER, NOW + (5 + i) * QUARTER) for i in range(3)
)  # three delivery windows, an hour ahead
COUNTRIES = ("DE", "FR")
SITE = "site-1"
D = Decimal

pytestmark = pytest.mark.anyio


def request(
    side: model.Side = model.Side.BUY,
    power: Decimal | int = 100,
    price: Decimal | str = "0.10",
    *,
    window: int = 0,
    country: str = "DE",
    location_id: tuple[str | None, ...] = (SITE,),
) -> model.OrderRequest:
    w = WINDOWS[window]
    return model.OrderRequest(
        side=side,
        power=D(power),
        price=D(price),
        delivery_start=w.start,
        delivery_end=w.end,
        expiry_time=w.start - timedelta(minutes=5),
        location=model.Location(location_id=location_id, country_code=country),
    )


# --- check(): one limit at a time ---------------------------------------------------------------

BUY = model.Side.BUY
SELL = model.Side.SELL

REJECTIONS: list[tuple[str, RiskLimits, Exposure, model.OrderRequest]] = [
    ("min_price", RiskLimits(min_price=D("0.10")), Exposure(), request(price="0.09")),
    ("max_price", RiskLimits(max_price=D("0.10")), Exposure(), request(price="0.11")),
    ("max_order_power_w", RiskLimits(max_order_power_w=D(100)), Exposure(), request(power=101)),
    ("countries", RiskLimits(countries=("DE",)), Exposure(), request(country="FR")),
    ("countries", RiskLimits(countries=("DE",)), Exposure(), request(country="")),
    ("locations", RiskLimits(locations=(SITE,)), Exposure(), request(location_id=("other",))),
    ("locations", RiskLimits(locations=(SITE,)), Exposure(), request(location_id=())),
    ("locations", RiskLimits(locations=(SITE,)), Exposure(), request(location_id=(None,))),
    (
        "max_window_power_w",
        RiskLimits(max_window_power_w=D(1000)),
        Exposure(window=Position(D(200), D(300), D(100), D(300))),
        request(power=101),
    ),
    (
        "max_country_window_power_w",
        RiskLimits(max_country_window_power_w=D(500)),
        Exposure(window=Position(D(5000)), country_window=Position(D(100), D(100), D(100), D(100))),
        request(power=101),
    ),
    ("max_open_orders", RiskLimits(max_open_orders=3), Exposure(open_orders=3), request()),
    (
        "max_orders_per_minute",
        RiskLimits(max_orders_per_minute=5),
        Exposure(orders_last_minute=5),
        request(),
    ),
    ("trading_state", RiskLimits(state=TradingState.HALTED), Exposure(), request()),
    (
        "trading_state",
        RiskLimits(state=TradingState.HALTED),
        Exposure(window=Position(bought_w=D(1000))),
        request(SELL, 10),  # halted refuses even an order that would reduce
    ),
    ("trading_state", RiskLimits(state=TradingState.REDUCING), Exposure(), request()),
    (
        "trading_state",
        RiskLimits(state=TradingState.REDUCING),
        Exposure(window=Position(bought_w=D(100))),
        request(BUY, 10),  # adds to a long position
    ),
    (
        "trading_state",
        RiskLimits(state=TradingState.REDUCING),
        Exposure(window=Position(bought_w=D(100))),
        request(SELL, 101),  # would cross zero
    ),
]


@pytest.mark.parametrize(
    ("limit", "limits", "exposure", "req"),
    REJECTIONS,
    ids=[f"{r[0]}-{i}" for i, r in enumerate(REJECTIONS)],
)
def test_each_limit_rejects_under_its_own_name(
    limit: str, limits: RiskLimits, exposure: Exposure, req: model.OrderRequest
) -> None:
    rejection = check(req, limits, exposure)
    assert rejection is not None
    assert rejection.limit == limit
    assert rejection.scope == "global"
    assert rejection.message
    assert str(rejection).startswith(f"global {limit}: ")
    # Without that limit the same order goes.
    assert check(req, RiskLimits(), exposure) is None


BOUNDARIES: list[tuple[str, RiskLimits, Exposure, model.OrderRequest]] = [
    ("min_price", RiskLimits(min_price=D("0.10")), Exposure(), request(price="0.10")),
    ("max_price", RiskLimits(max_price=D("0.10")), Exposure(), request(price="0.1000")),
    ("zero price", RiskLimits(min_price=D(0), max_price=D(0)), Exposure(), request(price="0")),
    ("max_order_power_w", RiskLimits(max_order_power_w=D(100)), Exposure(), request(power=100)),
    ("countries", RiskLimits(countries=("DE", "FR")), Exposure(), request(country="FR")),
    ("no country", RiskLimits(countries=("",)), Exposure(), request(country="")),
    ("locations", RiskLimits(locations=(SITE, "b")), Exposure(), request(location_id=("b", SITE))),
    (
        "max_window_power_w",
        RiskLimits(max_window_power_w=D(1000)),
        Exposure(window=Position(D(200), D(300), D(100), D(300))),
        request(power=100),  # 900 committed + 100 == 1000
    ),
    (
        "max_country_window_power_w",
        RiskLimits(max_country_window_power_w=D(500)),
        Exposure(window=Position(D(5000)), country_window=Position(D(100), D(100), D(100), D(100))),
        request(power=100),
    ),
    ("max_open_orders", RiskLimits(max_open_orders=3), Exposure(open_orders=2), request()),
    (
        "max_orders_per_minute",
        RiskLimits(max_orders_per_minute=5),
        Exposure(orders_last_minute=4),
        request(),
    ),
    (
        "reducing",
        RiskLimits(state=TradingState.REDUCING),
        Exposure(window=Position(bought_w=D(100))),
        request(SELL, 100),  # down to exactly zero
    ),
]


@pytest.mark.parametrize(
    ("name", "limits", "exposure", "req"), BOUNDARIES, ids=[b[0] for b in BOUNDARIES]
)
def test_each_limit_accepts_exactly_at_its_boundary(
    name: str, limits: RiskLimits, exposure: Exposure, req: model.OrderRequest
) -> None:
    assert check(req, limits, exposure) is None


def test_committed_counts_filled_and_open_power_of_both_sides() -> None:
    assert committed_w(Position(D(1), D(20), D(300), D(4000))) == D(4321)
    assert committed_w(Position()) == 0


def test_scope_is_carried_into_the_rejection() -> None:
    rejection = check(
        request(power=101), RiskLimits(max_order_power_w=D(100)), Exposure(), scope="seller"
    )
    assert rejection == Rejection(
        "max_order_power_w", rejection.message if rejection else "", "seller"
    )
    assert str(rejection).startswith("seller max_order_power_w: ")


def test_the_first_broken_limit_is_reported() -> None:
    limits = RiskLimits(state=TradingState.HALTED, max_price=D("0.01"), max_open_orders=1)
    exposure = Exposure(open_orders=5)
    rejection = check(request(), limits, exposure)
    assert rejection is not None
    assert rejection.limit == "trading_state"
    rejection = check(request(), attrs.evolve(limits, state=TradingState.ACTIVE), exposure)
    assert rejection is not None
    assert rejection.limit == "max_price"


# --- RiskLimits validation ----------------------------------------------------------------------


def _loc(exc: pytest.ExceptionInfo[Invalid]) -> list[tuple[str | int, ...]]:
    return [p.loc for p in exc.value.problems]


def test_min_price_above_max_price_is_invalid_at_max_price() -> None:
    with pytest.raises(Invalid) as exc:
        RiskLimits(min_price=D(2), max_price=D(1))
    assert _loc(exc) == [("max_price",)]
    assert RiskLimits(min_price=D(1), max_price=D(1)).max_price == 1


POSITIVE_ONLY = [
    ("max_order_power_w", D(0)),
    ("max_order_power_w", D(-1)),
    ("max_order_power_w", D("NaN")),
    ("max_window_power_w", D(0)),
    ("max_window_power_w", D("-0.001")),
    ("max_window_power_w", D("Infinity")),
    ("max_country_window_power_w", D(0)),
    ("max_country_window_power_w", D(-5)),
    ("max_open_orders", 0),
    ("max_open_orders", -1),
    ("max_orders_per_minute", 0),
    ("max_orders_per_minute", -3),
]


@pytest.mark.parametrize(("field", "value"), POSITIVE_ONLY)
def test_a_positive_only_limit_must_be_positive(field: str, value: Any) -> None:
    with pytest.raises(Invalid) as exc:
        RiskLimits(**{field: value})
    assert _loc(exc) == [(field,)]
    assert "greater than 0" in str(exc.value)


@pytest.mark.parametrize("field", ["min_price", "max_price"])
@pytest.mark.parametrize("value", [D(-1), D("-0.000001"), D("NaN"), D("Infinity")])
def test_a_price_limit_must_be_zero_or_more(field: str, value: Decimal) -> None:
    fields: dict[str, Any] = {field: value}
    with pytest.raises(Invalid) as exc:
        RiskLimits(**fields)
    assert _loc(exc) == [(field,)]


# --- reduces() ----------------------------------------------------------------------------------


def test_with_a_long_position_a_sell_up_to_net_minus_open_sells_reduces() -> None:
    long = Position(bought_w=D(300), sold_w=D(100), open_sell_w=D(50))  # net 200, room 150
    assert reduces(request(SELL, 150), long)
    assert reduces(request(SELL, 1), long)
    assert not reduces(request(SELL, 151), long)
    assert not reduces(request(BUY, 1), long)  # a buy never reduces a long position
    full = Position(bought_w=D(300), sold_w=D(100), open_sell_w=D(200))
    assert not reduces(request(SELL, 1), full)  # the open sells already take the whole room


def test_with_a_short_position_a_buy_up_to_net_minus_open_buys_reduces() -> None:
    short = Position(bought_w=D(100), sold_w=D(300), open_buy_w=D(50))  # net -200, room 150
    assert reduces(request(BUY, 150), short)
    assert not reduces(request(BUY, 151), short)
    assert not reduces(request(SELL, 1), short)


@pytest.mark.parametrize(
    "flat",
    [Position(), Position(D(100), D(100)), Position(D(100), D(100), D(50), D(50))],
)
@pytest.mark.parametrize("side", list(model.Side))
def test_with_net_zero_nothing_reduces(flat: Position, side: model.Side) -> None:
    assert not reduces(request(side, 1), flat)


# --- OrderRate ----------------------------------------------------------------------------------


def test_order_rate_counts_the_last_60_seconds() -> None:
    now = [1000.0]
    rate = OrderRate(lambda: now[0])
    assert rate.count() == 0
    for _ in range(3):
        rate.record()
        now[0] += 20.0
    assert rate.count() == 2  # recorded at 1000, 1020, 1040; now 1060: the first is 60 s old
    now[0] = 1100.0
    assert rate.count() == 0
    rate.record()
    assert rate.count() == 1


def test_order_rate_three_records_count_three_then_age_out() -> None:
    now = [0.0]
    rate = OrderRate(lambda: now[0])
    rate.record()
    rate.record()
    rate.record()
    assert rate.count() == 3
    now[0] = 59.999
    assert rate.count() == 3
    now[0] = 60.001
    assert rate.count() == 0


# --- the driver ---------------------------------------------------------------------------------


@attrs.frozen
class Place:
    side: model.Side
    power: int
    price_cents: int
    window: int
    country: int
    site: bool = True  # False: an order at a location the limits may not allow


@attrs.frozen
class Fill:
    pick: int
    percent: int  # of the remaining power, for a buy (a sell fills whole)


@attrs.frozen
class Cancel:
    pick: int


@attrs.frozen
class Wait:
    seconds: int


Op = Place | Fill | Cancel | Wait


def places(power: st.SearchStrategy[int]) -> st.SearchStrategy[Place]:
    return st.builds(
        Place,
        side=st.sampled_from(list(model.Side)),
        power=power,
        price_cents=st.integers(0, 40),
        window=st.integers(0, len(WINDOWS) - 1),
        country=st.integers(0, len(COUNTRIES) - 1),
        site=st.booleans(),
    )


order_powers = st.one_of(st.sampled_from([50, 100, 250, 500]), st.integers(1, 600))
small_powers = st.one_of(st.sampled_from([1, 10, 50, 100]), st.integers(1, 300))
fills = st.builds(Fill, pick=st.integers(0, 50), percent=st.integers(1, 100))
cancels = st.builds(Cancel, pick=st.integers(0, 50))
waits = st.builds(Wait, seconds=st.sampled_from([1, 20, 61]))
ops: st.SearchStrategy[Op] = st.one_of(
    places(order_powers), places(order_powers), fills, cancels, waits
)
# For the reducing property: build positions first, then small orders that may fit the room.
building_ops: st.SearchStrategy[Op] = st.one_of(places(order_powers), fills, fills, cancels)
newest_fills = st.builds(Fill, pick=st.just(-1), percent=st.integers(1, 100))  # the last placed
reducing_ops: st.SearchStrategy[Op] = st.one_of(
    places(small_powers), places(small_powers), fills, newest_fills, cancels
)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def powers(most: int) -> st.SearchStrategy[Decimal]:
    """Round numbers (so that sums of round orders meet a cap exactly), or any up to `most`."""
    return st.one_of(st.sampled_from([250, 500, 1000]), st.integers(1, most)).map(D)


@st.composite
def risk_limits(draw: st.DrawFn) -> RiskLimits:
    bounds = sorted(draw(st.lists(st.integers(0, 40), min_size=2, max_size=2)))
    prices = [None if draw(st.booleans()) else D(b) / 100 for b in bounds]
    return RiskLimits(
        min_price=prices[0],
        max_price=prices[1],
        max_order_power_w=draw(optional(powers(600))),
        max_window_power_w=draw(optional(powers(2500))),
        max_country_window_power_w=draw(optional(powers(1500))),
        max_open_orders=draw(optional(st.integers(1, 8))),
        max_orders_per_minute=draw(optional(st.integers(1, 8))),
        countries=draw(optional(st.sampled_from([("DE",), ("FR",), COUNTRIES]))),
        locations=draw(optional(st.sampled_from([(SITE,), (SITE, "other")]))),
    )


def violations(req: model.OrderRequest, limits: RiskLimits, exposure: Exposure) -> set[str]:
    """Every limit the order breaks, computed apart from `check` (the ACTIVE state only)."""
    out = set()
    if limits.min_price is not None and req.price < limits.min_price:
        out.add("min_price")
    if limits.max_price is not None and req.price > limits.max_price:
        out.add("max_price")
    if limits.max_order_power_w is not None and req.power > limits.max_order_power_w:
        out.add("max_order_power_w")
    if limits.countries is not None and req.location.country_code not in limits.countries:
        out.add("countries")
    if limits.locations is not None and not set(req.location.location_id) <= set(limits.locations):
        out.add("locations")
    caps = [
        ("max_window_power_w", limits.max_window_power_w, exposure.window),
        ("max_country_window_power_w", limits.max_country_window_power_w, exposure.country_window),
    ]
    for name, cap, pos in caps:
        total = pos.bought_w + pos.sold_w + pos.open_buy_w + pos.open_sell_w + req.power
        if cap is not None and total > cap:
            out.add(name)
    if limits.max_open_orders is not None and exposure.open_orders >= limits.max_open_orders:
        out.add("max_open_orders")
    per_minute = limits.max_orders_per_minute
    if per_minute is not None and exposure.orders_last_minute >= per_minute:
        out.add("max_orders_per_minute")
    return out


@attrs.define
class Driver:
    """The engine's path from intent to market and back, without the engine or a market."""

    limits: RiskLimits
    tracker: OrderTracker = attrs.field(factory=lambda: OrderTracker(None))
    clock: float = 0.0
    rate: OrderRate = attrs.field(init=False)
    accepted: list[Intent] = attrs.field(factory=list)
    rejected: list[Rejection] = attrs.field(factory=list)
    ids: itertools.count[int] = attrs.field(factory=itertools.count)

    def __attrs_post_init__(self) -> None:
        self.rate = OrderRate(lambda: self.clock)

    def exposure(self, req: model.OrderRequest) -> Exposure:
        # As `Engine._check_risk` computes it (one scope, no strategy filter).
        window = Window.of(req)
        return Exposure(
            open_orders=len(self.tracker.live()),
            window=self.tracker.position(window),
            country_window=self.tracker.position(window, country=req.location.country_code),
            orders_last_minute=self.rate.count(),
        )

    def live(self) -> list[Intent]:
        return [i for i in self.tracker.live() if i.order is not None]

    async def place(self, op: Place) -> Intent | None:
        req = request(
            op.side,
            op.power,
            D(op.price_cents) / 100,
            window=op.window,
            country=COUNTRIES[op.country],
            location_id=(SITE,) if op.site else ("elsewhere",),
        )
        exposure = self.exposure(req)
        rejection = check(req, self.limits, exposure, scope="prop")
        if self.limits.state is TradingState.ACTIVE:
            broken = violations(req, self.limits, exposure)
            if rejection is None:
                assert not broken, f"accepted although it breaks {broken}"
            else:
                assert rejection.limit in broken, (rejection, broken)
        if rejection is not None:
            assert rejection.scope == "prop"
            self.rejected.append(rejection)
            return None
        intent = await self.tracker.new_intent("prop", "1", req, NOW)
        self.rate.record()
        order = model.Order(
            order_id=f"o{next(self.ids)}",
            side=req.side,
            power=req.power,
            price=req.price,
            delivery_start=req.delivery_start,
            delivery_end=req.delivery_end,
            status=model.OrderStatus.MATCHING_ACTIVE,
            expiry_time=req.expiry_time,
            location=req.location,
        )
        await self.tracker.placed(intent, order, NOW)
        self.accepted.append(intent)
        return intent

    def pick(self, n: int) -> Intent | None:
        live = self.live()
        return live[n % len(live)] if live else None

    async def fill(self, intent: Intent, percent: int) -> None:
        assert intent.order is not None
        remaining = intent.snapshot().remaining_power_w
        if intent.request.side is model.Side.SELL:
            power = remaining
        else:
            power = max(D(1), (remaining * percent / 100).to_integral_value())
        n = next(self.ids)
        counterparty = f"theirs{n}"
        contract = model.Contract(
            contract_id=f"c{n}",
            buy_order_id=intent.order.order_id if intent.request.side is BUY else counterparty,
            sell_order_id=intent.order.order_id if intent.request.side is SELL else counterparty,
            power=power,
            energy=power / 4,
            price=intent.request.price,
            delivery_start=intent.request.delivery_start,
            delivery_end=intent.request.delivery_end,
            status=model.ContractStatus.CREATED,
        )
        await self.tracker.apply_contract(contract, NOW)
        status = (
            model.OrderStatus.FILLED if power >= remaining else model.OrderStatus.PARTIAL_FILLED
        )
        contracts = (*intent.order.contracts, contract)
        await self.tracker.apply_order(
            attrs.evolve(intent.order, status=status, contracts=contracts), NOW
        )

    async def cancel(self, intent: Intent) -> None:
        assert intent.order is not None
        await self.tracker.apply_order(
            attrs.evolve(intent.order, status=model.OrderStatus.CANCELLED), NOW
        )

    def committed(self) -> dict[tuple[Window, str | None], Decimal]:
        out: dict[tuple[Window, str | None], Decimal] = {}
        for w in WINDOWS:
            out[w, None] = committed_w(self.tracker.position(w))
            for c in COUNTRIES:
                out[w, c] = committed_w(self.tracker.position(w, country=c))
        return out

    def assert_within_limits(self) -> None:
        limits = self.limits
        for (_, country), power in self.committed().items():
            cap = (
                limits.max_window_power_w if country is None else limits.max_country_window_power_w
            )
            assert cap is None or power <= cap, (country, power, cap)
        if limits.max_open_orders is not None:
            assert len(self.tracker.live()) <= limits.max_open_orders
        if limits.max_orders_per_minute is not None:
            assert self.rate.count() <= limits.max_orders_per_minute
        for intent in self.accepted:
            req = intent.request
            assert limits.min_price is None or req.price >= limits.min_price
            assert limits.max_price is None or req.price <= limits.max_price
            assert limits.max_order_power_w is None or req.power <= limits.max_order_power_w
            assert limits.countries is None or req.location.country_code in limits.countries
            assert limits.locations is None or set(req.location.location_id) <= set(
                limits.locations
            )


async def run_ops(driver: Driver, sequence: list[Op]) -> None:
    driver.assert_within_limits()
    for op in sequence:
        before = driver.committed()
        if isinstance(op, Place):
            await driver.place(op)
        elif isinstance(op, Wait):
            driver.clock += op.seconds
        else:
            intent = driver.pick(op.pick)
            if intent is None:
                continue
            if isinstance(op, Fill):
                await driver.fill(intent, op.percent)
            else:
                await driver.cancel(intent)
            after = driver.committed()
            assert all(after[k] <= before[k] for k in before), "a fill or cancel added power"
        driver.assert_within_limits()


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(limits=risk_limits(), sequence=st.lists(ops, min_size=10, max_size=40))
def test_risk_limits_are_never_exceeded(limits: RiskLimits, sequence: list[Op]) -> None:
    driver = Driver(limits)
    trio.run(run_ops, driver, sequence)


def test_the_driver_accepts_rejects_and_fills() -> None:
    """The property's driver does what it claims (a property over a driver that accepts nothing
    would prove nothing)."""
    limits = RiskLimits(max_window_power_w=D(1000), max_country_window_power_w=D(600))

    async def main() -> Driver:
        driver = Driver(limits)
        a = await driver.place(Place(BUY, 500, 10, 0, 0))
        assert a is not None
        assert await driver.place(Place(SELL, 101, 10, 0, 0)) is None  # DE: 500 + 101 > 600
        b = await driver.place(Place(SELL, 500, 10, 0, 1))  # FR; window 1000 == cap
        assert b is not None
        assert await driver.place(Place(SELL, 1, 10, 0, 1)) is None
        await driver.fill(a, 40)  # 200 of 500 filled
        assert driver.tracker.position(WINDOWS[0]) == Position(D(200), D(0), D(300), D(500))
        await driver.cancel(a)  # frees the 300 still open
        assert driver.tracker.position(WINDOWS[0]) == Position(D(200), D(0), D(0), D(500))
        assert await driver.place(Place(BUY, 301, 10, 0, 0)) is None
        assert await driver.place(Place(BUY, 300, 10, 0, 0)) is not None
        await driver.fill(b, 1)  # a sell fills whole
        assert driver.tracker.position(WINDOWS[0]).sold_w == 500
        driver.assert_within_limits()
        return driver

    driver = trio.run(main)
    assert [r.limit for r in driver.rejected] == [
        "max_country_window_power_w",
        "max_window_power_w",
        "max_window_power_w",
    ]


# --- the reducing state -------------------------------------------------------------------------


async def run_reducing(before: list[Op], during: list[Op]) -> Driver:
    """`before` under active limits, then `during` in the reducing state: a fill of an order
    accepted while reducing never grows its window's absolute net position (nor crosses zero),
    and, once accepted, all the open orders of its side together could not cross zero."""
    driver = Driver(RiskLimits())
    await run_ops(driver, before)
    driver.limits = RiskLimits(state=TradingState.REDUCING)
    reducing: set[str] = set()
    for op in during:
        if isinstance(op, Place):
            intent = await driver.place(op)
            if intent is None:
                continue
            reducing.add(intent.client_id)
            # Even if every open order on its side filled, the window would not cross zero.
            after = driver.tracker.position(Window.of(intent.request))
            if intent.request.side is SELL:
                assert after.net_w - after.open_sell_w >= 0, after
            else:
                assert after.net_w + after.open_buy_w <= 0, after
        elif isinstance(op, Wait):
            driver.clock += op.seconds
        else:
            intent = driver.pick(op.pick)
            if intent is None:
                continue
            if isinstance(op, Cancel):
                await driver.cancel(intent)
                continue
            window = Window.of(intent.request)
            net_before = driver.tracker.position(window).net_w
            await driver.fill(intent, op.percent)
            net_after = driver.tracker.position(window).net_w
            if intent.client_id in reducing:
                assert abs(net_after) <= abs(net_before), (net_before, net_after)
                assert net_before * net_after >= 0, "crossed zero"
    return driver


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    before=st.lists(building_ops, min_size=5, max_size=25),
    during=st.lists(reducing_ops, min_size=10, max_size=30),
)
def test_reducing_never_grows_a_net_position(before: list[Op], during: list[Op]) -> None:
    trio.run(run_reducing, before, during)


def test_reducing_accepts_only_what_shrinks_the_window() -> None:
    async def main() -> Driver:
        driver = Driver(RiskLimits())
        long = await driver.place(Place(BUY, 300, 10, 0, 0))
        assert long is not None
        await driver.fill(long, 100)
        driver.limits = RiskLimits(state=TradingState.REDUCING)
        assert await driver.place(Place(BUY, 1, 10, 0, 0)) is None
        assert await driver.place(Place(SELL, 301, 10, 0, 1)) is None
        assert await driver.place(Place(SELL, 1, 10, 1, 0)) is None  # flat window
        sell = await driver.place(Place(SELL, 200, 10, 0, 1))  # any country: the window's net
        assert sell is not None
        assert await driver.place(Place(SELL, 101, 10, 0, 0)) is None  # 300 - 200 open
        assert await driver.place(Place(SELL, 100, 10, 0, 0)) is not None
        return driver

    driver = trio.run(main)
    assert {r.limit for r in driver.rejected} == {"trading_state"}


# --- the kill switch ----------------------------------------------------------------------------


async def test_kill_switch_configured_is_engaged_by_config() -> None:
    switch = KillSwitch(configured=True)
    assert switch.engaged
    assert await switch.refresh() == ["config"]
    assert not KillSwitch().engaged
    assert await KillSwitch().refresh() == []


async def test_kill_switch_file_engages_only_while_the_file_exists(tmp_path: Path) -> None:
    path = tmp_path / "STOP"
    switch = KillSwitch(file=path)
    assert switch.reasons() == []
    path.touch()
    assert not switch.engaged  # seen at the next refresh: only that touches the disk
    assert await switch.refresh() == [f"file {path}"]
    assert switch.engaged
    path.unlink()
    assert await switch.refresh() == []
    assert switch.reasons() == []  # not engaged


async def test_kill_switch_latch_survives_a_restart_until_released(tmp_path: Path) -> None:
    path = tmp_path / "state" / "flexbot.db"
    store = Store.open(path)
    try:
        switch = KillSwitch(store=AsyncStore(store))
        assert await switch.refresh() == []
        engage_latch(store, "operator", "2026-11-23T10:00:00Z")
        assert latch_of(store) == "operator"
    finally:
        store.close()

    store = Store.open(path)  # a restart: a new store, a new switch
    try:
        restarted = KillSwitch(store=AsyncStore(store))
        assert restarted.reasons() == []  # not read yet
        assert await restarted.refresh() == ["latch (operator)"]
        assert restarted.engaged
        assert release_latch(store) is True
        assert latch_of(store) is None
        assert await restarted.refresh() == []  # not engaged any more
        assert release_latch(store) is False
    finally:
        store.close()


async def test_kill_switch_engage_writes_the_latch(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "flexbot.db")
    try:
        switch = KillSwitch(store=AsyncStore(store))
        await switch.engage("SIGUSR1", "2026-11-23T10:00:00Z")
        assert switch.engaged
        assert latch_of(store) == "SIGUSR1"
        again = KillSwitch(configured=True, store=AsyncStore(store))
        assert await again.refresh() == ["config", "latch (SIGUSR1)"]
    finally:
        store.close()
