"""One strategy in its own task: its inbox, its callbacks, its failures.

A callback that raises (or outlives `callback_timeout_s`) is logged with the strategy's name and
the strategy is restarted: a new instance from the same params, `on_start` again, after a backoff
that doubles from `restart_backoff_s` up to its cap. After `max_failures` failures within
`failure_window_s` it is disabled for the rest of the run: its live orders are cancelled (nobody
manages them any more) and nothing else is touched. Events that arrive meanwhile wait in the inbox
(books conflated, facts bounded, the latest change of each own order), so a restarted strategy
resumes from the present.

Its state (`Strategy.save_state`), where the engine keeps states (`StateKeeper`; a replay does
not): loaded into each new instance before `on_start`, saved after every callback that completed
and changed it (its JSON bytes differ from the last saved), so a SIGKILL loses at most one
callback's change. A failed callback's instance is not saved: the next instance starts from the
state before it. A state that cannot be loaded starts the strategy fresh; one that cannot be saved
leaves the previous one; both are logged, neither is a failure of the strategy.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import trio

from flexbot import logs, model
from flexbot.clock import Clock
from flexbot.engine import states
from flexbot.engine.desk import OrderDesk
from flexbot.engine.inbox import Inbox, Item
from flexbot.engine.loader import StrategySpec
from flexbot.engine.orders import OrderTracker
from flexbot.engine.settings import Supervision
from flexbot.engine.states import StateKeeper
from flexbot.engine.view import MarketView
from flexbot.store import StoreFailed
from flexbot.strategy import API_VERSION, Logger, Strategy
from flexbot.trading import Deliverable, OwnOrder, Position, Window

log = logs.get_logger("flexbot.engine.runner")


class RunnerState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    DISABLED = "disabled"
    STOPPED = "stopped"


class StrategyFailed(Exception):
    pass


class Host(Protocol):
    """What a runner needs of the engine that owns it: where its strategy's orders go (the desk),
    and what its context reads. The engine is one; the runner never imports it (the engine
    imports us)."""

    @property
    def clock(self) -> Clock: ...
    @property
    def view(self) -> MarketView: ...
    @property
    def tracker(self) -> OrderTracker: ...

    @property
    def desk(self) -> OrderDesk: ...


class StrategyRunner:
    def __init__(
        self,
        spec: StrategySpec,
        engine: Host,
        supervision: Supervision,
        fact_capacity: int,
        *,
        states: StateKeeper | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self._engine = engine
        self.supervision = supervision
        self.inbox = Inbox(fact_capacity, tracker=engine.tracker, strategy=spec.name)
        self.log: Logger = logs.get_logger("flexbot.strategy").bind(strategy=spec.name)
        self.context = RunnerContext(self, engine)
        self.strategy: Strategy[Any] = spec.cls(spec.params)
        self._states = states
        self._saved: str | None = None  # the state's JSON as last saved (or loaded)
        self._unsaved: str | None = None  # why the last save failed (logged once per reason)
        self.state = RunnerState.STARTING
        self.failures: list[float] = []  # trio times of recent failures
        self.callbacks = 0
        self._old_params: Any = None
        self._scope = trio.CancelScope()

    @property
    def active(self) -> bool:
        return self.state in (RunnerState.STARTING, RunnerState.RUNNING, RunnerState.RESTARTING)

    async def run(self) -> None:
        """Run until cancelled, disabled or stopped (`stop`)."""
        with self._scope:
            await self._run()

    async def _run(self) -> None:
        while True:
            try:
                restored = await self._load_state()
                await self._call("on_start", self.strategy.on_start, self.context)
                self.state = RunnerState.RUNNING
                self.log.info(
                    "strategy.started",
                    version=self.spec.version,
                    api_version=API_VERSION,
                    restored_state=restored,
                )
                while True:
                    item = await self.inbox.next()
                    await self._dispatch(item)
            except StrategyFailed:
                pass
            if self._too_many_failures():
                await self._disable()
                return
            delay = self.supervision.backoff.ceiling(len(self.failures) - 1)
            self.state = RunnerState.RESTARTING
            self.log.warning("strategy.restarting", delay_s=delay, failures=len(self.failures))
            await trio.sleep(delay)
            self.strategy = self.spec.cls(self.spec.params)

    async def stop(self, timeout_s: float) -> None:
        """End the strategy's task (no callback runs after this), then let it say goodbye
        (`on_stop`) and save its state, within `timeout_s`."""
        self._scope.cancel()
        running = self.state is RunnerState.RUNNING
        if self.state is not RunnerState.DISABLED:
            self.state = RunnerState.STOPPED
        if running:
            with trio.move_on_after(timeout_s), contextlib.suppress(StrategyFailed):
                await self._call("on_stop", self.strategy.on_stop, self.context)

    def reload(self, spec: StrategySpec) -> None:
        """New params (and limits) from a config reload; `on_reload` runs in the strategy's task."""
        self._old_params = self.spec.params
        self.spec = spec
        self.strategy.params = spec.params
        self.inbox.put_reload()

    async def _dispatch(self, item: Item) -> None:
        strategy, ctx = self.strategy, self.context
        if item.kind == "order":
            assert item.change is not None
            change = item.change
            if change.contract is not None:
                await self._call(
                    "on_contract", strategy.on_contract, ctx, change.contract, change.order
                )
            else:
                await self._call("on_order", strategy.on_order, ctx, change.order)
        elif item.kind == "book":
            assert item.book is not None
            await self._call("on_book", strategy.on_book, ctx, item.book)
        elif item.kind == "fact":
            if isinstance(item.fact, model.Ticker):
                await self._call("on_ticker", strategy.on_ticker, ctx, item.fact)
            elif isinstance(item.fact, model.ExpiredOrder):
                await self._call("on_expired", strategy.on_expired, ctx, item.fact)
        elif item.kind == "timer":
            await self._call("on_timer", strategy.on_timer, ctx)
        elif item.kind == "reload":
            await self._call("on_reload", strategy.on_reload, ctx, self._old_params)

    async def _call(self, name: str, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        self.callbacks += 1
        try:
            with trio.fail_after(self.supervision.callback_timeout_s):
                await fn(*args)
        except trio.TooSlowError:
            self._failed(name, f"took longer than {self.supervision.callback_timeout_s} s")
        except StoreFailed:
            raise  # the daemon's fault, not the strategy's: it halts trading (flexbot.daemon)
        except Exception as exc:
            self._failed(name, f"{type(exc).__name__}: {exc}", exc)
        await self._save_state()

    # --- the strategy's state -------------------------------------------------------------------

    async def _load_state(self) -> bool:
        """Hand the saved state to the new instance; True if there was one and it was taken. A
        state it cannot take is logged and the strategy starts fresh (a new instance again: the
        failed `load_state` may have taken half of it)."""
        if self._states is None:
            return False
        text = await self._states.load(self.name)  # a StoreFailed halts the daemon
        self._saved = text
        if text is None:
            return False
        try:
            self.strategy.load_state(states.decode(text))
        except Exception as exc:
            self.log.warning("strategy.state_unreadable", reason=_reason(exc), exc_info=exc)
            self.strategy = self.spec.cls(self.spec.params)
            return False
        return True

    async def _save_state(self) -> None:
        """Save the strategy's state if it changed since the last save (by its JSON bytes)."""
        if self._states is None:
            return
        try:
            state = self.strategy.save_state()
            if state is None:
                return
            text = states.encode(state)
        except Exception as exc:
            self._not_saved(_reason(exc), exc)
            return
        if text == self._saved:
            return
        try:
            await self._states.save(self.name, text, self._engine.clock.now())
        except StoreFailed:
            raise
        except Exception as exc:
            self._not_saved(_reason(exc), exc)
            return
        self._saved = text
        self._unsaved = None

    def _not_saved(self, reason: str, exc: BaseException) -> None:
        if reason != self._unsaved:  # not again at every callback while it stays so
            self.log.warning("strategy.state_unsaved", reason=reason, exc_info=exc)
        self._unsaved = reason

    def _failed(self, callback: str, reason: str, exc: BaseException | None = None) -> None:
        self.failures.append(trio.current_time())
        self.log.error(
            "strategy.failed",
            callback=callback,
            reason=reason[:500],
            failures=len(self.failures),
            exc_info=exc,
        )
        raise StrategyFailed(reason)

    def _too_many_failures(self) -> bool:
        horizon = trio.current_time() - self.supervision.failure_window_s
        self.failures = [t for t in self.failures if t > horizon]
        return len(self.failures) >= self.supervision.max_failures

    async def _disable(self) -> None:
        self.state = RunnerState.DISABLED
        live = await self._engine.desk.cancel_all(self.name)
        self.log.error(
            "strategy.disabled",
            failures=len(self.failures),
            window_s=self.supervision.failure_window_s,
            cancelled=live,
        )


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


class RunnerContext:
    """The `flexbot.strategy.Context` of one strategy."""

    def __init__(self, runner: StrategyRunner, engine: Host) -> None:
        self._runner = runner
        self._engine = engine
        self.name = runner.name
        self.log: Logger = runner.log

    @property
    def now(self) -> datetime:
        return self._engine.clock.now()

    @property
    def location(self) -> model.Location:
        return self._runner.spec.location

    @property
    def book(self) -> model.OrderBook | None:
        return self._engine.view.book

    @property
    def trades(self) -> Sequence[model.Ticker]:
        return tuple(self._engine.view.trades)

    @property
    def orders(self) -> Sequence[OwnOrder]:
        return [i.snapshot() for i in self._engine.tracker.live(self.name)]

    def position(self, window: Window) -> Position:
        return self._engine.tracker.position(window, strategy=self.name)

    def deliverable(
        self, windows: Sequence[Window], sites: Sequence[str] | None = None
    ) -> list[Deliverable] | None:
        spec = self._runner.spec
        return self._engine.desk.deliverable(
            spec.location.location_id if sites is None else sites,
            windows,
            dry_run=self._engine.desk.settings.dry_run or spec.dry_run,
            ratio=spec.risk.max_commit_ratio,
        )

    async def place(
        self,
        side: model.Side,
        window: Window,
        *,
        power_w: Decimal,
        price: Decimal,
        expiry: datetime | None = None,
        location: model.Location | None = None,
        baseline: model.MeterReading | None = None,
    ) -> OwnOrder:
        return await self._engine.desk.place(
            self._runner,
            side,
            window,
            power_w=power_w,
            price=price,
            expiry=expiry,
            location=location,
            baseline=baseline,
        )

    async def cancel(self, order: OwnOrder | str) -> OwnOrder:
        client_id = order if isinstance(order, str) else order.client_id
        return await self._engine.desk.cancel(client_id, strategy=self.name)

    async def cancel_all(self) -> int:
        return await self._engine.desk.cancel_all(self.name)
