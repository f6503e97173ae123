"""The sandbox's matching engine: a continuous double auction, pay-as-bid, price-time priority.

Pure and synchronous: every method takes the market time `now` and returns the events it caused, in
the order they happened, so the engine is deterministic and property-testable; the server turns the
events into WebSocket messages. Requests reach it already validated (`flexbot.rules`).

The rules where the spec is silent (spec §6, all [A]), written down once:

- Matching runs when an order enters the book: on submit, and for a sell when its baseline arrives.
  The order that enters is the *aggressor*; it walks the other side best price first, oldest first.
- A buy and a sell match when bid >= ask, their delivery windows are identical, their countries are
  equal or either is empty, and their owners differ (no self-trade).
- Sells are all-or-nothing: a sell is taken whole by a buy whose remaining power covers it; a sell
  too large for a buy is skipped, not split. Buys fill in parts, one contract per sell they take.
- The contract price is the resting order's price (pay-as-bid for the maker).
- Time priority is the time an order entered the book: a sell waiting for its baseline is not in
  the book and queues from the moment its baseline arrives.
- An order expires at `min(expiry_time, delivery_start - gate_closure_s)`; contracts already made
  survive expiry and cancellation. Expiry happens in `expire_due`, which the market calls before
  every command; even if a caller forgets, an order past its expiry time never trades.

Under these rules the book is never crossed: no two resting orders could still trade together.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import attrs
from attrs import define, frozen

from flexbot import model
from flexbot.model import OrderStatus, Side
from flexbot.rules import energy_wh, may_meet
from flexbot.sandbox.events import (
    BookChanged,
    ContractChanged,
    Event,
    Expired,
    OrderChanged,
    Traded,
)

Window = tuple[datetime, datetime]


class MatchingError(Exception):
    """A request the engine refuses; the server maps each kind to an HTTP status."""


class OrderNotFound(MatchingError):
    """Unknown id, or an order of another user: the two are indistinguishable on purpose."""


class OrderFinal(MatchingError):
    """The order is filled, cancelled or expired; it cannot change any more."""


class NotASell(MatchingError):
    """Baselines and metering belong to sell orders only."""


class BaselineLocked(MatchingError):
    """The order has matched (or ended): its baseline can no longer be replaced."""


@frozen
class MatchingRules:
    gate_closure_s: int = 0


@define(eq=False)
class BookOrder:
    """The engine's mutable record of one order."""

    order_id: str
    owner: str
    request: model.OrderRequest
    status: OrderStatus
    remaining_w: Decimal
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    baseline: model.MeterReading | None
    contract_ids: list[str] = attrs.field(factory=list)
    verification: model.Verification | None = None
    book_seq: int | None = None  # position in time priority while resting in the book

    @property
    def side(self) -> Side:
        return self.request.side

    @property
    def price(self) -> Decimal:
        return self.request.price

    @property
    def window(self) -> Window:
        return (self.request.delivery_start, self.request.delivery_end)

    @property
    def filled_w(self) -> Decimal:
        return self.request.power - self.remaining_w

    @property
    def is_final(self) -> bool:
        return self.status.is_final


def _book_key(order: BookOrder) -> tuple[Decimal, int]:
    assert order.book_seq is not None
    price = -order.price if order.side is Side.BUY else order.price
    return (price, order.book_seq)


