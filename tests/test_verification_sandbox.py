"""Baselines and metering submitted automatically, against the sandbox: a sell made without a
baseline gets one from the meter's history, trades, and after delivery its metering goes out, is
verified and settled, with no manual step. Market time is moved by the test (a manual wall)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import attrs
import pytest
import trio

from flexbot import model
from flexbot.engine.orders import sold_power
from flexbot.meters.builder import Kind
from flexbot.meters.hub import MeterHub
from flexbot.meters.source import BaselineSettings, MeterSettings, SyntheticSettings
from flexbot.meters.synthetic import SyntheticMeter
from flexbot.strategy import Context, Strategy, Window
from flexbot.verification import VerificationSettings, Verifier
from tests.conftest import Sandbox
from tests.engine_harness import FAST, Harness, running_engine, spec, trader, until

pytestmark = pytest.mark.anyio

METER = MeterSettings(
    id="site-1-main",
    location_id="site-1",
    source=SyntheticSettings(seed=5, noise_w=Decimal(20), interval_s=60),
    kind=Kind.POWER_W,
    baseline=BaselineSettings(method="mean_of_days", days=5),
)
FAST_CHECKS = VerificationSettings(settle_delay_s=60, max_wait_s=600, interval_s=0.05)


@attrs.frozen
class SellParams:
    power_w: Decimal = Decimal(3000)
    price: Decimal = Decimal("0.20")


class SellOnce(Strategy[SellParams]):
    """Sells once in the next window, without a baseline (the verifier must supply it)."""

    Params = SellParams

    async def on_start(self, ctx: Context) -> None:
        window = Window.upcoming(ctx.now, 1)[0]
        if not ctx.orders and ctx.position(window).sold_w == 0:
            p = self.params
            await ctx.place(model.Side.SELL, window, power_w=p.power_w, price=p.price)


@attrs.define
class Site:
    """The synthetic site's meter, read by the test as market time moves (deterministic)."""

    hub: MeterHub
    meter: SyntheticMeter
    sandbox: Sandbox

    async def step(self, seconds: float) -> None:
        """Move market time on, and store what the meter read meanwhile."""
        self.sandbox.advance(seconds)
        await self.hub.emit(self.meter.samples_until(self.sandbox.market.clock.now()))
        await trio.sleep(0.02)  # let the verifier's scan see it


@asynccontextmanager
async def verifying(
    sandbox: Sandbox, tmp_path: Path, checks: VerificationSettings = FAST_CHECKS
) -> AsyncIterator[tuple[Harness, Verifier, Site]]:
    store = tmp_path / "flexbot.db"
    settings = attrs.evolve(FAST, cancel_on_shutdown=False)
    async with running_engine(sandbox, [spec(SellOnce)], store_path=store, settings=settings) as h:
        assert h.store is not None
        clock = sandbox.market.clock
        hub = MeterHub([METER], h.store, clock=clock, base=tmp_path)
        # Ten days of history (so a baseline can be computed at once), then the live readings.
        assert isinstance(METER.source, SyntheticSettings)
        meter = SyntheticMeter(
            METER.id,
            METER.source,
            clock,
            delivering_w=lambda at: sold_power(h.tracker)(METER.location_id, at),
            start=clock.now() - timedelta(days=10),
        )
        await hub.emit(meter.samples_until(clock.now()))
        verifier = Verifier(
            checks,
            tracker=h.tracker,
            store=h.store,
            client=h.market.client,
            clock=clock,
            meters=[METER],
        )
        h.engine.observers.append(verifier.observe)
        async with trio.open_nursery() as nursery:
            await nursery.start(verifier.run)
            yield h, verifier, Site(hub, meter, sandbox)
            nursery.cancel_scope.cancel()


def stats(sandbox: Sandbox) -> dict[str, object]:
    return sandbox.market.stats()


async def test_a_sell_gets_its_baseline_trades_and_is_verified_and_settled(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    async with trader(sandbox) as bob, verifying(sandbox, tmp_path) as (h, verifier, site):
        await until(lambda: len(list(h.tracker)) == 1)
        (intent,) = h.tracker
        # The baseline came from the meter's history: the order is in the book.
        await until(lambda: intent.order is not None and intent.order.status == "matching_active")
        await bob.place(model.Side.BUY, 3000, 0.25, Window.of(intent.request))
        await until(lambda: intent.order is not None and len(intent.order.contracts) == 1)

        def settled() -> bool:
            assert intent.order is not None
            return (
                intent.order.contracts[0].status
                == model.ContractStatus.SETTLEMENT_COMPLETED_SUCCESS
            )

        # Delivery happens (the synthetic site lowers its load by what was sold), then the
        # settling delay: metering goes out, verification and settlement follow.
        for _ in range(60):
            await site.step(60)
            if settled():
                break
        await until(settled)
    submissions = sandbox.market.verifications[intent.order_id or ""]
    assert dict(submissions) == {"baseline": 1, "metering": 1}
    assert verifier.sent == 2
    assert not sandbox.market.duplicates
