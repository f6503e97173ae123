"""Buy flexibility below a limit price, for the delivery windows that need it.

For each of the next `windows_ahead` windows (the first at least `lead_s` ahead), or only those
starting in `hours_utc` when given, buy up to `power_w` in total. On each order book it takes the
cheapest offers priced at or below `limit_price` that fit in what is still needed (sells are
all-or-nothing, so an offer is taken whole or not at all), paying the offer's own price.

Only offers its bids can meet: those of its own location's country (or of `country`, when given).
An offer it has a live bid for (the same window, price and power: sent, open, or its outcome
unknown) is not bid for again, however many books show it.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import attrs

from flexbot.strategy import (
    Context,
    IntentState,
    OrderBook,
    Side,
    Strategy,
    Timer,
    Window,
    asks_in,
    positive,
)


@attrs.frozen
class BuyerParams:
    limit_price: Decimal = attrs.field(validator=positive)  # €/kWh: never pay more
    power_w: Decimal = attrs.field(default=Decimal(5000), validator=positive)  # per window
    windows_ahead: int = 4
    lead_s: int = 900
    hours_utc: tuple[int, ...] = ()  # only windows starting in these hours; () for all
    country: str = ""  # only offers from this country ("": its location's country)


class FlexBuyer(Strategy[BuyerParams]):
    version = "1"
    timer = Timer(interval_s=60)

    def __init__(self, params: BuyerParams) -> None:
        super().__init__(params)
        self._refused: set[Window] = set()

    def windows(self, ctx: Context) -> list[Window]:
        p = self.params
        upcoming = Window.upcoming(ctx.now, p.windows_ahead, lead_s=p.lead_s)
        return [w for w in upcoming if not p.hours_utc or w.start.hour in p.hours_utc]

    async def on_book(self, ctx: Context, book: OrderBook) -> None:
        p = self.params
        country = p.country or ctx.location.country_code
        for window in self.windows(ctx):
            if window in self._refused:
                continue
            position = ctx.position(window)
            need = p.power_w - position.bought_w - position.open_buy_w
            # The offers its live bids are for, one bid claiming one offer of its price and power.
            claimed = Counter(
                (o.request.price, o.request.power)
                for o in ctx.orders
                if o.request.side == Side.BUY and o.window == window
            )
            for ask in asks_in(book, window, country):
                if ask.price > p.limit_price:
                    break  # best first: none further is cheap enough
                if claimed[ask.price, ask.power] > 0:
                    claimed[ask.price, ask.power] -= 1
                    continue
                if ask.power > need:
                    continue
                placed = await ctx.place(Side.BUY, window, power_w=ask.power, price=ask.price)
                if placed.state is IntentState.REJECTED:
                    self._refused.add(window)
                    break
                need -= ask.power

    async def on_timer(self, ctx: Context) -> None:
        self._refused.clear()  # try refused windows again, once a tick, not at every book
