"""The engine wired to the in-process sandbox, as the daemon wires it, for tests.

`running_engine` connects as one sandbox user (real loopback HTTP and WebSocket), restores the
tracker from a real SQLite store when given one (where the strategies keep their state too), and
runs the feed and the engine until the block ends. `Trader` is another user placing orders through
the real market client: the counterparty.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import trio

from flexbot import model
from flexbot.assets import Fleet
from flexbot.engine.engine import Engine
from flexbot.engine.killswitch import KillSwitch
from flexbot.engine.loader import StrategySpec
from flexbot.engine.orders import OrderTracker
from flexbot.engine.risk import RiskLimits
from flexbot.engine.settings import EngineSettings
from flexbot.engine.states import StoredStates
from flexbot.market.auth import Secret
from flexbot.market.rest import MarketClient
from flexbot.market.session import ConnectionSettings, MarketSession, connect
from flexbot.market.streams import Endpoint, StreamSettings
from flexbot.store import AsyncStore, Store
from flexbot.strategy import Strategy, Window, flat_baseline
from tests.conftest import USERS, Sandbox

LOCATION = model.Location(location_id=("site-1",), country_code="DE")
BOUND_S = 10.0  # the longest any condition may take to come true

FAST = EngineSettings(
    max_failures=3,
    failure_window_s=60,
    restart_backoff_s=0.01,
    restart_backoff_cap_s=0.05,
    resolve_interval_s=0.2,
    not_placed_after_s=0.5,
    kill_switch_poll_s=0.05,
    paper_tick_s=0.05,
)


def spec(
    cls: type[Strategy[Any]], params: Any = None, *, name: str | None = None, **changes: Any
) -> StrategySpec:
    """A strategy spec as a YAML file would give it (location site-1 in DE)."""
    made = StrategySpec(
        name=name or cls.__name__.lower(),
        path=Path(f"{name or cls.__name__.lower()}.yaml"),
        cls=cls,
        params=params if params is not None else cls.Params(),
        location=LOCATION,
    )
    return attrs.evolve(made, **changes)


def connection(sandbox: Sandbox, user: str) -> ConnectionSettings:
    return ConnectionSettings(
        url=sandbox.base_url, username=user, password=Secret(USERS[user]), timeout_s=5.0
    )


@attrs.define
class Harness:
    engine: Engine
    market: MarketSession
    tracker: OrderTracker
    store: AsyncStore | None

    async def orders_on_market(self) -> list[model.Order]:
        return await self.market.client.list_orders()


@asynccontextmanager
async def running_engine(
    sandbox: Sandbox,
    specs: Iterable[StrategySpec],
    *,
    user: str = "alice",
    settings: EngineSettings = FAST,
    limits: RiskLimits = RiskLimits(),
    store_path: Path | None = None,
    kill_switch: Callable[[AsyncStore | None], KillSwitch] | None = None,
    endpoints: tuple[Endpoint, ...] = tuple(Endpoint),
    fleet: Fleet | None = None,
) -> AsyncIterator[Harness]:
    async with connect(connection(sandbox, user)) as market:
        store = AsyncStore(Store.open(store_path)) if store_path is not None else None
        try:
            tracker = await OrderTracker.restore(store) if store else OrderTracker(None)
            streams = StreamSettings(ws_url=market.settings.ws_url, connect_timeout_s=5.0)
            feed = market.feed(orders=tracker, streams=streams, endpoints=endpoints)
            engine = Engine(
                settings,
                specs,
                clock=sandbox.market.clock,
                tracker=tracker,
                broker=market.client,
                limits=limits,
                kill_switch=kill_switch(store) if kill_switch else None,
                states=StoredStates(store) if store is not None else None,
                fleet=fleet,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(feed.run)
                await nursery.start(engine.run, feed)
                yield Harness(engine, market, tracker, store)
                nursery.cancel_scope.cancel()
        finally:
            if store is not None:
                store.sync.close()


@asynccontextmanager
async def trader(sandbox: Sandbox, user: str = "bob") -> AsyncIterator[Trader]:
    async with connect(connection(sandbox, user)) as market:
        yield Trader(market.client, sandbox)


@attrs.define
class Trader:
    """Another market user, placing orders as the test needs them."""

    client: MarketClient
    sandbox: Sandbox

    def window(self, index: int = 1) -> Window:
        """The `index`-th upcoming window (1: the one after the current quarter hour's next)."""
        return Window.upcoming(self.sandbox.market.clock.now(), index + 1)[index]

    async def place(
        self,
        side: model.Side,
        power_w: float,
        price: float,
        window: Window,
        *,
        location: model.Location = LOCATION,
    ) -> model.Order:
        now = self.sandbox.market.clock.now()
        baseline = (
            flat_baseline(window, Decimal(10_000), created_at=now)
            if side is model.Side.SELL
            else None
        )
        request = model.OrderRequest(
            side=side,
            power=Decimal(str(power_w)),
            price=Decimal(str(price)),
            delivery_start=window.start,
            delivery_end=window.end,
            expiry_time=window.start - timedelta(seconds=60),
            location=location,
            baseline=baseline,
        )
        return await self.client.submit_order(request)


async def until(condition: Callable[[], bool], bound: float = BOUND_S, step: float = 0.02) -> None:
    """Wait (polling) until `condition()` holds; fail after `bound` seconds."""
    with trio.fail_after(bound):
        while not condition():  # noqa: ASYNC110 - polls state that has no event
            await trio.sleep(step)


def market_orders(sandbox: Sandbox, user: str) -> list[dict[str, Any]]:
    """The sandbox's own view of a user's orders (the referee)."""
    return [o for o in sandbox.market.introspect_orders() if o.get("owner") == user]


def at(sandbox: Sandbox) -> datetime:
    return sandbox.market.clock.now()
