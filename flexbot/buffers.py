"""Bounded buffers between a writer that must never wait and a slower reader, and bounded memories.

One implementation, `Backlog`, serves every delivery rule of ARCHITECTURE.md, in the market layer
(the feed) and in the engine (each strategy's inbox) alike:

- `Backlog(capacity)`: a FIFO; when full, the oldest item is dropped to make room, and counted
  (ticker trades, expired orders: facts, delivered in order);
- `Backlog(capacity, key=f)`: conflating by key: an item whose key is already waiting replaces the
  waiting one (counted as `replaced`) and joins the back of the line, so the line stays in the
  order of the latest puts and a reader never gets anything older after something newer; only a
  new key at capacity drops the oldest item (a strategy's own-order events: the latest state of
  each order and contract);
- `Conflator()`, the preset `Backlog(1, key=<one key for all>)`: only the newest (order books);
- `DropOldest(n)`, the preset `Backlog(n)`.

`put` is synchronous, so a socket reader or an engine pump never blocks on a reader. A reader
awaits `get()`; a reader of several buffers (an inbox that picks the most urgent first) gives
them one `trio.lowlevel.ParkingLot` (`lot=`), parks on it and polls each with `take_nowait()`.
Every buffer is for one trio run.

The counters are exact, and what the metrics and alarms read (`flexbot_backlog_*`, the
`backlog_full` alarm): `dropped` counts items lost to the cap, `replaced` items superseded by a
newer one of the same key, which carries on what mattered in them. `len()` is the size now.

`BoundedSet` is the same idea for a memory rather than a queue: keys remembered to avoid work
(an outbox key known to be held, an event logged once), the oldest forgotten beyond a capacity,
counted. Forgetting must only ever cost repeated work, never correctness.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, Protocol, TypeVar

import trio

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class Closed(Exception):
    """The buffer was closed and holds nothing more."""


class Bounded(Protocol):
    """What the metrics and the alarms read of any bounded buffer or memory."""

    @property
    def capacity(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    def __len__(self) -> int: ...


class Backlog(Generic[T]):
    def __init__(
        self,
        capacity: int,
        *,
        key: Callable[[T], Hashable] | None = None,
        lot: trio.lowlevel.ParkingLot | None = None,
        on_drop: Callable[[T], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("a buffer holds at least one item")
        self.capacity = capacity
        self._key = key
        self._on_drop = on_drop  # told of each item dropped, after it was counted
        # Keyed by `key(item)`, or by a running number (never conflated) without a key function.
        self._items: OrderedDict[Hashable, T] = OrderedDict()
        self._serial = 0
        self._waiting = lot if lot is not None else trio.lowlevel.ParkingLot()
        self._closed = False
        self.dropped = 0  # lost to the cap
        self.replaced = 0  # superseded by a newer item of the same key before anyone read them

    def put(self, item: T) -> bool:
        """Add `item` (never waits); False when the oldest item had to be dropped to make room."""
        if self._closed:
            raise Closed("put on a closed buffer")
        items = self._items
        kept = True
        if self._key is None:
            self._serial += 1
            key: Hashable = self._serial
        else:
            key = self._key(item)
            if key in items:
                items[key] = item
                items.move_to_end(key)  # the line stays in the order of the latest puts
                self.replaced += 1
                self._waiting.unpark_all()
                return True
        if len(items) >= self.capacity:
            _, oldest = items.popitem(last=False)
            self.dropped += 1
            kept = False
            if self._on_drop is not None:
                self._on_drop(oldest)
        items[key] = item
        self._waiting.unpark_all()
        return kept

    def take_nowait(self) -> T:
        """The oldest item, at once; `trio.WouldBlock` when there is none (`Closed` if closed)."""
        if not self._items:
            if self._closed:
                raise Closed("buffer closed")
            raise trio.WouldBlock
        return self._items.popitem(last=False)[1]

    async def get(self) -> T:
        """The oldest item, waiting for one. No checkpoint when one is waiting."""
        while not self._items:
            if self._closed:
                raise Closed("buffer closed")
            await self._waiting.park()
        return self._items.popitem(last=False)[1]

    def supersede_all(self) -> list[T]:
        """Take every waiting item away because the reader is given something newer that covers
        them (a strategy's resync); counted as replaced. Returns them, oldest first."""
        items = list(self._items.values())
        self._items.clear()
        self.replaced += len(items)
        return items

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        """Refuse further puts; readers get what is left, then `Closed`."""
        self._closed = True
        self._waiting.unpark_all()


def _one_key(_: object) -> Hashable:
    return None


class Conflator(Backlog[T]):
    """Only the newest value: a slow reader gets the latest, never a backlog (order books)."""

    def __init__(self, *, lot: trio.lowlevel.ParkingLot | None = None) -> None:
        super().__init__(1, key=_one_key, lot=lot)


class DropOldest(Backlog[T]):
    """A bounded FIFO that drops the oldest item when full (ticker trades, expired orders)."""

    def __init__(self, capacity: int, *, lot: trio.lowlevel.ParkingLot | None = None) -> None:
        super().__init__(capacity, lot=lot)


class BoundedSet(Generic[K]):
    """A set that remembers at most `capacity` keys: adding one more forgets the one added (or
    re-added) longest ago, counted in `dropped`. `retain` lets go of keys on purpose (uncounted)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a memory holds at least one key")
        self.capacity = capacity
        self._keys: OrderedDict[K, None] = OrderedDict()
        self.dropped = 0

    def add(self, key: K) -> None:
        keys = self._keys
        if key in keys:
            keys.move_to_end(key)
            return
        if len(keys) >= self.capacity:
            keys.popitem(last=False)
            self.dropped += 1
        keys[key] = None

    def discard(self, key: K) -> None:
        self._keys.pop(key, None)

    def retain(self, keep: Callable[[K], bool]) -> int:
        """Forget every key for which `keep` is false; returns how many were forgotten."""
        gone = [key for key in self._keys if not keep(key)]
        for key in gone:
            del self._keys[key]
        return len(gone)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._keys))

    def __len__(self) -> int:
        return len(self._keys)
