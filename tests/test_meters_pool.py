"""Pools metered as pools (`flexbot.meters.pool`): a sell naming several sites, each with several
meters, is baselined and metered with the sum of all their meters.

The sum is checked as a law (energy is conserved over any pool and any split of its meters, from
readings in a real SQLite store to the quarters sent), and end to end: the market's verification of
a pooled sell judges the summed baseline and metering."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from flexbot import model, wire
from flexbot.clock import ManualWall, MarketClock
from flexbot.meters.builder import QUARTER, Kind, Quarter
from flexbot.meters.hub import MeterHub
from flexbot.meters.pool import Meters, Pool, summed
from flexbot.meters.source import (
    BaselineSettings,
    MeterSettings,
    Reading,
    SyntheticSettings,
    store_time,
)
from flexbot.store import AsyncStore, Store
from flexbot.strategy import Context, Strategy, Window
from flexbot.verification import VerificationSettings, Verifier
from tests.conftest import Sandbox
from tests.engine_harness import FAST, running_engine, spec, trader, until

START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def meter(meter_id: str, site: str, baseline: BaselineSettings | None = None) -> MeterSettings:
    return MeterSettings(
        id=meter_id,
        location_id=site,
        source=SyntheticSettings(respond=False),
        kind=Kind.POWER_W,
        baseline=baseline or BaselineSettings(method="mean_of_days", days=5),
    )


# --- the sum, as a law ----------------------------------------------------------------------------

energies = st.decimals(min_value=-1000, max_value=1000, places=6, allow_nan=False)


@st.composite
def meters_quarters(draw: st.DrawFn) -> list[list[Quarter]]:
    """Several meters' quarters over one window (a PV meter may give negative energy)."""
    count = draw(st.integers(1, 8))
    ends = [START + QUARTER * (i + 1) for i in range(count)]
    n_meters = draw(st.integers(1, 6))
    return [
        [Quarter(end, draw(energies), draw(st.booleans())) for end in ends] for _ in range(n_meters)
    ]


@given(meters_quarters(), st.data())
def test_a_pool_sums_its_meters_the_same_over_any_split(
    per_meter: list[list[Quarter]], data: st.DataObject
) -> None:
    whole = summed(per_meter)
    # Split the meters into groups in any way; the sum of the groups' sums is the pool's sum.
    groups = data.draw(
        st.lists(st.integers(0, 3), min_size=len(per_meter), max_size=len(per_meter))
    )
    parts = [
        summed([qs for qs, g in zip(per_meter, groups, strict=True) if g == group])
        for group in sorted(set(groups))
    ]
    assert summed(parts) == whole
    # Energy conserved: the pool's total is the meters' totals summed; a quarter is flagged
    # exactly when one of its meters' is.
    assert sum(q.energy_kwh for q in whole) == sum(q.energy_kwh for qs in per_meter for q in qs)
    for i, quarter in enumerate(whole):
        assert quarter.flagged == any(qs[i].flagged for qs in per_meter)


def test_meters_of_different_windows_are_not_summed() -> None:
    one = [Quarter(START + QUARTER, Decimal(1))]
    later = [Quarter(START + 2 * QUARTER, Decimal(1))]
    with pytest.raises(ValueError, match="different times"):
        summed([one, later])
    with pytest.raises(ValueError, match="at least one meter"):
        summed([])


# --- from stored readings -------------------------------------------------------------------------


# Power samples become energy through divisions (W·s to kWh): exact to Decimal's 28 digits, so
# sums in another order may differ in the last of them, 10**-20 kWh below the 1 mWh sent.
EXACT = Decimal("1e-18")


def assert_same(got: Sequence[Quarter], wanted: Sequence[Quarter]) -> None:
    assert [(q.end, q.flagged) for q in got] == [(q.end, q.flagged) for q in wanted]
    assert all(abs(a.energy_kwh - b.energy_kwh) <= EXACT for a, b in zip(got, wanted, strict=True))


