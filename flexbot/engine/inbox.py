"""One strategy's inbox: everything it is owed, by the delivery rules of ARCHITECTURE.md.

- own-order changes: a FIFO that never drops (bounded in practice by the number of orders);
- ticker trades and expired orders: a bounded FIFO that drops the oldest, counted;
- the order book: one slot, the newest wins (conflation);
- the timer and a params reload: flags.

`put_*` never waits, so the engine's pumps never block on a slow strategy. `next()` hands out the
most urgent item first: own orders, then a reload, then market facts, then the book, then the timer.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

import trio
from attrs import frozen

from flexbot import model
from flexbot.engine.orders import Change

Fact = model.Ticker | model.ExpiredOrder


@frozen
class Item:
    kind: Literal["order", "reload", "fact", "book", "timer"]
    change: Change | None = None
    fact: Fact | None = None
    book: model.OrderBook | None = None


class Inbox:
    def __init__(self, fact_capacity: int = 256) -> None:
        self._own: deque[Change] = deque()
        self._facts: deque[Fact] = deque()
        self._fact_capacity = fact_capacity
        self._book: model.OrderBook | None = None
        self._timer = False
        self._reload = False
        self._lot = trio.lowlevel.ParkingLot()
        self.dropped_facts = 0
        self.replaced_books = 0

    def put_change(self, change: Change) -> None:
        self._own.append(change)
        self._lot.unpark_all()

    def put_fact(self, fact: Fact) -> bool:
        """False when the oldest fact had to be dropped to make room."""
        kept = True
        if len(self._facts) >= self._fact_capacity:
            self._facts.popleft()
            self.dropped_facts += 1
            kept = False
        self._facts.append(fact)
        self._lot.unpark_all()
        return kept

    def put_book(self, book: model.OrderBook) -> None:
        if self._book is not None:
            self.replaced_books += 1
        self._book = book
        self._lot.unpark_all()

    def put_timer(self) -> None:
        self._timer = True
        self._lot.unpark_all()

    def put_reload(self) -> None:
        self._reload = True
        self._lot.unpark_all()

    def pending(self) -> int:
        return len(self._own) + len(self._facts) + (self._book is not None) + self._timer

    async def next(self) -> Item:
        while True:
            item = self._take()
            if item is not None:
                return item
            await self._lot.park()

    def _take(self) -> Item | None:
        if self._own:
            return Item("order", change=self._own.popleft())
        if self._reload:
            self._reload = False
            return Item("reload")
        if self._facts:
            return Item("fact", fact=self._facts.popleft())
        if self._book is not None:
            book, self._book = self._book, None
            return Item("book", book=book)
        if self._timer:
            self._timer = False
            return Item("timer")
        return None
