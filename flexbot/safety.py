"""What the daemon does when its store fails, or a start-up is cut short: the safety net under the
journal (README "When the store fails").

- In start-up, a store that cannot be written yet (a full disk) is waited for (`usable_store`); one
  that no wait fixes (a damaged file) is raised.
- While trading, the store's first failure ends the trading nursery (`raise_on_failure`), even if
  the task that met it swallowed it; `halt` then cancels every open order of ours while the market
  answers, and says so in one `store.failed` event.
- A stop during start-up still cancels the orders the journal holds as open (`cancel_restored`).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import trio

from flexbot import logs, wire
from flexbot.engine.orders import OrderTracker
from flexbot.market import MarketSession
from flexbot.store import AsyncStore, Store, StoreError, StoreFailed, failure, is_store_fault, lock
from flexbot.systemd import Notifier
from flexbot.trading import IntentState

log = logs.get_logger("flexbot.daemon")

SHUTDOWN_TIMEOUT_S = 20.0  # systemd's default stop timeout is 90 s: stay well inside it


async def usable_store(path: Path, notify: Notifier) -> Store:
    """The store, open and proven writable. A fault that may pass (a full disk, an I/O error) is
    waited out here, in start-up, logged once per attempt: an operator or log rotation may free
    the disk, and a daemon that kept exiting would soon hit systemd's start limit. A fault that
    no wait fixes (a damaged file, a store from a newer flexbot) is raised."""
    delay_s = 1.0
    while True:
        at = wire.format_datetime(datetime.now(UTC))
        try:
            store = await trio.to_thread.run_sync(Store.open, path)
            try:
                await trio.to_thread.run_sync(store.set_flag, lock.STARTED_FLAG, at, at)
                # This run is not ready, nor heard from, yet (status must not take the last
                # run's flags for this one's, whatever the clock did meanwhile).
                for flag in (lock.READY_FLAG, lock.HEARTBEAT_FLAG):
                    await trio.to_thread.run_sync(store.set_flag, flag, None)
            except BaseException:
                store.close()
                raise
        except sqlite3.Error as exc:
            if not is_store_fault(exc):
                raise
            problem = failure(exc, path)
        except StoreError as exc:
            problem = exc
        else:
            return store
        if not problem.retry_may_fix:
            raise problem
        log.error("store.unwritable", reason=str(problem), retry_in_s=delay_s)
        # Type=notify: extend the start timeout while we wait, rather than be killed by it.
        notify.notify(
            "STATUS=waiting for the store to take writes",
            f"EXTEND_TIMEOUT_USEC={int((delay_s + 30) * 1_000_000)}",
        )
        await trio.sleep(delay_s)
        delay_s = min(delay_s * 2, 60.0)


async def raise_on_failure(store: AsyncStore) -> None:
    """The store's first failure ends the trading nursery, even if the task that met it (a
    strategy catching everything around `ctx.place`) swallowed it."""
    await store.failing.wait()
    assert store.failed is not None
    raise store.failed


async def halt(tracker: OrderTracker, market: MarketSession, failure: StoreFailed) -> None:
    """The store failed while trading: nothing more can be journalled, so nothing more may be
    sent but cancels. Every open order of ours is cancelled while the market is reachable (an
    order we could no longer follow must not stay live); the engine and its strategies are
    already stopped. One event says what happened and what was done; the exit status then says
    whether a restart may help (see `flexbot.commands.run`)."""
    live = [i for i in tracker.live() if not i.dry_run]
    ids = [i.order_id for i in live if i.order_id is not None]
    cancelled = await cancel_bounded(market, ids)
    log.critical(
        "store.failed",
        reason=str(failure),
        retry_may_fix=failure.retry_may_fix,
        open_orders=len(ids),
        cancelled=cancelled,
        unresolved=len(live) - len(ids),
        action="trading halted, open orders cancelled; the daemon exits",
    )
    failure.reported = True


async def cancel_restored(store: AsyncStore, market: MarketSession, stop_now: trio.Event) -> None:
    """`cancel_on_shutdown` for a start-up cut short: the orders the journal holds as open are
    cancelled (logging in if the stop came before the login), bounded in time and by a second
    signal. Their news is journalled by the next run's reconciliation."""
    rows = await store.run(store.sync.followed)  # read only: the store may be failing
    ids = [r.order_id for r in rows if r.order_id is not None and not r.dry_run and _live(r.state)]
    if not ids:
        return
    cancelled = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cut_short, stop_now, nursery.cancel_scope)
        cancelled = await cancel_bounded(market, ids)
        nursery.cancel_scope.cancel()
    log.info("daemon.cancelled_on_shutdown", during="start-up", open=len(ids), cancelled=cancelled)


async def cancel_bounded(market: MarketSession, ids: list[str]) -> int:
    """Cancel `ids` within the stop's bound; how many the market confirmed."""
    with trio.move_on_after(SHUTDOWN_TIMEOUT_S):
        results = await market.client.cancel_many(ids)
        return sum(1 for r in results if r.error is None)
    return 0


def _live(state: str) -> bool:
    try:
        return IntentState(state).is_live
    except ValueError:  # a state of a newer flexbot: not ours to judge, leave the order be
        return False


async def cut_short(stop_now: trio.Event, scope: trio.CancelScope) -> None:
    await stop_now.wait()
    scope.cancel()
