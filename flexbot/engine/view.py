"""The market as the strategies see it: the newest book (without our own orders) and last trades.

A strategy must not trade with its own account (the market refuses self-trades, and an order of
another of our strategies is not liquidity), so the book handed to strategies has the account's
own live orders taken out. Book entries carry no order id: an entry is ours when side, price,
window and location match one of our live orders and its power is that order's remaining power;
each of our orders removes at most one entry.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from flexbot import model
from flexbot.trading import OwnOrder

EntryKey = tuple[str, Decimal, Decimal, datetime, datetime, str, tuple[str | None, ...]]


def _key(
    side: str, power: Decimal, price: Decimal, thing: model.BookEntry | model.OrderRequest
) -> EntryKey:
    location = thing.location
    return (
        side,
        power,
        price,
        thing.delivery_start,
        thing.delivery_end,
        location.country_code,
        tuple(sorted(i or "" for i in location.location_id)),
    )


def without_own(book: model.OrderBook, own: Iterable[OwnOrder]) -> model.OrderBook:
    """`book` without the entries of our own live orders."""
    mine: Counter[EntryKey] = Counter()
    for order in own:
        if order.dry_run or order.remaining_power_w <= 0:
            continue
        mine[_key(str(order.side), order.remaining_power_w, order.price, order.request)] += 1
    if not mine:
        return book

    def keep(entries: tuple[model.BookEntry, ...]) -> tuple[model.BookEntry, ...]:
        kept = []
        for entry in entries:
            key = _key(str(entry.side), entry.power, entry.price, entry)
            if mine[key] > 0:
                mine[key] -= 1
            else:
                kept.append(entry)
        return tuple(kept)

    return model.OrderBook(
        bids={k: keep(v) for k, v in book.bids.items()},
        asks={k: keep(v) for k, v in book.asks.items()},
    )


class MarketView:
    def __init__(self, trades_kept: int) -> None:
        self.book: model.OrderBook | None = None  # without our own orders
        self.trades: deque[model.Ticker] = deque(maxlen=trades_kept)