def powers(n: int) -> st.SearchStrategy[list[Decimal]]:
    return st.lists(st.decimals(0, 20000, places=1), min_size=n, max_size=n)


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_stored_readings_of_a_pool_sum_to_its_meters_over_any_split(data: st.DataObject) -> None:
    """Readings a minute apart, some missing (a gap): the pool's quarters from the store are the
    sum of any split of its meters' quarters, energy and flags alike."""
    n_meters = data.draw(st.integers(1, 5))
    sites = data.draw(st.lists(st.sampled_from("abc"), min_size=n_meters, max_size=n_meters))
    configured = [meter(f"m{i}", f"site-{s}") for i, s in enumerate(sites)]
    minutes = 2 * 15 + 1  # two quarters, both ends read
    rows = []
    for m in configured:
        read = data.draw(st.lists(st.booleans(), min_size=minutes, max_size=minutes))
        values = data.draw(powers(minutes))
        rows += [
            (m.id, store_time(START + timedelta(minutes=k)), str(v))
            for k, (v, kept) in enumerate(zip(values, read, strict=True))
            if kept or k in (0, minutes - 1)
        ]
    groups = data.draw(st.lists(st.integers(0, 2), min_size=n_meters, max_size=n_meters))

    async def main(path: Path) -> None:
        store = AsyncStore(Store.open(path))
        try:
            await store.run(store.sync.add_readings, rows)
            meters = Meters(configured, store, max_gap_s=120)
            end = START + 2 * QUARTER
            pool = meters.pool(f"site-{s}" for s in "abc")
            assert pool.missing == tuple(f"site-{s}" for s in "abc" if s not in sites)
            whole, _ = await meters.metering(Pool(tuple(configured)), START, end)
            parts = []
            for group in sorted(set(groups)):
                members = [m for m, g in zip(configured, groups, strict=True) if g == group]
                parts.append((await meters.metering(Pool(tuple(members)), START, end))[0])
            assert_same(summed(parts), whole)
            alone = [await meters.quarters(m, START, end) for m in configured]
            total = sum(q.energy_kwh for qs in alone for q in qs)
            assert abs(sum(q.energy_kwh for q in whole) - total) <= EXACT
        finally:
            store.sync.close()

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, Path(tmp) / "flexbot.db")


def test_a_pool_names_each_meter_once_in_the_order_of_its_sites(tmp_path: Path) -> None:
    configured = [meter("a1", "site-a"), meter("b1", "site-b"), meter("a2", "site-a")]
    meters = Meters(configured, AsyncStore(Store.open(tmp_path / "f.db")), max_gap_s=900)
    pool = meters.pool(["site-b", "site-a", "site-b", None, "site-z"])
    assert [m.id for m in pool.meters] == ["b1", "a1", "a2"]
    assert pool.missing == ("site-z",)


def test_a_forecast_meter_is_no_part_of_its_sites_pool(tmp_path: Path) -> None:
    """A meter that only gives another's baseline (`provided`) measures nothing of the site."""
    measured = meter("main", "site-a", BaselineSettings(method="provided", meter="forecast"))
    forecast = meter("forecast", "site-a")
    meters = Meters([measured, forecast], AsyncStore(Store.open(tmp_path / "f.db")), max_gap_s=900)
    assert [m.id for m in meters.pool(["site-a"]).meters] == ["main"]


@pytest.mark.anyio
async def test_an_absurd_reading_is_not_kept(tmp_path: Path) -> None:
    """A broken register's 3.4e38 would poison every quarter built from it: refused, logged."""
    store = AsyncStore(Store.open(tmp_path / "f.db"))
    clock = MarketClock(1.0, wall=ManualWall(), start=START)
    hub = MeterHub([meter("m", "site-a")], store, clock=clock, base=tmp_path)
    with capture_logs() as logs:
        await hub.emit([Reading("m", START, Decimal("3.4e38")), Reading("m", START, Decimal(5))])
    assert await store.run(store.sync.readings, "m", store_time(START), store_time(START)) == [
        (store_time(START), "5")
    ]
    assert [e["event"] for e in logs] == ["meter.absurd_reading"]


# --- end to end: the market judges the pool's sum -------------------------------------------------

POOL = model.Location(location_id=("site-a", "site-b"), country_code="DE")
# site-a: a main meter and a sub-meter, each baselined by its own method; site-b: one meter.
A1 = meter("a1", "site-a")
A2 = meter("a2", "site-a", BaselineSettings(method="high_x_of_y", x=4, y=5))
B1 = meter("b1", "site-b")
BEFORE_W = {"a1": 1000, "a2": 2000, "b1": 4000}  # 7 kW: 1.75 kWh a quarter
DURING_W = {"a1": 500, "a2": 1500, "b1": 3000}  # 5 kW while delivering: 1.25 kWh


