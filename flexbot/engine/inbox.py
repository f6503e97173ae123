"""One strategy's inbox: everything it is owed, by the delivery rules of ARCHITECTURE.md.

- own-order changes: conflated per order and contract, bounded, never lost unannounced (below);
- ticker trades and expired orders: a bounded FIFO that drops the oldest, counted;
- the order book: one slot, the newest wins (conflation);
- the timer and a params reload: flags.

The three queues are `flexbot.buffers.Backlog`s (the feed's implementation too) sharing one parking
lot. `put_*` never waits, so the engine's pumps never block on a slow strategy. `next()` hands out
the most urgent item first: own orders, then a reload, then market facts, then the book, then the
timer.

Own-order changes. A strategy's view of its orders is `ctx.orders` and `ctx.position`, read from
the tracker and always current; the changes are the news of it. A slow strategy must neither make
them pile up without bound nor miss how an order ended, so:

1. They are conflated by key, (order, contract) — the contract being the one that changed, if
   any: a change whose key is still waiting replaces the waiting one and joins the back of the
   line. This loses nothing that matters: the latest state of every order and of every contract
   arrives, in the order of their latest changes, so an order's snapshots never go back in time
   (each change carries the whole order as it was then); only a callback for a state already
   superseded is skipped, as a stale book is. A flood about a bounded set of orders
   (reconciliation repeats, a burst of statuses) stays within one entry per order and contract.
2. At `order_capacity` waiting keys, a change of a new key drops the oldest waiting change
   (counted: `flexbot_backlog_dropped_total{backlog="inbox_orders"}`) and makes a *resync* due;
   the dropped change's order is noted (its id only, up to `NOTED_CAPACITY` orders). When the
   strategy next reads its own orders, the waiting changes are superseded by the present:
   `on_order` once for each of its live orders and each order whose changes were dropped or
   waiting, as the tracker has it now (its contracts in `order.order.contracts`), then the
   changes that come after (the present is read from the tracker the inbox is given; without
   one, drops are only counted). The strategy so still learns the final state of every order;
   what a resync skips is the `on_contract` calls of the truncated stretch, whose sum
   `ctx.position` holds. Logged as `strategy.orders_resynced` (at most once per `LOG_EVERY_S`);
   the `backlog_full` alarm rises.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

import trio
from attrs import frozen

from flexbot import logs, model
from flexbot.buffers import Backlog, BoundedSet, Conflator, DropOldest
from flexbot.engine.orders import Change, OrderTracker
from flexbot.trading import OwnOrder

log = logs.get_logger("flexbot.engine.inbox")

Fact = model.Ticker | model.ExpiredOrder
ORDER_CAPACITY = 1024  # own-order changes (distinct orders and contracts) waiting per strategy
NOTED_CAPACITY = 65_536  # ids of orders whose changes were dropped, until the resync
LOG_EVERY_S = 10.0


@frozen
class Item:
    kind: Literal["order", "reload", "fact", "book", "timer"]
    change: Change | None = None
    fact: Fact | None = None
    book: model.OrderBook | None = None


def change_key(change: Change) -> tuple[str, str | None]:
    """Changes of one key supersede each other: one order's status, or one of its contracts."""
    contract = change.contract
    return (change.order.client_id, None if contract is None else contract.contract_id)


class Inbox:
    def __init__(
        self,
        fact_capacity: int = 256,
        *,
        order_capacity: int = ORDER_CAPACITY,
        tracker: OrderTracker | None = None,
        strategy: str = "",
    ) -> None:
        self._lot = trio.lowlevel.ParkingLot()
        self.changes: Backlog[Change] = Backlog(
            order_capacity, key=change_key, lot=self._lot, on_drop=self._truncate
        )
        self.facts: DropOldest[Fact] = DropOldest(fact_capacity, lot=self._lot)
        self._book: Conflator[model.OrderBook] = Conflator(lot=self._lot)
        self._timer = False
        self._reload = False
        # The resync: where the present comes from, and the orders whose changes were dropped.
        self._tracker = tracker
        self._strategy = strategy
        self._truncated: BoundedSet[str] = BoundedSet(NOTED_CAPACITY)
        self._resync_due = False
        self._present: deque[OwnOrder] = deque()
        self.resyncs = 0
        self._unlogged_resyncs = 0
        self._logged_at: float | None = None

    # --- putting (never waits) ------------------------------------------------------------------

    def put_change(self, change: Change) -> bool:
        """False when the oldest waiting change had to be dropped (a resync is then due)."""
        return self.changes.put(change)

    def _truncate(self, dropped: Change) -> None:
        if self._tracker is None:
            return  # no present to resync from (a bare inbox): the drop is only counted
        self._truncated.add(dropped.order.client_id)
        self._resync_due = True

    def put_fact(self, fact: Fact) -> bool:
        """False when the oldest fact had to be dropped to make room."""
        return self.facts.put(fact)

    def put_book(self, book: model.OrderBook) -> None:
        self._book.put(book)

    def put_timer(self) -> None:
        self._timer = True
        self._lot.unpark_all()

    def put_reload(self) -> None:
        self._reload = True
        self._lot.unpark_all()

    # --- counts ---------------------------------------------------------------------------------

    @property
    def dropped_facts(self) -> int:
        return self.facts.dropped

    @property
    def replaced_books(self) -> int:
        return self._book.replaced

    def pending(self) -> int:
        return (
            len(self.changes)
            + len(self._present)
            + self._resync_due
            + len(self.facts)
            + len(self._book)
            + self._timer
        )

    # --- taking ---------------------------------------------------------------------------------

    async def next(self) -> Item:
        while True:
            item = self._take()
            if item is not None:
                return item
            await self._lot.park()

    def _take(self) -> Item | None:
        if self._resync_due:
            self._resync()
        if self._present:
            return Item("order", change=Change(self._present.popleft()))
        if self.changes:
            return Item("order", change=self.changes.take_nowait())
        if self._reload:
            self._reload = False
            return Item("reload")
        if self.facts:
            return Item("fact", fact=self.facts.take_nowait())
        if self._book:
            return Item("book", book=self._book.take_nowait())
        if self._timer:
            self._timer = False
            return Item("timer")
        return None

    def _resync(self) -> None:
        """Replace the waiting changes by the present state of the orders they were about."""
        self._resync_due = False
        self.resyncs += 1
        superseded = self.changes.supersede_all()
        wanted = [
            *(o.client_id for o in self._present),  # of an earlier resync, not all handed out
            *self._truncated,
            *(change.order.client_id for change in superseded),
        ]
        self._truncated.retain(lambda _: False)
        tracker = self._tracker
        assert tracker is not None  # a resync is due only with one
        present = {live.client_id: live.snapshot() for live in tracker.live(self._strategy)}
        for client_id in wanted:
            intent = tracker.get(client_id)
            if intent is not None and client_id not in present:
                present[client_id] = intent.snapshot()
        self._present = deque(present.values())
        self._unlogged_resyncs += 1
        now = trio.current_time()
        if self._logged_at is None or now - self._logged_at >= LOG_EVERY_S:
            log.warning(
                "strategy.orders_resynced",
                strategy=self._strategy,
                orders=len(self._present),
                superseded=len(superseded),
                dropped=self.changes.dropped,
                resyncs=self._unlogged_resyncs,
            )
            self._logged_at, self._unlogged_resyncs = now, 0
