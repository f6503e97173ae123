"""A strategy's state across restarts (`save_state` / `load_state`), kept in a real SQLite store:
it survives a restart of the engine, and a state that cannot be saved or loaded is logged while
the strategy trades on."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from flexbot.clock import MarketClock
from flexbot.engine import states
from flexbot.engine.engine import Engine
from flexbot.engine.orders import OrderTracker
from flexbot.engine.risk import RiskLimits
from flexbot.engine.runner import RunnerState
from flexbot.engine.settings import EngineSettings
from flexbot.engine.states import StoredStates
from flexbot.store import AsyncStore, Store
from flexbot.strategy import Context, Side, State, Strategy, Window
from strategies import seller
from tests.conftest import Sandbox
from tests.engine_harness import BOUND_S, FAST, at, running_engine, spec, until

pytestmark = pytest.mark.anyio

SETTINGS = attrs.evolve(FAST, cancel_on_shutdown=False)


def open_on_market(sandbox: Sandbox, user: str = "alice") -> list[dict[str, Any]]:
    return [
        o
        for o in sandbox.market.introspect_orders()
        if o["owner"] == user and o["status"] not in ("filled", "cancelled", "expired")
    ]


async def saved(store: AsyncStore | None, name: str, wanted: Mapping[str, Any]) -> None:
    """Wait until the store holds `wanted` as the state of strategy `name` (saved in a thread)."""
    assert store is not None
    with trio.fail_after(BOUND_S):
        while True:
            text = await store.run(store.sync.strategy_state, name)
            with contextlib.suppress(TypeError, ValueError):  # still the unreadable one
                if text is not None and states.decode(text) == wanted:
                    return
            await trio.sleep(0.02)


def events(logs: list[dict[str, Any]], name: str, strategy: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name and e.get("strategy") == strategy]


# --- the seller keeps the windows risk refused --------------------------------------------------


def refusing_seller() -> Any:
    """The seller offering in two windows with room for one open order: the second is refused."""
    params = seller.SellerParams(
        floor_price=Decimal("0.15"),
        ask_price=Decimal("0.30"),
        capacity_w=Decimal(3000),
        windows_ahead=2,
        lead_s=0,
    )
    return spec(seller.FlexSeller, params, risk=RiskLimits(max_open_orders=1))


async def test_the_sellers_refused_windows_survive_a_restart_on_the_same_store(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    store = tmp_path / "flexbot.db"
    windows = Window.upcoming(at(sandbox), 2)
    refused = {"refused": [windows[1].isoformat()]}
    with capture_logs() as first:
        async with running_engine(
            sandbox, [refusing_seller()], store_path=store, settings=SETTINGS
        ) as h:
            await until(lambda: len(open_on_market(sandbox)) == 1)
            await saved(h.store, "flexseller", refused)
    assert len(events(first, "risk.rejected", "flexseller")) == 1
    (started,) = events(first, "strategy.started", "flexseller")
    assert started["restored_state"] is False
    # The restarted seller knows the refused window: it does not knock at the limit again.
    with capture_logs() as second:
        async with running_engine(
            sandbox, [refusing_seller()], store_path=store, settings=SETTINGS
        ) as h:
            runner = h.engine.runners["flexseller"]
            await until(lambda: runner.state is RunnerState.RUNNING)
            assert runner.strategy.save_state() == refused
            await until(lambda: runner.callbacks >= 2)  # on_start, then a book: both offer
            await trio.sleep(0.3)  # time for a wrong offer in the refused window to show
    (started,) = events(second, "strategy.started", "flexseller")
    assert started["restored_state"] is True
    assert started["api_version"] >= 2
    assert events(second, "risk.rejected", "flexseller") == []
    assert [o["price"] for o in open_on_market(sandbox)] == [0.30]


# --- what cannot be saved or loaded ---------------------------------------------------------------


@attrs.frozen
class OnceParams:
    power_w: Decimal = Decimal(1000)
    price: Decimal = Decimal("0.20")


class Unsavable(Strategy[OnceParams]):
    """Trades, and keeps a state that is not JSON (a Decimal), then one whose save raises."""

    def __init__(self, params: OnceParams) -> None:
        super().__init__(params)
        self.calls = 0

    async def on_start(self, ctx: Context) -> None:
        window = Window.upcoming(ctx.now, 2)[1]
        if not ctx.orders and ctx.position(window).open_buy_w == 0:
            await ctx.place(Side.BUY, window, power_w=self.params.power_w, price=self.params.price)

    async def on_book(self, ctx: Context, book: Any) -> None:
        self.calls += 1

    def save_state(self) -> State:
        return {"last_price": self.params.price, "calls": self.calls}  # type: ignore[dict-item]


async def test_a_state_that_cannot_be_saved_is_logged_once_and_the_strategy_trades_on(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    with capture_logs() as logs:
        async with running_engine(
            sandbox, [spec(Unsavable)], store_path=tmp_path / "flexbot.db", settings=SETTINGS
        ) as h:
            runner = h.engine.runners["unsavable"]
            await until(lambda: len(open_on_market(sandbox)) == 1)
            await until(lambda: runner.callbacks >= 3)  # on_start, and books after it
            assert runner.state is RunnerState.RUNNING
            assert h.store is not None
            assert await h.store.run(h.store.sync.strategy_state, "unsavable") is None
    (unsaved,) = events(logs, "strategy.state_unsaved", "unsavable")  # not at every callback
    assert "$.last_price" in unsaved["reason"]
    assert "Decimal" in unsaved["reason"]
    assert events(logs, "strategy.failed", "unsavable") == []


@pytest.mark.parametrize(
    "stored",
    ['{"refused": ["not a window"]}', "{not json", '["a list"]', '{"other": 1}'],
    ids=["bad-window", "not-json", "not-an-object", "missing-key"],
)
async def test_a_state_that_cannot_be_loaded_is_logged_and_the_strategy_starts_fresh(
    sandbox: Sandbox, tmp_path: Path, stored: str
) -> None:
    path = tmp_path / "flexbot.db"
    store = Store.open(path)
    store.save_strategy_state("flexseller", stored, "2026-11-23T09:00:00Z")
    store.close()
    params = seller.SellerParams(
        floor_price=Decimal("0.15"),
        ask_price=Decimal("0.30"),
        capacity_w=Decimal(3000),
        windows_ahead=2,
        lead_s=0,
    )
    with capture_logs() as logs:
        async with running_engine(
            sandbox, [spec(seller.FlexSeller, params)], store_path=path, settings=SETTINGS
        ) as h:
            await until(lambda: len(open_on_market(sandbox)) == 2)  # offers in both windows
            await saved(h.store, "flexseller", {"refused": []})  # the fresh state replaced it
    (unreadable,) = events(logs, "strategy.state_unreadable", "flexseller")
    assert unreadable["reason"]
    (started,) = events(logs, "strategy.started", "flexseller")
    assert started["restored_state"] is False


# --- the round trip -------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
json_states = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


def as_read_back(value: Any) -> Any:
    """What JSON gives back: tuples become lists."""
    if isinstance(value, dict):
        return {k: as_read_back(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_read_back(v) for v in value]
    return value


@attrs.frozen
class KeeperParams:
    state: Any = None  # what save_state returns


class Keeper(Strategy[KeeperParams]):
    """Saves `params.state`; records what it was handed back."""

    loaded: Any = None

    def save_state(self) -> State | None:
        return self.params.state  # type: ignore[no-any-return]

    def load_state(self, state: Mapping[str, Any]) -> None:
        Keeper.loaded = state


async def run_keeper_once(store: AsyncStore, state: Any) -> None:
    """One engine run (paper, no market): the keeper starts, its state is saved; then it stops."""
    spec_ = attrs.evolve(spec(Keeper, KeeperParams(state)), name="keeper")
    engine = Engine(
        EngineSettings(dry_run=True),
        [spec_],
        clock=MarketClock(),
        tracker=OrderTracker(None),
        broker=None,
        states=StoredStates(store),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: engine.run(duties=False, task_status=task_status))
        runner = engine.runners["keeper"]
        with trio.fail_after(BOUND_S):
            while runner.state is not RunnerState.RUNNING:  # noqa: ASYNC110 - no event for it
                await trio.sleep(0.001)
        await engine.shutdown()
        nursery.cancel_scope.cancel()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(state=json_states)
def test_any_json_state_comes_back_equal_after_a_restart(tmp_path: Path, state: Any) -> None:
    path = tmp_path / "round-trip.db"

    async def main() -> None:
        store = AsyncStore(Store.open(path))
        try:
            await run_keeper_once(store, state)  # saves it
            Keeper.loaded = None
            await run_keeper_once(store, None)  # loads it, saves nothing
        finally:
            store.sync.close()

    trio.run(main)
    assert Keeper.loaded == as_read_back(state)
    text = states.encode(state)
    assert states.encode(states.decode(text)) == text  # canonical: a loaded state is not rewritten


@pytest.mark.parametrize(
    ("state", "where"),
    [
        ({"price": Decimal("0.2")}, "$.price"),
        ({"at": datetime(2026, 1, 1, tzinfo=UTC)}, "$.at"),
        ({"seen": {1, 2}}, "$.seen"),
        ({"nested": [1, {"x": math.nan}]}, "$.nested[1].x"),
        ({"by_id": {1: "a"}}, "$.by_id"),
    ],
)
def test_a_state_that_is_not_json_data_is_refused_saying_where(state: Any, where: str) -> None:
    with pytest.raises((TypeError, ValueError), match=f"^{re.escape(where)}"):
        states.encode(state)