class Matcher:
    """Orders, contracts and the book of one sandbox market."""

    def __init__(self, new_id: Callable[[], str], rules: MatchingRules = MatchingRules()) -> None:
        self._new_id = new_id
        self.rules = rules
        self._orders: dict[str, BookOrder] = {}
        self.contracts: dict[str, model.Contract] = {}
        self._contract_parties: dict[str, tuple[str, str]] = {}
        # Resting orders per delivery window and side, each list kept in priority order.
        self._book: dict[Window, dict[Side, list[BookOrder]]] = {}
        self._expiries: list[tuple[datetime, int, str]] = []
        self._seq = 0
        self._group_ids: dict[tuple[Window, str], str] = {}

    # --- queries --------------------------------------------------------------------------------

    def order(self, order_id: str) -> BookOrder:
        """Any user's order, for the market's own bookkeeping (KeyError if unknown)."""
        return self._orders[order_id]

    def get(self, owner: str, order_id: str) -> BookOrder:
        order = self._orders.get(order_id)
        if order is None or order.owner != owner:
            raise OrderNotFound(order_id)
        return order

    def orders(self, owner: str | None = None) -> list[BookOrder]:
        return [o for o in self._orders.values() if owner is None or o.owner == owner]

    def resting(self, side: Side) -> Iterator[BookOrder]:
        """Every resting order of one side, window by window, in priority order."""
        for sides in self._book.values():
            yield from sides[side]

    def parties(self, contract_id: str) -> tuple[str, str]:
        """(buyer, seller) of a contract."""
        return self._contract_parties[contract_id]

    def snapshot(self, order: BookOrder) -> model.Order:
        req = order.request
        return model.Order(
            order_id=order.order_id,
            side=req.side,
            power=req.power,
            price=req.price,
            energy=energy_wh(req.power, req.delivery_start, req.delivery_end),
            delivery_start=req.delivery_start,
            delivery_end=req.delivery_end,
            expiry_time=req.expiry_time,
            location=req.location,
            status=order.status,
            created_at=order.created_at,
            updated_at=order.updated_at,
            baseline=order.baseline,
            verification=order.verification,
            contracts=tuple(self.contracts[c] for c in order.contract_ids),
        )

    def book(self) -> model.OrderBook:
        """The public book in the wire's keyed shape: one opaque group id per (window, country)."""
        bids: dict[str, list[model.BookEntry]] = {}
        asks: dict[str, list[model.BookEntry]] = {}
        for window in sorted(self._book):
            for side, target in ((Side.BUY, bids), (Side.SELL, asks)):
                for order in self._book[window][side]:
                    key = self._group_id(window, order.request.location.country_code)
                    target.setdefault(key, []).append(self._entry(order))
        return model.OrderBook(
            bids={k: tuple(v) for k, v in bids.items()},
            asks={k: tuple(v) for k, v in asks.items()},
        )

    def next_expiry(self) -> datetime | None:
        while self._expiries:
            when, _, order_id = self._expiries[0]
            if not self._orders[order_id].is_final:
                return when
            heapq.heappop(self._expiries)
        return None

    # --- commands -------------------------------------------------------------------------------

    def submit(
        self, owner: str, request: model.OrderRequest, now: datetime
    ) -> tuple[BookOrder, list[Event]]:
        """Accept a validated order, match it, and rest what is left."""
        gate = request.delivery_start - timedelta(seconds=self.rules.gate_closure_s)
        order = BookOrder(
            order_id=self._new_id(),
            owner=owner,
            request=request,
            status=OrderStatus.ACCEPTED,
            remaining_w=request.power,
            created_at=now,
            updated_at=now,
            expires_at=min(request.expiry_time, gate),
            baseline=request.baseline,
        )
        self._orders[order.order_id] = order
        self._seq += 1
        heapq.heappush(self._expiries, (order.expires_at, self._seq, order.order_id))
        events: list[Event] = []
        if order.side is Side.SELL and order.baseline is None:
            self._set_status(order, OrderStatus.AWAITING_BASELINE_DATA, now, events)
        else:
            events.append(OrderChanged(owner, self.snapshot(order)))
            self._activate(order, now, events)
        return order, events

    def cancel(self, owner: str, order_id: str, now: datetime) -> list[Event]:
        order = self.get(owner, order_id)
        if order.is_final:
            raise OrderFinal(order_id)
        events: list[Event] = []
        self._unrest(order, events)
        self._set_status(order, OrderStatus.CANCELLED, now, events)
        return events

    def set_baseline(
        self, owner: str, order_id: str, reading: model.MeterReading, now: datetime
    ) -> list[Event]:
        """A baseline arrives: it completes a waiting sell (which then matches) or replaces the
        baseline of one that has not matched yet."""
        order = self.get(owner, order_id)
        if order.side is not Side.SELL:
            raise NotASell(order_id)
        if order.is_final or order.contract_ids:
            raise BaselineLocked(order_id)
        order.baseline = reading
        order.updated_at = now
        events: list[Event] = []
        if order.status is OrderStatus.AWAITING_BASELINE_DATA:
            self._set_status(order, OrderStatus.ACCEPTED, now, events)
            self._activate(order, now, events)
        return events

    def expire_due(self, now: datetime) -> list[Event]:
        """Expire every live order whose expiry time has come."""
        events: list[Event] = []
        while self._expiries and self._expiries[0][0] <= now:
            _, _, order_id = heapq.heappop(self._expiries)
            order = self._orders[order_id]
            if order.is_final:
                continue
            self._unrest(order, events)
            self._set_status(order, OrderStatus.EXPIRED, now, events)
            req = order.request
            expired = model.ExpiredOrder(
                expired_at=order.expires_at,
                price=req.price,
                delivery_start=req.delivery_start,
                delivery_end=req.delivery_end,
                power=order.remaining_w,
                energy=energy_wh(order.remaining_w, req.delivery_start, req.delivery_end),
                location=req.location,
            )
            events.append(Expired(expired))
        return events

    def update_contract(self, contract: model.Contract) -> ContractChanged:
        """Store a contract's new state (the post-trade lifecycle lives outside matching)."""
        buyer, seller = self._contract_parties[contract.contract_id]  # KeyError: not ours
        self.contracts[contract.contract_id] = contract
        return ContractChanged(buyer, seller, contract)

    # --- internals ------------------------------------------------------------------------------

    def _set_status(
        self, order: BookOrder, status: OrderStatus, now: datetime, events: list[Event]
    ) -> None:
        order.status = status
        order.updated_at = now
        events.append(OrderChanged(order.owner, self.snapshot(order)))

    def _activate(self, order: BookOrder, now: datetime, events: list[Event]) -> None:
        self._set_status(order, OrderStatus.MATCHING_ACTIVE, now, events)
        self._match(order, now, events)
        if not order.is_final:
            self._rest(order, events)

    def _match(self, aggressor: BookOrder, now: datetime, events: list[Event]) -> None:
        sides = self._book.get(aggressor.window)
        if sides is None or aggressor.expires_at <= now:
            return
        for resting in list(sides[aggressor.side.opposite]):
            if aggressor.remaining_w == 0:
                break
            buy, sell = (aggressor, resting) if aggressor.side is Side.BUY else (resting, aggressor)
            if buy.price < sell.price:
                break  # the list is in price order: nothing further can cross
            if buy.owner == sell.owner or resting.expires_at <= now:
                continue
            if not may_meet(buy.request, sell.request):
                continue
            if sell.remaining_w > buy.remaining_w:
                continue  # all-or-nothing sell does not fit this buy
            self._trade(buy, sell, resting.price, now, events)

    def _trade(
        self,
        buy: BookOrder,
        sell: BookOrder,
        price: Decimal,
        now: datetime,
        events: list[Event],
    ) -> None:
        power = sell.remaining_w
        start, end = buy.window
        contract = model.Contract(
            contract_id=self._new_id(),
            buy_order_id=buy.order_id,
            sell_order_id=sell.order_id,
            power=power,
            energy=energy_wh(power, start, end),
            price=price,
            delivery_start=start,
            delivery_end=end,
            status=model.ContractStatus.CREATED,
            created_at=now,
        )
        self.contracts[contract.contract_id] = contract
        self._contract_parties[contract.contract_id] = (buy.owner, sell.owner)
        events.append(ContractChanged(buy.owner, sell.owner, contract))
        for order in (buy, sell):
            order.contract_ids.append(contract.contract_id)
            order.remaining_w -= power
            if order.remaining_w == 0:
                self._unrest(order, events)
                self._set_status(order, OrderStatus.FILLED, now, events)
            else:
                self._set_status(order, OrderStatus.PARTIAL_FILLED, now, events)
        country = sell.request.location.country_code or buy.request.location.country_code
        location = attrs.evolve(sell.request.location, country_code=country)
        ticker = model.Ticker(
            closed_at=now,
            price=price,
            delivery_start=start,
            delivery_end=end,
            power=power,
            energy=contract.energy,
            location=location,
        )
        events.append(Traded(ticker))

    def _rest(self, order: BookOrder, events: list[Event]) -> None:
        self._seq += 1
        order.book_seq = self._seq
        sides = self._book.setdefault(order.window, {Side.BUY: [], Side.SELL: []})
        bisect.insort(sides[order.side], order, key=_book_key)
        events.append(BookChanged())

    def _unrest(self, order: BookOrder, events: list[Event]) -> None:
        if order.book_seq is None:
            return
        sides = self._book[order.window]
        sides[order.side].remove(order)
        order.book_seq = None
        if not sides[Side.BUY] and not sides[Side.SELL]:
            del self._book[order.window]
        events.append(BookChanged())

    def _group_id(self, window: Window, country: str) -> str:
        key = (window, country)
        group = self._group_ids.get(key)
        if group is None:
            group = self._group_ids[key] = str(100 + len(self._group_ids))
        return group

    def _entry(self, order: BookOrder) -> model.BookEntry:
        req = order.request
        return model.BookEntry(
            side=req.side,
            power=order.remaining_w,
            price=req.price,
            delivery_start=req.delivery_start,
            delivery_end=req.delivery_end,
            location=req.location,
            energy=energy_wh(order.remaining_w, req.delivery_start, req.delivery_end),
        )
