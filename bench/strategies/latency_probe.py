"""The strategy of `bench/latency.py`: react to every new best ask with a buy that cannot match.

On each order book it looks at the cheapest ask; when that price is one it has not reacted to yet,
it places a buy for the ask's power and window at `price_factor` times the ask's price (below it,
so nothing trades and the book stays as the probe made it). The probe market recognises the buy by
its price. Nothing else: the figure measured is the framework's path from a book to an order.
"""

from __future__ import annotations

from decimal import Decimal

import attrs

from flexbot.strategy import Context, OrderBook, Side, Strategy, Window, positive


@attrs.frozen
class ProbeParams:
    price_factor: Decimal = attrs.field(default=Decimal("0.5"), validator=positive)  # of the ask


class LatencyProbe(Strategy[ProbeParams]):
    version = "1"

    def __init__(self, params: ProbeParams) -> None:
        super().__init__(params)
        self._last_ask: Decimal | None = None

    async def on_book(self, ctx: Context, book: OrderBook) -> None:
        asks = book.flat_asks()
        if not asks or asks[0].price == self._last_ask:
            return
        best = asks[0]
        self._last_ask = best.price
        price = best.price * self.params.price_factor
        await ctx.place(Side.BUY, Window.of(best), power_w=best.power, price=price)
