"""The strategy API: the contract between flexbot and the modules in `strategies/`, and their one
import from flexbot. Everything a strategy needs is here (`__all__`); a strategy module imports
nothing else of flexbot (an import contract in `pyproject.toml` holds it to that).

A strategy is one class. It declares its params as an attrs class (typed, validated, documented
defaults; filled from the `params` of its YAML file) by naming it once, as the type argument of
`Strategy`, and overrides the callbacks it cares about. It acts only through the `Context` it is
handed: no HTTP, no sockets, no global state.

    @attrs.frozen
    class BuyerParams:
        max_price: Decimal = attrs.field(validator=positive)   # €/kWh

    class Buyer(Strategy[BuyerParams]):
        version = "1"

        async def on_book(self, ctx: Context, book: OrderBook) -> None:
            ...
            await ctx.place(Side.BUY, window, power_w=Decimal(1000), price=...)

Delivery rules (ARCHITECTURE.md): `on_book` gets the newest book (a slow strategy skips stale ones);
`on_ticker` and `on_expired` get every event in order unless the strategy falls more than a buffer
behind (then the oldest are dropped, counted and logged); `on_order` and `on_contract` get every
change of the strategy's own orders, never dropped. Callbacks of one strategy never run
concurrently. A callback that raises is logged; the strategy is restarted (a new instance, its
saved state loaded, `on_start` again) after a backoff, and disabled after repeated failures.

State across restarts: `save_state` returns what to keep (JSON data), `load_state` takes it back in
a new instance before `on_start`. The engine saves after every callback that changed it (and at
stop), in the daemon's store; a state that cannot be saved or loaded is logged and the strategy
runs on (from a fresh instance, for a load). A replay keeps no state.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Generic, Protocol, TypeAlias, TypeVar

from attrs import frozen

from flexbot import model, rules
from flexbot.model import BookEntry as BookEntry
from flexbot.model import Contract as Contract
from flexbot.model import ContractStatus as ContractStatus
from flexbot.model import DataPoint as DataPoint
from flexbot.model import ExpiredOrder as ExpiredOrder
from flexbot.model import Location as Location
from flexbot.model import MeterReading as MeterReading
from flexbot.model import Order as Order
from flexbot.model import OrderBook as OrderBook
from flexbot.model import OrderRequest as OrderRequest
from flexbot.model import OrderStatus as OrderStatus
from flexbot.model import Side as Side
from flexbot.model import Ticker as Ticker
from flexbot.problems import Invalid as Invalid
from flexbot.problems import Problem as Problem
from flexbot.schedule import Timer as Timer
from flexbot.trading import Deliverable as Deliverable
from flexbot.trading import IntentState as IntentState
from flexbot.trading import OwnOrder as OwnOrder
from flexbot.trading import Position as Position
from flexbot.trading import Window as Window
from flexbot.validators import non_negative as non_negative
from flexbot.validators import positive as positive

# The version of this API. Bumped on a breaking change (a name removed or renamed, a signature or
# a meaning changed), not on an addition. Logged with `strategy.started`.
#   1: the first API (`ctx.place(side, power_w, price, window)`, params declared twice).
#   2: one import; `ctx.place(side, window, *, power_w=, price=)`; params from `Strategy[P]`;
#      `save_state` / `load_state`; a typed `ctx.log`. Added since: `ctx.location`,
#      `ctx.deliverable`.
API_VERSION = 2

MARKET_TIME_UNIT_S = rules.MARKET_TIME_UNIT_S  # the market's delivery grid: 15 minutes

__all__ = [
    "API_VERSION",
    "MARKET_TIME_UNIT_S",
    "BookEntry",
    "Context",
    "Contract",
    "ContractStatus",
    "DataPoint",
    "Deliverable",
    "ExpiredOrder",
    "IntentState",
    "Invalid",
    "JSONValue",
    "Location",
    "Logger",
    "MeterReading",
    "NoParams",
    "Order",
    "OrderBook",
    "OrderRequest",
    "OrderStatus",
    "OwnOrder",
    "Position",
    "Problem",
    "Side",
    "State",
    "Strategy",
    "Ticker",
    "Timer",
    "Window",
    "asks_in",
    "bids_in",
    "flat_baseline",
    "non_negative",
    "positive",
]

# What `save_state` may return: JSON data. Tuples come back as lists; mapping keys are strings.
JSONValue: TypeAlias = (
    "bool | int | float | str | Sequence[JSONValue] | Mapping[str, JSONValue] | None"
)
State: TypeAlias = Mapping[str, JSONValue]


@frozen
class NoParams:
    """For a strategy without parameters: `class Quiet(Strategy[NoParams])`."""


P = TypeVar("P")


class Logger(Protocol):
    """The strategy's logger (structlog, bound to `strategy=<name>`): an event name, then fields.

    `ctx.log.info("seller.reprice", window=window.isoformat(), new=float(price))`."""

    def debug(self, event: str, **fields: Any) -> None: ...
    def info(self, event: str, **fields: Any) -> None: ...
    def warning(self, event: str, **fields: Any) -> None: ...
    def error(self, event: str, **fields: Any) -> None: ...
    def exception(self, event: str, **fields: Any) -> None: ...


class Context(Protocol):
    """What a strategy sees and does. Implemented by the engine (live, paper and replay alike)."""

    name: str  # the strategy's name: its YAML file's stem

    @property
    def log(self) -> Logger:
        """A logger bound to `strategy=name`."""

    @property
    def now(self) -> datetime:
        """Market time (UTC)."""

    @property
    def location(self) -> Location:
        """The strategy file's location: where its orders are placed unless `place` says
        otherwise, and the country whose book entries they can meet."""

    @property
    def book(self) -> OrderBook | None:
        """The newest order book, None while unknown (before the first, or after a drop)."""

    @property
    def trades(self) -> Sequence[Ticker]:
        """Recent market trades (`/ticker`), oldest first."""

    @property
    def orders(self) -> Sequence[OwnOrder]:
        """This strategy's live orders (pending, open or unknown), oldest first."""

    def position(self, window: Window) -> Position:
        """This strategy's position in `window`."""

    def deliverable(
        self, windows: Sequence[Window], sites: Sequence[str] | None = None
    ) -> list[Deliverable] | None:
        """What the pool of `sites` (default: the strategy's location's) can still deliver as a
        reduction in each window: its assets' capacity, what is committed, and what a sell may
        still take within the availability limit (`available_w`, after other windows'
        commitments take their energy). None when flexbot knows no assets (no `assets`
        section): a fixed capacity is then the strategy's own to choose."""

    async def place(
        self,
        side: Side,
        window: Window,
        *,
        power_w: Decimal,
        price: Decimal,
        expiry: datetime | None = None,
        location: Location | None = None,
        baseline: MeterReading | None = None,
    ) -> OwnOrder:
        """Submit an order through the risk checks: `power_w` in W, `price` in €/kWh, by name
        (two Decimals side by side are too easy to swap). Returns its state: OPEN (placed),
        REJECTED (with `reason`) or UNKNOWN (sent, outcome unknown: do not place it again;
        `on_order` follows). Expiry defaults to the engine's lead before the window's start; the
        location to the strategy's configured one. Never raises for a refusal."""

    async def cancel(self, order: OwnOrder | str) -> OwnOrder:
        """Cancel one of this strategy's orders (by the object or its client id)."""

    async def cancel_all(self) -> int:
        """Cancel every live order of this strategy; returns how many were asked to cancel."""


