"""The strategy API: the contract between flexbot and the modules in `strategies/`.

A strategy is one class. It declares an attrs `Params` class (typed, validated, documented
defaults; filled from the `params` of its YAML file) and overrides the callbacks it cares about.
It acts only through the `Context` it is handed: no HTTP, no sockets, no global state.

    @attrs.frozen
    class Params:
        max_price: Decimal = Decimal("0.30")   # €/kWh

    class Buyer(Strategy[Params]):
        Params = Params
        version = "1"

        async def on_book(self, ctx: Context, book: OrderBook) -> None:
            ...
            await ctx.place(Side.BUY, power_w=Decimal(1000), price=..., window=...)

Delivery rules (ARCHITECTURE.md): `on_book` gets the newest book (a slow strategy skips stale ones);
`on_ticker` and `on_expired` get every event in order unless the strategy falls more than a buffer
behind (then the oldest are dropped, counted and logged); `on_order` and `on_contract` get every
change of the strategy's own orders, never dropped. Callbacks of one strategy never run
concurrently. A callback that raises is logged; the strategy is restarted (a new instance,
`on_start` again) after a backoff, and disabled after repeated failures.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import attrs
from attrs import frozen

from flexbot import model, rules
from flexbot.problems import Invalid
from flexbot.schedule import Timer

# The shared types of trading live below the engine (`flexbot.trading`); a strategy takes them from
# here, its one import.
from flexbot.trading import IntentState as IntentState
from flexbot.trading import OwnOrder as OwnOrder
from flexbot.trading import Position as Position
from flexbot.trading import Window as Window


@frozen
class NoParams:
    """For a strategy without parameters."""


P = TypeVar("P")


class Context(Protocol):
    """What a strategy sees and does. Implemented by the engine (live, paper and replay alike)."""

    name: str  # the strategy's name: its YAML file's stem
    log: Any  # a structlog logger bound to strategy=name

    @property
    def now(self) -> datetime:
        """Market time (UTC)."""

    @property
    def book(self) -> model.OrderBook | None:
        """The newest order book, None while unknown (before the first, or after a drop)."""

    @property
    def trades(self) -> Sequence[model.Ticker]:
        """Recent market trades (`/ticker`), oldest first."""

    @property
    def orders(self) -> Sequence[OwnOrder]:
        """This strategy's live orders (pending, open or unknown), oldest first."""

    def position(self, window: Window) -> Position:
        """This strategy's position in `window`."""

    async def place(
        self,
        side: model.Side,
        power_w: Decimal,
        price: Decimal,
        window: Window,
        *,
        expiry: datetime | None = None,
        location: model.Location | None = None,
        baseline: model.MeterReading | None = None,
    ) -> OwnOrder:
        """Submit an order through the risk checks. Returns its state: OPEN (placed), REJECTED
        (with `reason`) or UNKNOWN (sent, outcome unknown: do not place it again; `on_order`
        follows). Expiry defaults to the engine's lead before the window's start; the location to
        the strategy's configured one. Never raises for a refusal."""

    async def cancel(self, order: OwnOrder | str) -> OwnOrder:
        """Cancel one of this strategy's orders (by the object or its client id)."""

    async def cancel_all(self) -> int:
        """Cancel every live order of this strategy; returns how many were asked to cancel."""


class Strategy(Generic[P]):
    """Subclass, set `Params` and `version`, override the callbacks you need."""

    Params: ClassVar[type[Any]] = NoParams
    version: ClassVar[str] = "0"
    timer: ClassVar[Timer | None] = None  # the default schedule of `on_timer`; YAML may set one

    def __init__(self, params: P) -> None:
        self.params = params

    async def on_start(self, ctx: Context) -> None:
        """Once at start (and after each restart), before any other callback."""

    async def on_stop(self, ctx: Context) -> None:
        """Once when the engine stops the strategy (not after a failure)."""

    async def on_book(self, ctx: Context, book: model.OrderBook) -> None:
        """A new order book (full snapshot)."""

    async def on_ticker(self, ctx: Context, trade: model.Ticker) -> None:
        """A trade on the market (anyone's)."""

    async def on_expired(self, ctx: Context, order: model.ExpiredOrder) -> None:
        """An order (anyone's) left the book at its expiry time."""

    async def on_order(self, ctx: Context, order: OwnOrder) -> None:
        """One of this strategy's orders changed: placed, resolved, filled, cancelled, expired."""

    async def on_contract(self, ctx: Context, contract: model.Contract, order: OwnOrder) -> None:
        """A contract of one of this strategy's orders was made or changed status."""

    async def on_timer(self, ctx: Context) -> None:
        """The strategy's schedule fired (see `timer`)."""

    async def on_reload(self, ctx: Context, old_params: P) -> None:
        """New params were loaded (SIGHUP); `self.params` already holds them."""


# --- helpers for strategies ---------------------------------------------------------------------


def positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An attrs validator for Params: the value must be greater than 0 (located if not)."""
    if not value > 0:
        raise Invalid.single((attribute.name,), f"must be greater than 0, got {value}")


def _same_market(entry: model.BookEntry, window: Window, country: str) -> bool:
    if (entry.delivery_start, entry.delivery_end) != (window.start, window.end):
        return False
    return rules.countries_meet(country, entry.location.country_code)


def bids_in(book: model.OrderBook, window: Window, country: str = "") -> list[model.BookEntry]:
    """The bids a sell in `window` (and `country`, "" for any) could meet, best first."""
    return [e for e in book.flat_bids() if _same_market(e, window, country)]


def asks_in(book: model.OrderBook, window: Window, country: str = "") -> list[model.BookEntry]:
    """The asks a buy in `window` could meet, best (cheapest) first."""
    return [e for e in book.flat_asks() if _same_market(e, window, country)]


def flat_baseline(window: Window, power_w: Decimal, *, created_at: datetime) -> model.MeterReading:
    """A baseline of constant consumption `power_w` over `window`: one kWh point a quarter hour,
    stamped at the end of its interval. Good enough for a site with a steady load; meter-based
    baselines come from `flexbot.meters`."""
    quarter = timedelta(seconds=rules.MARKET_TIME_UNIT_S)
    energy_kwh = power_w * Decimal(rules.MARKET_TIME_UNIT_S) / Decimal(3_600_000)
    points = []
    stamp = window.start + quarter
    while stamp <= window.end:
        points.append(model.DataPoint(timestamp=stamp, value=energy_kwh))
        stamp += quarter
    return model.MeterReading(
        data_points=tuple(points),
        created_at=created_at,
        reading_start=window.start,
        reading_end=window.end,
        resolution=rules.MARKET_TIME_UNIT_S,
        unit_measured="kWh",
    )
