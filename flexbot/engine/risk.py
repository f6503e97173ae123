"""Risk limits between the strategies and the market.

Every intent is checked twice: against its strategy's limits over the strategy's own orders, and
against the global limits over all orders of the account. A limit left out (None) does not apply.
Power committed in a window counts the power still open on the market (or possibly there: an
unknown submission counts as placed) plus the power already filled, both sides together: each is
a promise to move energy in that window. "Per country" means per delivery window and country.

Trading states: `active` (anything within limits), `reducing` (cancels, and orders that shrink the
net position of their window without crossing zero), `halted` (cancels only). The kill switch halts
everything and cancels every open order (see `flexbot.engine.engine`).

`check` is a pure function of its inputs, so it is tested by property: whatever sequence of intents
and fills, no accepted intent takes an exposure past a limit.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from decimal import Decimal

import attrs
from attrs import frozen

from flexbot import model
from flexbot.problems import Invalid
from flexbot.trading import Position
from flexbot.validators import non_negative, positive

DEFAULT_COMMIT_RATIO = Decimal(1)  # the account's `max_commit_ratio` when none is set


class TradingState(enum.StrEnum):
    ACTIVE = "active"
    REDUCING = "reducing"
    HALTED = "halted"


_positive = attrs.field(default=None, validator=attrs.validators.optional(positive))
_non_negative = attrs.field(default=None, validator=attrs.validators.optional(non_negative))


@frozen
class RiskLimits:
    """One scope's limits (global, or one strategy). Units in the names: W, €/kWh, orders."""

    state: TradingState = TradingState.ACTIVE
    min_price: Decimal | None = _non_negative
    max_price: Decimal | None = _non_negative
    max_order_power_w: Decimal | None = _positive
    max_window_power_w: Decimal | None = _positive  # committed in one delivery window
    max_country_window_power_w: Decimal | None = _positive  # committed in one window, one country
    max_open_orders: int | None = _positive
    max_orders_per_minute: int | None = _positive
    countries: tuple[str, ...] | None = None  # allowed country codes ("" = none given)
    locations: tuple[str, ...] | None = None  # allowed location ids
    # Sells: open plus sold reduction for a window and pool at most this share of what its
    # assets can deliver (only where the portfolio is on: an `assets` section). Above 1:
    # overbooking, for offers that will not all sell. None: 1 for the account; a strategy
    # without its own is held to the account's.
    max_commit_ratio: Decimal | None = _positive

    def __attrs_post_init__(self) -> None:
        if (
            self.min_price is not None
            and self.max_price is not None
            and self.min_price > self.max_price
        ):
            raise Invalid.single(("max_price",), "must not be below min_price")


@frozen
class PoolRoom:
    """A sell's pool in its window: the reduction committed there (sold, and open), and what its
    assets could serve there, other windows' commitments served first (W)."""

    committed_w: Decimal
    servable_w: Decimal


@frozen
class Exposure:
    """What a scope already has on the market, as the check needs it."""

    open_orders: int = 0
    window: Position = Position()  # the intent's window, all countries
    country_window: Position = Position()  # the intent's window and country
    orders_last_minute: int = 0
    pool: PoolRoom | None = None  # a sell's, when the portfolio is on


@frozen
class Rejection:
    limit: str  # the limit's name, e.g. "max_window_power_w", or "trading_state"
    message: str
    scope: str = "global"  # "global" or the strategy's name

    def __str__(self) -> str:
        return f"{self.scope} {self.limit}: {self.message}"


def committed_w(position: Position) -> Decimal:
    return position.bought_w + position.sold_w + position.open_buy_w + position.open_sell_w


def reduces(request: model.OrderRequest, position: Position) -> bool:
    """The order can only shrink the window's net position, never cross it to the other side."""
    net = position.net_w
    if request.side is model.Side.SELL:
        room = net - position.open_sell_w
    else:
        room = -net - position.open_buy_w
    return room > 0 and request.power <= room


def check(
    request: model.OrderRequest, limits: RiskLimits, exposure: Exposure, *, scope: str = "global"
) -> Rejection | None:
    """The first limit the order would break, or None when it may go."""

    def no(limit: str, message: str) -> Rejection:
        return Rejection(limit, message, scope)

    if limits.state is TradingState.HALTED:
        return no("trading_state", "halted: only cancels are allowed")
    if limits.state is TradingState.REDUCING and not reduces(request, exposure.window):
        return no("trading_state", "reducing: only orders that shrink the window's net position")
    if limits.min_price is not None and request.price < limits.min_price:
        return no("min_price", f"price {request.price} is below {limits.min_price} €/kWh")
    if limits.max_price is not None and request.price > limits.max_price:
        return no("max_price", f"price {request.price} is above {limits.max_price} €/kWh")
    if limits.max_order_power_w is not None and request.power > limits.max_order_power_w:
        return no("max_order_power_w", f"{request.power} W is above {limits.max_order_power_w} W")
    country = request.location.country_code
    if limits.countries is not None and country not in limits.countries:
        return no("countries", f"country {country!r} is not allowed")
    if limits.locations is not None:
        outside = [i for i in request.location.location_id if i not in limits.locations]
        if outside or not request.location.location_id:
            return no("locations", f"location {outside[0] if outside else None!r} is not allowed")
    for limit, cap, position in (
        ("max_window_power_w", limits.max_window_power_w, exposure.window),
        ("max_country_window_power_w", limits.max_country_window_power_w, exposure.country_window),
    ):
        if cap is not None and committed_w(position) + request.power > cap:
            return no(limit, f"{committed_w(position)} W committed + {request.power} W > {cap} W")
    pool = exposure.pool
    ratio = limits.max_commit_ratio
    if ratio is None and scope == "global":
        ratio = DEFAULT_COMMIT_RATIO
    if pool is not None and ratio is not None and request.side is model.Side.SELL:
        cap = ratio * pool.servable_w
        if pool.committed_w + request.power > cap:
            return no(
                "availability",
                f"{pool.committed_w} W committed + {request.power} W > {ratio}"
                f" × {pool.servable_w} W the assets can deliver",
            )
    if limits.max_open_orders is not None and exposure.open_orders + 1 > limits.max_open_orders:
        return no(
            "max_open_orders", f"{exposure.open_orders} open, at most {limits.max_open_orders}"
        )
    per_minute = limits.max_orders_per_minute
    if per_minute is not None and exposure.orders_last_minute + 1 > per_minute:
        return no("max_orders_per_minute", f"{exposure.orders_last_minute} in the last minute")
    return None


class OrderRate:
    """Orders accepted in the last 60 s of a monotonic clock (wall time: a runaway loop is a
    wall-clock problem, whatever speed market time runs at)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._times: deque[float] = deque()  # oldest first: only the expired head is dropped

    def count(self) -> int:
        horizon = self._now() - 60.0
        times = self._times
        while times and times[0] <= horizon:
            times.popleft()
        return len(times)

    def record(self) -> None:
        self._times.append(self._now())
