"""The engine and the example strategies against the sandbox, over real loopback sockets."""

from __future__ import annotations

from decimal import Decimal

import pytest

from flexbot import model
from flexbot.strategy import IntentState
from strategies import buyer
from tests.conftest import Sandbox
from tests.engine_harness import running_engine, spec, trader, until

pytestmark = pytest.mark.anyio


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
