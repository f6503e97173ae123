"""Delivery between a socket reader and a slower consumer, by the rules of ARCHITECTURE.md.

- `Conflator`: keeps only the newest value (order book snapshots): a slow reader gets the latest
  book, never a backlog, and the writer never waits.
- `DropOldest`: a bounded FIFO (ticker, expired orders): in order; when full the oldest item is
  dropped and counted, and the writer never waits.

Both are for one trio run; `put` is synchronous, so a socket reader never blocks on a consumer.
`/trade` events are not buffered here: they are never dropped, so they go through a channel whose
reader the socket waits for.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Closed(Exception):
    """The buffer was closed and holds nothing more."""


class Conflator(Generic[T]):
    def __init__(self) -> None:
        self._value: T | None = None
        self._has_value = False
        self._waiting = trio.lowlevel.ParkingLot()
        self._closed = False
        self.replaced = 0  # values overwritten before anyone read them

    def put(self, value: T) -> None:
        if self._closed:
            raise Closed("put on a closed conflator")
        if self._has_value:
            self.replaced += 1
        self._value, self._has_value = value, True
        self._waiting.unpark_all()

    async def get(self) -> T:
        while not self._has_value:
            if self._closed:
                raise Closed("conflator closed")
            await self._waiting.park()
        value = self._value
        self._value, self._has_value = None, False
        return value  # type: ignore[return-value]  # set together with _has_value

    def close(self) -> None:
        self._closed = True
        self._waiting.unpark_all()


class DropOldest(Generic[T]):
    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("a buffer holds at least one item")
        self._items: deque[T] = deque()
        self.maxlen = maxlen
        self._waiting = trio.lowlevel.ParkingLot()
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Add `item`; returns False when the oldest item had to be dropped to make room."""
        if self._closed:
            raise Closed("put on a closed buffer")
        kept = True
        if len(self._items) >= self.maxlen:
            self._items.popleft()
            self.dropped += 1
            kept = False
        self._items.append(item)
        self._waiting.unpark_all()
        return kept

    async def get(self) -> T:
        while not self._items:
            if self._closed:
                raise Closed("buffer closed")
            await self._waiting.park()
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        self._closed = True
        self._waiting.unpark_all()
