"""The paper broker: orders simulated as if placed, filled against the market's real order book.

Used for `dry_run` (paper trading beside the live market) and by `flexbot replay` (a backtest over a
recording). Nothing is sent. It speaks the market client's order calls, so the engine drives it
exactly as it drives the market, and it reports fills as the market's own `/trade` messages.

The fill model, close to the sandbox's matching rules:
- a paper order may trade with a book entry of the other side in the same window whose country is
  equal or empty on either side;
- a buy takes a whole ask priced at or below it when its remaining power covers the ask (sells are
  all-or-nothing); a sell trades whole with a bid priced at or above it that has the power left;
- the price is the paper order's own (conservative: the market's pay-as-bid against a resting
  order could only be better);
- liquidity a paper order took stays taken while that entry is still in the book, so one entry is
  not sold twice across snapshots;
- a paper order expires at its expiry time (`expire`).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

import attrs
from attrs import define

from flexbot import model, rules
from flexbot.market import Conflict, NotFound

EntryKey = tuple[str, Decimal, Decimal, datetime, datetime, str, tuple[str | None, ...]]


def _key(entry: model.BookEntry) -> EntryKey:
    location = entry.location
    return (
        str(entry.side),
        entry.price,
        entry.power,
        entry.delivery_start,
        entry.delivery_end,
        location.country_code,
        location.location_id,
    )


@define
class _Paper:
    order: model.Order
    request: model.OrderRequest


class PaperBroker:
    def __init__(self, now: Callable[[], datetime], *, prefix: str | None = None) -> None:
        self._now = now
        # A prefix of its own each run: ids never collide with an earlier run's in the journal.
        self._prefix = prefix or f"paper-{uuid.uuid4().hex[:8]}"
        self._ids = itertools.count(1)
        self._orders: dict[str, _Paper] = {}
        self._taken: dict[EntryKey, Decimal] = {}  # power taken from entries still in the book
        self._book: model.OrderBook | None = None  # the newest book, for orders placed into it

    # --- the market client's order calls --------------------------------------------------------

    async def submit_order(self, request: model.OrderRequest) -> model.Order:
        now = self._now()
        order = model.Order(
            order_id=f"{self._prefix}-{next(self._ids)}",
            side=request.side,
            power=request.power,
            price=request.price,
            delivery_start=request.delivery_start,
            delivery_end=request.delivery_end,
            status=model.OrderStatus.MATCHING_ACTIVE,
            energy=rules.energy_wh(request.power, request.delivery_start, request.delivery_end),
            expiry_time=request.expiry_time,
            location=request.location,
            created_at=now,
            updated_at=now,
        )
        self._orders[order.order_id] = _Paper(order, request)
        return order

    async def get_order(self, order_id: str) -> model.Order:
        paper = self._orders.get(order_id)
        if paper is None:
            raise NotFound(f"Order {order_id} not found", status=404)
        return paper.order

    async def list_orders(self) -> list[model.Order]:
        return [p.order for p in self._orders.values()]

    async def cancel_order(self, order_id: str) -> model.Order | None:
        paper = self._orders.get(order_id)
        if paper is None:
            raise NotFound(f"Order {order_id} not found", status=404)
        if paper.order.is_final:
            raise Conflict(f"Order {order_id} is final and cannot change", status=409)
        paper.order = attrs.evolve(
            paper.order, status=model.OrderStatus.CANCELLED, updated_at=self._now()
        )
        return paper.order

    # --- the simulation -------------------------------------------------------------------------

    def open_orders(self) -> list[model.Order]:
        return [p.order for p in self._orders.values() if not p.order.is_final]

    def fill_at_once(self, order_id: str) -> model.Order | None:
        """Trade a just-placed paper order with the newest book, as the market would on entry;
        returns the order when it traded."""
        paper = self._orders[order_id]
        if self._book is None or not self._match_one(paper, self._book):
            return None
        return paper.order

    def match(self, book: model.OrderBook) -> list[model.Message]:
        """Fill paper orders against `book`; returns the `/trade` messages the fills produce."""
        self._book = book
        if not self._orders:
            return []  # nothing on paper (the usual case): no need to look at the book
        present = {_key(e) for e in (*book.flat_bids(), *book.flat_asks())}
        self._taken = {k: v for k, v in self._taken.items() if k in present}
        messages: list[model.Message] = []
        for paper in list(self._orders.values()):
            if not paper.order.is_final:
                messages += self._match_one(paper, book)
        return messages

    def _match_one(self, paper: _Paper, book: model.OrderBook) -> list[model.Message]:
        messages: list[model.Message] = []
        entries = book.flat_asks() if paper.request.side is model.Side.BUY else book.flat_bids()
        for entry in entries:
            power = self._fill_power(paper, entry)
            if power is not None:
                messages.extend(self._fill(paper, entry, power))
                if _is_done(paper):
                    break
        return messages

    def expire(self) -> list[model.Message]:
        now = self._now()
        # Orders whose window has passed and that ended are let go (memory stays bounded).
        self._orders = {
            k: p
            for k, p in self._orders.items()
            if not (p.order.is_final and p.request.delivery_end < now)
        }
        messages: list[model.Message] = []
        for paper in self._orders.values():
            if not paper.order.is_final and paper.request.expiry_time <= now:
                paper.order = attrs.evolve(
                    paper.order, status=model.OrderStatus.EXPIRED, updated_at=now
                )
                messages.append(_order_message(paper.order))
        return messages

    def _fill_power(self, paper: _Paper, entry: model.BookEntry) -> Decimal | None:
        request = paper.request
        if not rules.may_meet(request, entry):
            return None
        available = entry.power - self._taken.get(_key(entry), Decimal(0))
        remaining = request.power - paper.order.filled_power
        if request.side is model.Side.BUY:
            if entry.price > request.price or available < entry.power or remaining < entry.power:
                return None
            return entry.power  # the whole sell
        if entry.price < request.price or available < remaining:
            return None
        return remaining  # our whole sell

    def _fill(self, paper: _Paper, entry: model.BookEntry, power: Decimal) -> list[model.Message]:
        now = self._now()
        key = _key(entry)
        self._taken[key] = self._taken.get(key, Decimal(0)) + power
        request = paper.request
        ours, theirs = paper.order.order_id, f"{self._prefix}-book"
        buy_id, sell_id = (ours, theirs) if request.side is model.Side.BUY else (theirs, ours)
        contract = model.Contract(
            contract_id=f"{self._prefix}-c{next(self._ids)}",
            buy_order_id=buy_id,
            sell_order_id=sell_id,
            power=power,
            energy=rules.energy_wh(power, request.delivery_start, request.delivery_end),
            price=request.price,
            delivery_start=request.delivery_start,
            delivery_end=request.delivery_end,
            status=model.ContractStatus.CREATED,
            created_at=now,
        )
        contracts = (*paper.order.contracts, contract)
        filled = sum((c.power for c in contracts), Decimal(0))
        status = (
            model.OrderStatus.FILLED
            if filled >= request.power
            else model.OrderStatus.PARTIAL_FILLED
        )
        paper.order = attrs.evolve(paper.order, status=status, contracts=contracts, updated_at=now)
        return [
            model.ContractStatusUpdate(data=contract, name=str(contract.status), created_at=now),
            _order_message(paper.order),
        ]


def _is_done(paper: _Paper) -> bool:
    return paper.order.is_final


def _order_message(order: model.Order) -> model.OrderStatusUpdate:
    return model.OrderStatusUpdate(data=order, name=str(order.status), created_at=order.updated_at)
