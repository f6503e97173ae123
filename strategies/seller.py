"""Sell the aggregator's flexibility, window by window, never below a floor price.

For each of the next `windows_ahead` delivery windows (the first at least `lead_s` ahead), offer the
flexibility available in that window at `ask_price`: what the location's assets can still deliver
(`ctx.deliverable`, when flexbot knows the assets: an `assets` section), at most `capacity_w` (or
the `schedule` entry covering the window's start hour) when given; for sites without assets, that
fixed capacity alone (with neither, nothing: `seller.no_capacity`, once). Offers below
`min_offer_w` are not made. Each offer goes with a flat baseline of the site's usual load
(`baseline_w`), or, with `baseline_w: null`, the baseline flexbot builds from the location's
meters: a sell is matched only once the market has its baseline.

Re-pricing: when the book shows a bid for the window that could take the whole offer, priced below
our ask but at or above the floor, the offer is cancelled and placed again at that bid's price, so
it trades. Offers below the floor are never made.

A window whose offer risk refused is not offered again before the next timer tick; the refused
windows are kept across restarts (`save_state`), so a restarted seller does not knock at the
limits again at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import attrs

from flexbot.strategy import (
    Context,
    IntentState,
    Invalid,
    OrderBook,
    OwnOrder,
    Side,
    State,
    Strategy,
    Timer,
    Window,
    bids_in,
    flat_baseline,
    positive,
)


@attrs.frozen
class Slot:
    """Available flexibility from `from_hour` to `to_hour` (UTC, 0-24)."""

    from_hour: int
    to_hour: int
    power_w: Decimal


@attrs.frozen
class SellerParams:
    floor_price: Decimal = attrs.field(validator=positive)  # €/kWh: never sell below
    ask_price: Decimal = attrs.field(validator=positive)  # €/kWh: the first offer's price
    # W offered at most in a window, unless scheduled: the whole offer for sites without assets,
    # a cap on what the assets can deliver for sites with them. None: the assets' figure alone.
    capacity_w: Decimal | None = attrs.field(
        default=None, validator=attrs.validators.optional(positive)
    )
    schedule: tuple[Slot, ...] = ()  # overrides capacity_w in the hours it covers
    min_offer_w: Decimal = attrs.field(default=Decimal(100), validator=positive)
    # The site's usual load, for a flat baseline sent with each offer; None: flexbot builds the
    # baseline from the location's meter (config `meters:`) and submits it.
    baseline_w: Decimal | None = Decimal(10000)
    windows_ahead: int = 4
    lead_s: int = 900  # the first window starts at least this long from now

    def __attrs_post_init__(self) -> None:
        if self.ask_price < self.floor_price:
            raise Invalid.single(("ask_price",), "must not be below floor_price")


class FlexSeller(Strategy[SellerParams]):
    version = "1"
    timer = Timer(interval_s=60)

    def __init__(self, params: SellerParams) -> None:
        super().__init__(params)
        self._refused: set[Window] = set()  # windows refused (by risk) since the last timer tick
        self._said_no_capacity = False

    def save_state(self) -> State:
        return {"refused": sorted(w.isoformat() for w in self._refused)}  # sorted: stable bytes

    def load_state(self, state: Mapping[str, Any]) -> None:
        self._refused = {Window.fromisoformat(text) for text in state["refused"]}

    async def on_start(self, ctx: Context) -> None:
        await self._offer(ctx)

    async def on_timer(self, ctx: Context) -> None:
        self._refused.clear()
        await self._offer(ctx)

    async def on_book(self, ctx: Context, book: OrderBook) -> None:
        for order in ctx.orders:
            if order.side is Side.SELL and order.order_id is not None:
                await self._reprice(ctx, order, book)
        await self._offer(ctx)

    def capacity(self, window: Window) -> Decimal | None:
        for slot in self.params.schedule:
            if slot.from_hour <= window.start.hour < slot.to_hour:
                return slot.power_w
        return self.params.capacity_w

    def free(self, ctx: Context, window: Window) -> Decimal:
        """What may still be offered in the window: the assets' figure (asked afresh for each
        window: an offer in one takes energy from the next), within the fixed capacity."""
        limits = []
        capacity = self.capacity(window)
        if capacity is not None:
            position = ctx.position(window)
            limits.append(capacity - position.sold_w - position.open_sell_w)
        deliverable = ctx.deliverable([window])
        if deliverable is not None:
            limits.append(deliverable[0].available_w)
        if not limits:
            if not self._said_no_capacity:
                self._said_no_capacity = True
                ctx.log.warning("seller.no_capacity", reason="no assets known and no capacity_w")
            return Decimal(0)
        return min(limits)

    async def _offer(self, ctx: Context) -> None:
        p = self.params
        for window in Window.upcoming(ctx.now, p.windows_ahead, lead_s=p.lead_s):
            if window in self._refused:
                continue
            free = self.free(ctx, window)
            if free < p.min_offer_w:
                continue
            baseline = None
            if p.baseline_w is not None:
                baseline = flat_baseline(window, p.baseline_w, created_at=ctx.now)
            placed = await ctx.place(
                Side.SELL, window, power_w=free, price=p.ask_price, baseline=baseline
            )
            if placed.state is IntentState.REJECTED:
                self._refused.add(window)  # try again at the next tick, not at every book

    async def _reprice(self, ctx: Context, order: OwnOrder, book: OrderBook) -> None:
        country = order.request.location.country_code
        takers = [b for b in bids_in(book, order.window, country) if b.power >= order.power_w]
        if not takers:
            return
        best = takers[0].price
        if not (self.params.floor_price <= best < order.price):
            return
        cancelled = await ctx.cancel(order)
        if cancelled.is_live or cancelled.filled_power_w > 0:
            return  # not cancelled (yet), or it traded meanwhile: nothing to re-place
        ctx.log.info(
            "seller.reprice", window=str(order.window), old=float(order.price), new=float(best)
        )
        await ctx.place(
            Side.SELL,
            order.window,
            power_w=order.power_w,
            price=best,
            baseline=order.request.baseline,
        )
