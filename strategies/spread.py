"""Make a market: quote a bid and an ask around a reference price, within an inventory limit.

For each of the next `windows_ahead` windows, keep one bid at `mid - half_spread` and one ask at
`mid + half_spread`, each for `quote_w`. The mid is the last trade's price in that window, else
the book's mid, else `fair_price`. Quotes move when the mid moves by `requote_threshold` or more.
A side is not quoted when a fill there would take the window's net position beyond `max_net_w`:
a long inventory stops the bids, a short one stops the asks. Asks carry a flat baseline of
`baseline_w`, as sells need one.
"""

from __future__ import annotations

from decimal import Decimal

import attrs

from flexbot.strategy import (
    Context,
    Invalid,
    OrderBook,
    OwnOrder,
    Side,
    Strategy,
    Window,
    asks_in,
    bids_in,
    flat_baseline,
    positive,
)


@attrs.frozen
class SpreadParams:
    fair_price: Decimal = attrs.field(validator=positive)  # €/kWh: the mid when nothing trades
    half_spread: Decimal = attrs.field(default=Decimal("0.02"), validator=positive)
    quote_w: Decimal = attrs.field(default=Decimal(2000), validator=positive)
    max_net_w: Decimal = attrs.field(default=Decimal(6000), validator=positive)
    requote_threshold: Decimal = Decimal("0.01")
    baseline_w: Decimal = Decimal(10000)
    windows_ahead: int = 2
    lead_s: int = 900

    def __attrs_post_init__(self) -> None:
        if self.half_spread >= self.fair_price:
            raise Invalid.single(("half_spread",), "must be below fair_price (bids stay positive)")


class MarketMaker(Strategy[SpreadParams]):
    version = "1"

    async def on_start(self, ctx: Context) -> None:
        await self._quote(ctx)

    async def on_book(self, ctx: Context, book: OrderBook) -> None:
        await self._quote(ctx)

    async def on_order(self, ctx: Context, order: OwnOrder) -> None:
        await self._quote(ctx)

    def mid(self, ctx: Context, window: Window) -> Decimal:
        for trade in reversed(ctx.trades):
            if Window.of(trade) == window:
                return trade.price
        book = ctx.book
        if book is not None:
            ours = {o.price for o in ctx.orders if o.window == window}
            bids = [b for b in bids_in(book, window) if b.price not in ours]
            asks = [a for a in asks_in(book, window) if a.price not in ours]
            if bids and asks:
                return (bids[0].price + asks[0].price) / 2
        return self.params.fair_price

    async def _quote(self, ctx: Context) -> None:
        p = self.params
        for window in Window.upcoming(ctx.now, p.windows_ahead, lead_s=p.lead_s):
            mid = self.mid(ctx, window)
            net = ctx.position(window).net_w
            wanted = {
                Side.BUY: (mid - p.half_spread, net + p.quote_w <= p.max_net_w),
                Side.SELL: (mid + p.half_spread, -net + p.quote_w <= p.max_net_w),
            }
            for side, (price, allowed) in wanted.items():
                quotes = [o for o in ctx.orders if o.window == window and o.side is side]
                stale = [
                    o for o in quotes if not allowed or abs(o.price - price) >= p.requote_threshold
                ]
                for quote in stale:
                    await ctx.cancel(quote)  # one still unknown is cancelled when it shows up
                if allowed and len(quotes) == len(stale) and price > 0:
                    baseline = None
                    if side is Side.SELL:
                        baseline = flat_baseline(window, p.baseline_w, created_at=ctx.now)
                    await ctx.place(side, window, power_w=p.quote_w, price=price, baseline=baseline)
