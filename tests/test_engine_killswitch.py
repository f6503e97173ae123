"""Property: whatever orders were placed (some with lost answers), engaging the kill switch leaves
no open order on the market, and none is placed after it. The sandbox is the referee."""

from __future__ import annotations

from decimal import Decimal

import attrs
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexbot import model
from flexbot.sandbox.market import MarketSettings
from flexbot.sandbox.server import ServerSettings
from flexbot.strategy import Context, Strategy, Window
from tests.conftest import USERS, open_sandbox
from tests.engine_harness import running_engine, spec, until


@attrs.frozen
class Planned:
    side: model.Side
    power_w: Decimal
    price: Decimal
    window_index: int


@attrs.frozen
class PlanParams:
    plan: tuple[Planned, ...] = ()


class Scripted(Strategy[PlanParams]):
    """Places its plan at start, then keeps trying to place it again on every book."""

    Params = PlanParams

    async def on_start(self, ctx: Context) -> None:
        await self._place(ctx)

    async def on_book(self, ctx: Context, book: model.OrderBook) -> None:
        await self._place(ctx)

    async def _place(self, ctx: Context) -> None:
        windows = Window.upcoming(ctx.now, 4)
        for planned in self.params.plan:
            window = windows[planned.window_index]
            if any(o.window == window and o.side is planned.side for o in ctx.orders):
                continue
            await ctx.place(planned.side, window, power_w=planned.power_w, price=planned.price)


plans = st.lists(
    st.builds(
        Planned,
        side=st.sampled_from(model.Side),
        power_w=st.sampled_from([Decimal(500), Decimal(1000), Decimal(2500)]),
        price=st.sampled_from([Decimal("0.1"), Decimal("0.2"), Decimal("0.3")]),
        window_index=st.integers(0, 3),
    ),
    min_size=1,
    max_size=6,
)


async def scenario(plan: list[Planned], ambiguous_rate: float, engage_after: int) -> None:
    market_settings = MarketSettings(users=USERS, seed=3, rate_limit=None)
    server_settings = ServerSettings(port=0, graceful_timeout_s=0.2)
    async with open_sandbox(market_settings, server_settings) as sandbox:
        sandbox.market.faults.update({"ambiguous_rate": ambiguous_rate, "ambiguous_mode": "504"})

        def open_orders() -> list[dict[str, object]]:
            return [
                o
                for o in sandbox.market.introspect_orders()
                if o["owner"] == "alice" and not model.is_final_order_status(str(o["status"]))
            ]

        specs = [spec(Scripted, PlanParams(tuple(plan)), name="scripted")]
        async with running_engine(sandbox, specs) as h:
            distinct = len({(p.side, p.window_index) for p in plan})  # one order each
            await until(lambda: len(list(h.tracker)) >= min(engage_after, distinct))
            await h.engine.engage_kill_switch("test")
            await until(lambda: not h.tracker.live() and not open_orders())
            placed = len(sandbox.market.introspect_orders())
            await trio.sleep(0.3)  # books keep coming: the strategy keeps trying, in vain
            assert not open_orders()
            assert len(sandbox.market.introspect_orders()) == placed


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    plan=plans,
    ambiguous_rate=st.sampled_from([0.0, 0.5, 1.0]),
    engage_after=st.integers(0, 6),
)
def test_the_kill_switch_leaves_no_open_order(
    plan: list[Planned], ambiguous_rate: float, engage_after: int
) -> None:
    trio.run(scenario, plan, ambiguous_rate, engage_after)
