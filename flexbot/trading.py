"""The shared types of trading, below the engine, the meters and the strategy API: a delivery
window, where an order intent stands, one of our orders as a strategy sees it, and a position.

Strategies take them from `flexbot.strategy`, which re-exports them; flexbot's own layers import
them from here, so that nothing below the strategy API depends on it.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from decimal import Decimal

from attrs import frozen

from flexbot import model, rules, wire


@frozen(order=True)
class Window:
    """A delivery window on the 15-minute grid, `[start, end)`."""

    start: datetime
    end: datetime

    @classmethod
    def of(cls, thing: model.OrderRequest | model.Order | model.BookEntry | model.Ticker) -> Window:
        return cls(thing.delivery_start, thing.delivery_end)

    @classmethod
    def upcoming(
        cls, now: datetime, count: int, *, lead_s: int = 0, length_s: int = 900
    ) -> list[Window]:
        """The next `count` windows of `length_s` starting at least `lead_s` after `now` (and
        strictly after it: a window starting now is already in delivery)."""
        first = rules.ceil_to_grid(now + timedelta(seconds=lead_s))
        if first <= now:
            first += timedelta(seconds=rules.MARKET_TIME_UNIT_S)
        length = timedelta(seconds=length_s)
        return [cls(first + i * length, first + (i + 1) * length) for i in range(count)]

    def isoformat(self) -> str:
        """The window as an ISO 8601 interval, `2026-05-01T10:00:00Z/2026-05-01T10:15:00Z`: for a
        strategy's saved state or a log field. `Window.fromisoformat` reads it back."""
        return f"{wire.format_datetime(self.start)}/{wire.format_datetime(self.end)}"

    @classmethod
    def fromisoformat(cls, text: str) -> Window:
        """The window of an ISO 8601 interval `start/end` (both with a zone); ValueError if not."""
        start, slash, end = text.partition("/")
        if not slash:
            raise ValueError(f"{text!r} is not an interval start/end")
        window = cls(wire.parse_datetime(start), wire.parse_datetime(end))
        if window.end <= window.start:
            raise ValueError(f"{text!r} ends before it starts")
        return window

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%dT%H:%MZ}/{self.end:%H:%MZ}"


class IntentState(enum.StrEnum):
    """Where an order intent stands, from the engine's side (the market's status is separate)."""

    PENDING = "pending"  # journalled, being sent
    OPEN = "open"  # the market has it and it is not final
    UNKNOWN = "unknown"  # sent, outcome unknown: reconciliation will tell; blocks a resend
    DONE = "done"  # final at the market: filled, cancelled or expired
    REJECTED = "rejected"  # refused by risk or by the market; never on the market
    LAPSED = "lapsed"  # unknown until past its expiry time: never seen on the market

    @property
    def is_live(self) -> bool:
        """May still be, or become, an order on the market."""
        return self in (IntentState.PENDING, IntentState.OPEN, IntentState.UNKNOWN)

    @property
    def is_unresolved(self) -> bool:
        """Sent (or being sent) with no market id known yet."""
        return self in (IntentState.PENDING, IntentState.UNKNOWN)


@frozen
class OwnOrder:
    """One of the strategy's orders: the intent, and what the market said of it."""

    client_id: str  # ours, assigned before sending: the market's order request has no such field
    strategy: str
    request: model.OrderRequest
    state: IntentState
    order_id: str | None = None  # the market's, once known
    order: model.Order | None = None  # the market's latest report
    reason: str | None = None  # why it was rejected (the risk limit, or the market's message)
    dry_run: bool = False

    @property
    def side(self) -> model.Side:
        return self.request.side

    @property
    def window(self) -> Window:
        return Window.of(self.request)

    @property
    def price(self) -> Decimal:
        return self.request.price

    @property
    def power_w(self) -> Decimal:
        return self.request.power

    @property
    def status(self) -> model.OrderStatus | str | None:
        return None if self.order is None else self.order.status

    @property
    def filled_power_w(self) -> Decimal:
        return Decimal(0) if self.order is None else self.order.filled_power

    @property
    def remaining_power_w(self) -> Decimal:
        """Power that may still trade (0 once final)."""
        if not self.state.is_live:
            return Decimal(0)
        return max(self.request.power - self.filled_power_w, Decimal(0))

    @property
    def is_live(self) -> bool:
        return self.state.is_live


@frozen
class Position:
    """A strategy's (or the account's) stake in one delivery window, in W."""

    bought_w: Decimal = Decimal(0)  # filled buys
    sold_w: Decimal = Decimal(0)  # filled sells
    open_buy_w: Decimal = Decimal(0)  # buy power still on the market (or maybe: unknown)
    open_sell_w: Decimal = Decimal(0)

    @property
    def net_w(self) -> Decimal:
        """Bought minus sold: > 0 long (we take flexibility), < 0 short (we deliver it)."""
        return self.bought_w - self.sold_w


@frozen
class Deliverable:
    """What a pool of sites can deliver as a reduction in one window, in W: what its assets can
    hold (`capacity_w`), what is already committed there (sold, or offered and still open), and
    what an order may still take (`available_w`: within the availability risk limit, and after
    what other windows' commitments take of the assets' energy). Whole watts, never rounded up."""

    window: Window
    sites: tuple[str, ...]
    capacity_w: Decimal
    committed_w: Decimal
    available_w: Decimal
    assets: int = 0  # the assets counted (fresh state, or fixed limits)