@attrs.frozen
class PoolParams:
    power_w: Decimal = Decimal(2000)
    price: Decimal = Decimal("0.20")


class SellPool(Strategy[PoolParams]):
    """Sells the pool's flexibility once, in the next window, without a baseline."""

    async def on_start(self, ctx: Context) -> None:
        window = Window.upcoming(ctx.now, 1)[0]
        if not ctx.orders and ctx.position(window).sold_w == 0:
            p = self.params
            await ctx.place(
                model.Side.SELL, window, power_w=p.power_w, price=p.price, location=POOL
            )


def readings(start: datetime, end: datetime, watts: dict[str, int]) -> list[tuple[str, str, str]]:
    """Every meter's constant power, a reading a minute over `[start, end]`."""
    out = []
    at = start
    while at <= end:
        out += [(meter_id, store_time(at), str(w)) for meter_id, w in watts.items()]
        at += timedelta(minutes=1)
    return out


@asynccontextmanager
async def pooled_verifier(sandbox: Sandbox, tmp_path: Path) -> AsyncIterator[AsyncStore]:
    """The engine runs `SellPool`; the verifier knows the three meters, whose store holds ten days
    of history."""
    settings = attrs.evolve(FAST, cancel_on_shutdown=False)
    async with running_engine(
        sandbox, [spec(SellPool)], store_path=tmp_path / "flexbot.db", settings=settings
    ) as h:
        assert h.store is not None
        now = sandbox.market.clock.now()
        await h.store.run(
            h.store.sync.add_readings, readings(now - timedelta(days=10), now, BEFORE_W)
        )
        verifier = Verifier(
            VerificationSettings(settle_delay_s=60, max_wait_s=600, interval_s=0.05),
            tracker=h.tracker,
            store=h.store,
            client=h.market.client,
            clock=sandbox.market.clock,
            meters=[A1, A2, B1],
        )
        h.engine.observers.append(verifier.observe)
        async with trio.open_nursery() as nursery:
            await nursery.start(verifier.run)
            yield h.store
            nursery.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_sell_naming_two_sites_is_baselined_and_metered_with_all_their_meters(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    async with trader(sandbox) as bob, pooled_verifier(sandbox, tmp_path) as store:
        await until(lambda: bool(sandbox.market.verifications))  # the baseline went out
        (order_id,) = sandbox.market.verifications
        order = market_order(sandbox, order_id)
        window = Window(
            wire.parse_datetime(str(order["delivery_start"])),
            wire.parse_datetime(str(order["delivery_end"])),
        )
        await until(lambda: market_order(sandbox, order_id)["status"] == "matching_active")
        await bob.place(model.Side.BUY, 2000, 0.25, window)
        await until(lambda: contract_of(sandbox, order_id) is not None)
        # The pool delivers: every meter reads lower through the window.
        minute = timedelta(minutes=1)
        now = sandbox.market.clock.now()
        after = window.end + timedelta(minutes=5)
        for start, end, watts in (
            (now, window.start - minute, BEFORE_W),
            (window.start, window.end, DURING_W),
            (window.end + minute, after, BEFORE_W),
        ):
            await store.run(store.sync.add_readings, readings(start, end, watts))
        # Market time moves past the window's end and the settling delay, then on until the
        # market has judged the metering.
        sandbox.advance((after - now).total_seconds())
        with trio.fail_after(10):
            while judged(sandbox, order_id) is None:
                sandbox.advance(60)
                await trio.sleep(0.05)
    result = judged(sandbox, order_id)
    assert result is not None
    assert result.baseline == model.EnergyAmount(Decimal("1.75"))  # 7 kW over a quarter
    assert result.metering == model.EnergyAmount(Decimal("1.25"))  # 5 kW over a quarter
    assert dict(sandbox.market.verifications[order_id]) == {"baseline": 1, "metering": 1}


def market_order(sandbox: Sandbox, order_id: str) -> dict[str, object]:
    (order,) = [o for o in sandbox.market.introspect_orders() if o["order_id"] == order_id]
    return order


def contract_of(sandbox: Sandbox, order_id: str) -> object:
    return next(
        (c for c in sandbox.market.matcher.contracts.values() if c.sell_order_id == order_id), None
    )


def judged(sandbox: Sandbox, order_id: str) -> model.VerificationResult | None:
    contract = contract_of(sandbox, order_id)
    verification = getattr(contract, "verification_result", None)
    return verification.result if verification is not None else None