class Strategy(Generic[P]):
    """Subclass as `Strategy[MyParams]`, set `version`, override the callbacks you need.

    The params class is taken from the type argument. Setting `Params = MyParams` in the class
    body does as well (for a class that is not generic); both at once must agree. A concrete
    strategy without either is an error when its class is made; a class still generic in its
    params (`class Base(Strategy[P])`) is a base for strategies, not one."""

    Params: ClassVar[type[Any]]  # the params class, resolved when the subclass is made
    version: ClassVar[str] = "0"
    timer: ClassVar[Timer | None] = None  # the default schedule of `on_timer`; YAML may set one

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("Params")
        inferred = _params_argument(cls)
        if declared is not None and inferred is not None and declared is not inferred:
            raise TypeError(
                f"{cls.__qualname__}: Params = {declared.__qualname__} but "
                f"Strategy[{inferred.__qualname__}]: name the params class once, as the type "
                "argument"
            )
        chosen = declared if declared is not None else inferred
        if chosen is not None:
            cls.Params = chosen
            return
        if hasattr(cls, "Params") or cls.__dict__.get("__parameters__"):
            return  # inherited from a concrete strategy, or still generic: a base class
        raise TypeError(
            f"{cls.__qualname__} does not say its params class: subclass "
            f"Strategy[MyParams] (an attrs class), or Strategy[NoParams] for none"
        )

    def __init__(self, params: P) -> None:
        self.params = params

    async def on_start(self, ctx: Context) -> None:
        """Once at start (and after each restart), before any other callback."""

    async def on_stop(self, ctx: Context) -> None:
        """Once when the engine stops the strategy (not after a failure)."""

    async def on_book(self, ctx: Context, book: OrderBook) -> None:
        """A new order book (full snapshot)."""

    async def on_ticker(self, ctx: Context, trade: Ticker) -> None:
        """A trade on the market (anyone's)."""

    async def on_expired(self, ctx: Context, order: ExpiredOrder) -> None:
        """An order (anyone's) left the book at its expiry time."""

    async def on_order(self, ctx: Context, order: OwnOrder) -> None:
        """One of this strategy's orders changed: placed, resolved, filled, cancelled, expired."""

    async def on_contract(self, ctx: Context, contract: Contract, order: OwnOrder) -> None:
        """A contract of one of this strategy's orders was made or changed status."""

    async def on_timer(self, ctx: Context) -> None:
        """The strategy's schedule fired (see `timer`)."""

    async def on_reload(self, ctx: Context, old_params: P) -> None:
        """New params were loaded (SIGHUP); `self.params` already holds them."""

    def save_state(self) -> State | None:
        """What to keep across restarts, as JSON data (a mapping of str to None, bool, int, float,
        str, lists and mappings), or None (the default) to keep nothing. Called after every
        callback: keep it cheap, and make equal states equal (sort what comes from a set), since
        it is written only when its JSON changed. A state that is not JSON is logged
        (`strategy.state_unsaved`) and the previous one stays saved."""
        return None

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Take back the state last saved (by this strategy's name), in a new instance, before
        `on_start`. Raise (anything) if it does not fit, say after a change of the code: it is
        logged (`strategy.state_unreadable`) and the strategy starts fresh, as a new instance."""


def _params_argument(cls: type) -> type | None:
    """The params class given as the type argument of a generic strategy base in `cls`'s own
    bases (`class S(Strategy[SParams])`), or None (none given, `Any`, or a type variable)."""
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin = typing.get_origin(base)
        if not (isinstance(origin, type) and issubclass(origin, Strategy)):
            continue
        args = typing.get_args(base)
        if len(args) != 1 or args[0] is Any or isinstance(args[0], TypeVar):
            continue
        if not isinstance(args[0], type):
            raise TypeError(
                f"{cls.__qualname__}: Strategy[{args[0]!r}]: the type argument must be the "
                "params class itself (not a string or an alias)"
            )
        return args[0]
    return None


# --- helpers for strategies ---------------------------------------------------------------------


def _same_market(entry: BookEntry, window: Window, country: str) -> bool:
    if (entry.delivery_start, entry.delivery_end) != (window.start, window.end):
        return False
    return rules.countries_meet(country, entry.location.country_code)


def bids_in(book: OrderBook, window: Window, country: str = "") -> list[BookEntry]:
    """The bids a sell in `window` (and `country`, "" for any) could meet, best first."""
    return [e for e in book.flat_bids() if _same_market(e, window, country)]


def asks_in(book: OrderBook, window: Window, country: str = "") -> list[BookEntry]:
    """The asks a buy in `window` could meet, best (cheapest) first."""
    return [e for e in book.flat_asks() if _same_market(e, window, country)]


def flat_baseline(window: Window, power_w: Decimal, *, created_at: datetime) -> MeterReading:
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
