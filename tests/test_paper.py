"""The paper broker's fill model (`flexbot.engine.paper`) and `without_own` (`flexbot.engine.view`).

The fill model is checked round by round against its written rules: a test-side ledger of the
liquidity taken from each book entry (kept while the entry stays in the book, forgotten when it
leaves) says what each fill may take, and after every round no open paper order may have been left
with a fill it could have made. The broker is spied on (`_fill`) to learn which entry each fill
took: the market's contract does not say.

The generators are local: a few windows, countries, prices and powers, so that matches, country
clashes, sells too large for a bid and identical entries all happen often.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import attrs
import pytest
import trio
from hypothesis import event, given, settings
from hypothesis import strategies as st

from flexbot import model, rules
from flexbot.engine.paper import PaperBroker
from flexbot.engine.view import without_own
from flexbot.market.errors import Conflict, NotFound
from flexbot.strategy import IntentState, OwnOrder

T = TypeVar("T")
S = IntentState
Side = model.Side

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
QUARTER = timedelta(minutes=15)
NOW = T0 - timedelta(hours=1)
WINDOWS = ((T0, T0 + QUARTER), (T0 + QUARTER, T0 + 2 * QUARTER), (T0, T0 + 2 * QUARTER))
COUNTRIES = ("", "DE", "AT")
LOCATIONS = tuple(
    model.Location(ids, country) for country in COUNTRIES for ids in ((), ("site-1",))
)
PRICES = tuple(Decimal(p) for p in ("0.10", "0.15", "0.2", "0.25"))
BOOK_POWERS = tuple(Decimal(p) for p in ("500", "1000", "2500"))
ORDER_POWERS = tuple(Decimal(p) for p in ("500", "1000", "1500", "2500", "4000"))
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None)


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def main() -> T:
        return await coro

    return trio.run(main)


class Clock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@attrs.frozen
class Fill:
    order_id: str
    request: model.OrderRequest
    entry: model.BookEntry
    power: Decimal
    filled_before: Decimal


class SpyBroker(PaperBroker):
    """A paper broker that records which book entry each fill took."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.fills: list[Fill] = []

    def _fill(self, paper: Any, entry: model.BookEntry, power: Decimal) -> list[model.Message]:
        order = paper.order
        self.fills.append(Fill(order.order_id, paper.request, entry, power, order.filled_power))
        return super()._fill(paper, entry, power)


# --- generators --------------------------------------------------------------------------------


def entries(side: Side, powers: Sequence[Decimal] = BOOK_POWERS) -> st.SearchStrategy[Any]:
    @st.composite
    def entry(draw: st.DrawFn) -> model.BookEntry:
        start, end = draw(st.sampled_from(WINDOWS))
        return model.BookEntry(
            side=side,
            power=draw(st.sampled_from(powers)),
            price=draw(st.sampled_from(PRICES)),
            delivery_start=start,
            delivery_end=end,
            location=draw(st.sampled_from(LOCATIONS)),
        )

    return entry()


any_entry = st.one_of(entries(Side.BUY), entries(Side.SELL))


def book_of(pool: Sequence[model.BookEntry]) -> model.OrderBook:
    """The book of `pool`'s entries, in two groups a side (group keys are opaque)."""
    bids: dict[str, list[model.BookEntry]] = {}
    asks: dict[str, list[model.BookEntry]] = {}
    for n, entry in enumerate(pool):
        sides = bids if entry.side == Side.BUY else asks
        sides.setdefault(f"g{n % 2}", []).append(entry)
    return model.OrderBook(
        bids={k: tuple(v) for k, v in bids.items()}, asks={k: tuple(v) for k, v in asks.items()}
    )


@st.composite
def paper_requests(draw: st.DrawFn) -> model.OrderRequest:
    start, end = draw(st.sampled_from(WINDOWS))
    return model.OrderRequest(
        side=draw(st.sampled_from(list(Side))),
        power=draw(st.sampled_from(ORDER_POWERS)),
        price=draw(st.sampled_from(PRICES)),
        delivery_start=start,
        delivery_end=end,
        expiry_time=start - timedelta(minutes=5),
        location=draw(st.sampled_from(LOCATIONS)),
    )


@st.composite
def aimed_requests(draw: st.DrawFn, pool: Sequence[model.BookEntry]) -> model.OrderRequest:
    """A paper order of the other side in the window and country of one of `pool`'s entries."""
    entry = draw(st.sampled_from(pool))
    return model.OrderRequest(
        side=Side(entry.side).opposite,
        power=draw(st.sampled_from(ORDER_POWERS)),
        price=draw(st.sampled_from(PRICES)),
        delivery_start=entry.delivery_start,
        delivery_end=entry.delivery_end,
        expiry_time=entry.delivery_start - timedelta(minutes=5),
        location=entry.location,
    )


@attrs.frozen
class Round:
    present: frozenset[int]  # which of the pool's entries are in this round's book
    orders: tuple[tuple[model.OrderRequest, bool], ...]  # new paper orders, filled at once?


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[model.BookEntry], list[Round]]:
    pool = draw(st.lists(any_entry, min_size=1, max_size=8))
    # Identical entries (same key) sometimes, so that taken liquidity is shared.
    if draw(st.booleans()):
        pool.append(draw(st.sampled_from(pool)))
    indices = range(len(pool))
    rounds = draw(
        st.lists(
            st.builds(
                Round,
                present=st.one_of(
                    st.just(frozenset(indices)), st.frozensets(st.sampled_from(indices))
                ),
                orders=st.lists(
                    st.tuples(st.one_of(paper_requests(), aimed_requests(pool)), st.booleans()),
                    max_size=3,
                ).map(tuple),
            ),
            min_size=1,
            max_size=4,
        )
    )
    return pool, rounds


# --- the fill model ----------------------------------------------------------------------------

EntryKey = tuple[Any, ...]


def entry_key(entry: model.BookEntry) -> EntryKey:
    loc = entry.location
    return (
        str(entry.side),
        entry.price,
        entry.power,
        entry.delivery_start,
        entry.delivery_end,
        loc.country_code,
        loc.location_id,
    )


def same_market(request: model.OrderRequest, entry: model.BookEntry) -> bool:
    ours, theirs = request.location.country_code, entry.location.country_code
    window = (entry.delivery_start, entry.delivery_end) == (
        request.delivery_start,
        request.delivery_end,
    )
    return window and (ours == theirs or not ours or not theirs)


def price_ok(request: model.OrderRequest, entry: model.BookEntry) -> bool:
    if request.side is Side.BUY:
        return entry.price <= request.price
    return entry.price >= request.price


class Ledger:
    """The test's own account of the liquidity taken from each entry still in the book."""

    def __init__(self) -> None:
        self.taken: dict[EntryKey, Decimal] = {}

    def new_book(self, book: model.OrderBook) -> None:
        present = {entry_key(e) for e in (*book.flat_bids(), *book.flat_asks())}
        self.taken = {k: v for k, v in self.taken.items() if k in present}

    def left(self, entry: model.BookEntry) -> Decimal:
        return entry.power - self.taken.get(entry_key(entry), Decimal(0))

    def check(self, fill: Fill, book: model.OrderBook) -> None:
        request, entry = fill.request, fill.entry
        assert same_market(request, entry), fill
        assert price_ok(request, entry), fill
        remaining = request.power - fill.filled_before
        if request.side is Side.BUY:
            assert entry in book.flat_asks(), fill
            assert fill.power == entry.power, "a buy takes whole asks only"
            assert self.left(entry) == entry.power, "an ask already (partly) taken was taken"
            assert remaining >= entry.power, "a buy took more than its remaining power"
        else:
            assert entry in book.flat_bids(), fill
            assert fill.filled_before == 0
            assert fill.power == request.power, "a sell trades whole"
            assert self.left(entry) >= fill.power, "a bid's power was taken twice"
        key = entry_key(entry)
        self.taken[key] = self.taken.get(key, Decimal(0)) + fill.power
        assert self.taken[key] <= entry.power

    def could_fill(
        self, order: model.Order, request: model.OrderRequest, book: model.OrderBook
    ) -> bool:
        remaining = request.power - order.filled_power
        if request.side is Side.BUY:
            return any(
                same_market(request, e)
                and price_ok(request, e)
                and self.left(e) == e.power
                and remaining >= e.power
                for e in book.flat_asks()
            )
        return any(
            same_market(request, e) and price_ok(request, e) and self.left(e) >= remaining
            for e in book.flat_bids()
        )


def check_messages(messages: Sequence[model.Message], fills: Sequence[Fill]) -> None:
    """Each fill is reported as the market would: its contract, then the order's new status."""
    assert len(messages) == 2 * len(fills)
    for n, fill in enumerate(fills):
        contract_message, order_message = messages[2 * n], messages[2 * n + 1]
        assert isinstance(contract_message, model.ContractStatusUpdate)
        assert isinstance(order_message, model.OrderStatusUpdate)
        contract, order = contract_message.data, order_message.data
        assert order.order_id == fill.order_id
        assert contract in order.contracts
        assert contract.price == fill.request.price, "the paper order's own price"
        assert contract.power == fill.power
        assert contract.energy == rules.energy_wh(
            fill.power, fill.request.delivery_start, fill.request.delivery_end
        )
        ours = contract.buy_order_id if fill.request.side is Side.BUY else contract.sell_order_id
        assert ours == fill.order_id
        assert contract.status == model.ContractStatus.CREATED


def check_orders(broker: PaperBroker, requests: dict[str, model.OrderRequest]) -> None:
    for order in run(broker.list_orders()):
        request = requests[order.order_id]
        filled = order.filled_power
        assert filled <= request.power
        assert all(c.price == request.price for c in order.contracts)
        if filled == request.power:
            assert order.status == model.OrderStatus.FILLED
        elif filled > 0:
            assert request.side is Side.BUY, "a sell is all-or-nothing"
            assert order.status == model.OrderStatus.PARTIAL_FILLED
        else:
            assert order.status == model.OrderStatus.MATCHING_ACTIVE


@PROPERTY
@given(scenario=scenarios())
def test_fills_follow_the_fill_model(
    scenario: tuple[list[model.BookEntry], list[Round]],
) -> None:
    pool, rounds = scenario
    broker = SpyBroker(Clock())
    ledger = Ledger()
    requests: dict[str, model.OrderRequest] = {}
    book: model.OrderBook | None = None
    for round_ in rounds:
        for request, at_once in round_.orders:
            order = run(broker.submit_order(request))
            requests[order.order_id] = request
            if at_once:
                seen = len(broker.fills)
                filled = broker.fill_at_once(order.order_id)
                assert (filled is not None) == (len(broker.fills) > seen)
                if book is None:
                    assert filled is None
                for fill in broker.fills[seen:]:
                    assert book is not None
                    ledger.check(fill, book)
                    event("filled at once")
        book = book_of([e for n, e in enumerate(pool) if n in round_.present])
        ledger.new_book(book)
        seen = len(broker.fills)
        messages = broker.match(book)
        fills = broker.fills[seen:]
        for fill in fills:
            ledger.check(fill, book)
            event(f"{fill.request.side} fill")
            if fill.filled_before:
                event("a partly filled buy filled again")
        check_messages(messages, fills)
        check_orders(broker, requests)
        # Nothing was left that the model says it would take.
        for order in broker.open_orders():
            assert not ledger.could_fill(order, requests[order.order_id], book), order


@PROPERTY
@given(data=st.data(), pool=st.lists(any_entry, min_size=1, max_size=6))
def test_the_same_book_twice_never_sells_an_entry_twice(
    data: st.DataObject, pool: list[model.BookEntry]
) -> None:
    requests = data.draw(st.lists(st.one_of(paper_requests(), aimed_requests(pool)), max_size=8))
    book = book_of(pool)
    broker = SpyBroker(Clock())
    half = len(requests) // 2
    for request in requests[:half]:
        run(broker.submit_order(request))
    broker.match(book)
    for request in requests[half:]:
        run(broker.submit_order(request))
    broker.match(book)
    taken: dict[EntryKey, Decimal] = {}
    for fill in broker.fills:
        key = entry_key(fill.entry)
        taken[key] = taken.get(key, Decimal(0)) + fill.power
    for entry in pool:
        assert taken.get(entry_key(entry), Decimal(0)) <= entry.power
    event(f"fills: {min(len(broker.fills), 3)}")


def a_request(side: Side = Side.BUY, **changes: Any) -> model.OrderRequest:
    start, end = WINDOWS[0]
    base = model.OrderRequest(
        side=side,
        power=Decimal(1000),
        price=Decimal("0.2"),
        delivery_start=start,
        delivery_end=end,
        expiry_time=start - timedelta(minutes=5),
        location=model.Location((), "DE"),
    )
    return attrs.evolve(base, **changes)


def an_entry(
    side: Side, power: str = "1000", price: str = "0.2", **changes: Any
) -> model.BookEntry:
    start, end = WINDOWS[0]
    base = model.BookEntry(
        side=side,
        power=Decimal(power),
        price=Decimal(price),
        delivery_start=start,
        delivery_end=end,
        location=model.Location((), "DE"),
    )
    return attrs.evolve(base, **changes)


def test_taken_liquidity_is_forgotten_once_the_entry_leaves_the_book() -> None:
    ask = an_entry(Side.SELL)
    book = book_of([ask])
    broker = PaperBroker(Clock())
    first = run(broker.submit_order(a_request()))
    assert len(broker.match(book)) == 2
    second = run(broker.submit_order(a_request()))
    assert broker.match(book) == []  # the ask is still ours
    assert broker.match(model.OrderBook()) == []  # gone from the book ...
    messages = broker.match(book)  # ... and back: a new entry, free again
    assert len(messages) == 2
    assert run(broker.get_order(first.order_id)).status == model.OrderStatus.FILLED
    assert run(broker.get_order(second.order_id)).status == model.OrderStatus.FILLED


def test_a_buy_takes_whole_asks_best_first_and_stays_partly_filled() -> None:
    asks = [
        an_entry(Side.SELL, "500", "0.15"),
        an_entry(Side.SELL, "2000", "0.1"),  # too big for what is left
        an_entry(Side.SELL, "300", "0.2"),
        an_entry(Side.SELL, "100", "0.25"),  # too dear
        an_entry(Side.SELL, "100", "0.1", location=model.Location((), "AT")),  # another country
        an_entry(Side.SELL, "100", "0.1", delivery_end=WINDOWS[2][1]),  # another window
    ]
    broker = PaperBroker(Clock())
    order = run(broker.submit_order(a_request(power=Decimal(1000))))
    broker.match(book_of(asks))
    got = run(broker.get_order(order.order_id))
    assert [c.power for c in got.contracts] == [Decimal(500), Decimal(300)]
    assert {c.price for c in got.contracts} == {Decimal("0.2")}
    assert got.status == model.OrderStatus.PARTIAL_FILLED


def test_a_sell_needs_a_bid_with_all_its_power() -> None:
    broker = PaperBroker(Clock())
    order = run(broker.submit_order(a_request(Side.SELL, power=Decimal(1000))))
    small = an_entry(Side.BUY, "999", "0.3")
    assert broker.match(book_of([small])) == []
    big = an_entry(Side.BUY, "1500", "0.25", location=model.Location(("x",), ""))
    messages = broker.match(book_of([small, big]))
    got = run(broker.get_order(order.order_id))
    assert got.status == model.OrderStatus.FILLED
    assert [(c.power, c.price) for c in got.contracts] == [(Decimal(1000), Decimal("0.2"))]
    assert messages[-1] == model.OrderStatusUpdate(data=got, name="filled", created_at=NOW)
    # The bid's 500 W left still serve a second sell of 500, but not one of 1000.
    too_big = run(broker.submit_order(a_request(Side.SELL, power=Decimal(1000))))
    fits = run(broker.submit_order(a_request(Side.SELL, power=Decimal(500))))
    broker.match(book_of([small, big]))
    assert run(broker.get_order(too_big.order_id)).status == model.OrderStatus.MATCHING_ACTIVE
    assert run(broker.get_order(fits.order_id)).status == model.OrderStatus.FILLED


# --- fill_at_once, expire, cancel ---------------------------------------------------------------


def test_fill_at_once_trades_a_new_order_with_the_newest_book() -> None:
    broker = PaperBroker(Clock())
    cheap = run(broker.submit_order(a_request(price=Decimal("0.1"))))
    assert broker.fill_at_once(cheap.order_id) is None  # no book yet
    book = book_of([an_entry(Side.SELL, "400"), an_entry(Side.SELL, "600", "0.3")])
    assert broker.match(book) == []  # too dear for it
    late = run(broker.submit_order(a_request(price=Decimal("0.3"))))
    filled = broker.fill_at_once(late.order_id)
    assert filled is not None
    assert filled.status == model.OrderStatus.FILLED
    assert sorted(c.power for c in filled.contracts) == [Decimal(400), Decimal(600)]
    assert run(broker.get_order(late.order_id)) == filled
    # What it took stays taken for the next order and the next snapshot of the same book.
    third = run(broker.submit_order(a_request(price=Decimal("0.3"))))
    assert broker.fill_at_once(third.order_id) is None
    assert broker.match(book) == []
    unmatched = run(broker.submit_order(a_request(Side.SELL)))
    assert broker.fill_at_once(unmatched.order_id) is None


def test_expire_expires_open_orders_at_their_expiry_once() -> None:
    clock = Clock()
    broker = PaperBroker(clock)
    start = WINDOWS[0][0]
    early = run(broker.submit_order(a_request(expiry_time=start - timedelta(minutes=30))))
    late = run(broker.submit_order(a_request(expiry_time=start - timedelta(minutes=5))))
    filled = run(broker.submit_order(a_request(Side.SELL, expiry_time=start - QUARTER)))
    broker.match(book_of([an_entry(Side.BUY)]))
    cancelled = run(broker.submit_order(a_request(price=Decimal("0.1"))))
    run(broker.cancel_order(cancelled.order_id))
    assert broker.expire() == []
    clock.now = start - timedelta(minutes=30)  # at its expiry: expired
    [message] = broker.expire()
    assert isinstance(message, model.OrderStatusUpdate)
    assert message.data.order_id == early.order_id
    assert message.data.status == model.OrderStatus.EXPIRED
    assert message.data.updated_at == clock.now
    assert broker.expire() == []
    clock.now = start
    [message] = broker.expire()
    assert isinstance(message, model.OrderStatusUpdate)
    assert message.data.order_id == late.order_id
    assert broker.expire() == []
    assert run(broker.get_order(filled.order_id)).status == model.OrderStatus.FILLED
    assert run(broker.get_order(cancelled.order_id)).status == model.OrderStatus.CANCELLED
    assert broker.open_orders() == []
    # An expired order no longer trades.
    assert broker.match(book_of([an_entry(Side.SELL)])) == []


def test_cancel() -> None:
    clock = Clock()
    broker = PaperBroker(clock)
    order = run(broker.submit_order(a_request()))
    clock.now = NOW + timedelta(seconds=3)
    cancelled = run(broker.cancel_order(order.order_id))
    assert cancelled is not None
    assert cancelled.status == model.OrderStatus.CANCELLED
    assert cancelled.updated_at == clock.now
    with pytest.raises(Conflict):
        run(broker.cancel_order(order.order_id))
    filled = run(broker.submit_order(a_request()))
    broker.match(book_of([an_entry(Side.SELL)]))
    with pytest.raises(Conflict):
        run(broker.cancel_order(filled.order_id))
    with pytest.raises(NotFound):
        run(broker.cancel_order("paper-999"))
    with pytest.raises(NotFound):
        run(broker.get_order("paper-999"))
    assert broker.match(book_of([an_entry(Side.SELL)])) == []  # a cancelled order never trades


# --- without_own -------------------------------------------------------------------------------


def view_key(side: str, power: Decimal, price: Decimal, thing: Any) -> EntryKey:
    loc = thing.location
    ids = tuple(sorted(i or "" for i in loc.location_id))
    return (side, power, price, thing.delivery_start, thing.delivery_end, loc.country_code, ids)


def own_order(
    request: model.OrderRequest,
    filled: Decimal = Decimal(0),
    state: IntentState = S.OPEN,
    dry_run: bool = False,
) -> OwnOrder:
    order = None
    if filled or state in (S.OPEN, S.DONE):
        contracts: tuple[model.Contract, ...] = ()
        if filled:
            contracts = (
                model.Contract(
                    contract_id="c",
                    buy_order_id="o",
                    sell_order_id="x",
                    power=filled,
                    energy=Decimal(0),
                    price=request.price,
                    delivery_start=request.delivery_start,
                    delivery_end=request.delivery_end,
                    status=model.ContractStatus.CREATED,
                ),
            )
        order = model.Order(
            order_id="o",
            side=request.side,
            power=request.power,
            price=request.price,
            delivery_start=request.delivery_start,
            delivery_end=request.delivery_end,
            status=model.OrderStatus.PARTIAL_FILLED if filled else model.OrderStatus.ACCEPTED,
            contracts=contracts,
        )
    return OwnOrder(
        client_id="c",
        strategy="s",
        request=request,
        state=state,
        order_id=None if order is None else "o",
        order=order,
        dry_run=dry_run,
    )


@st.composite
def own_orders(draw: st.DrawFn, pool: Sequence[model.BookEntry]) -> OwnOrder:
    """Own orders, most of them the very entries of the book (with what filled of them)."""
    state = draw(st.sampled_from([S.OPEN, S.OPEN, S.PENDING, S.UNKNOWN, S.DONE, S.REJECTED]))
    dry_run = draw(st.booleans()) and draw(st.booleans())
    aimed = draw(st.integers(0, 3)) > 0
    if pool and aimed:
        entry = draw(st.sampled_from(pool))
        filled = draw(st.sampled_from([Decimal(0), Decimal(0), Decimal(250)]))
        ids = list(entry.location.location_id)
        if draw(st.booleans()):
            ids.reverse()
        request = model.OrderRequest(
            side=Side(entry.side),
            power=entry.power + filled,
            price=entry.price,
            delivery_start=entry.delivery_start,
            delivery_end=entry.delivery_end,
            expiry_time=entry.delivery_start - QUARTER,
            location=attrs.evolve(entry.location, location_id=tuple(ids)),
        )
        return own_order(request, filled, state, dry_run)
    return own_order(draw(paper_requests()), Decimal(0), state, dry_run)


@st.composite
def books_and_own(draw: st.DrawFn) -> tuple[list[model.BookEntry], list[OwnOrder]]:
    pool = draw(st.lists(any_entry, max_size=10))
    twin = draw(st.booleans())
    if pool and twin:
        pool.append(draw(st.sampled_from(pool)))
    return pool, draw(st.lists(own_orders(pool), max_size=6))


def is_subsequence(small: Sequence[Any], big: Sequence[Any]) -> bool:
    it = iter(big)
    return all(any(x is y for y in it) for x in small)


@PROPERTY
@given(case=books_and_own())
def test_without_own_removes_one_entry_per_own_live_order(
    case: tuple[list[model.BookEntry], list[OwnOrder]],
) -> None:
    pool, own = case
    book = book_of(pool)
    result = without_own(book, own)
    mine: Counter[EntryKey] = Counter(
        view_key(str(o.side), o.power_w - o.filled_power_w, o.price, o.request)
        for o in own
        if o.state in (S.PENDING, S.OPEN, S.UNKNOWN) and not o.dry_run
    )
    before = Counter(view_key(str(e.side), e.power, e.price, e) for e in pool)
    after = Counter(
        view_key(str(e.side), e.power, e.price, e)
        for e in (*result.flat_bids(), *result.flat_asks())
    )
    for k in before:
        assert before[k] - after[k] == min(before[k], mine[k]), k
    event(f"removed {min(sum((before - after).values()), 3)}")
    assert not after - before
    # Nothing else moves: the same groups, each what was left of it, in its order.
    assert set(result.bids) == set(book.bids)
    assert set(result.asks) == set(book.asks)
    for old, new in ((book.bids, result.bids), (book.asks, result.asks)):
        for group, entries_ in old.items():
            assert is_subsequence(new[group], entries_)


@PROPERTY
@given(case=books_and_own())
def test_dry_run_and_finished_own_orders_remove_nothing(
    case: tuple[list[model.BookEntry], list[OwnOrder]],
) -> None:
    pool, own = case
    book = book_of(pool)
    idle = (
        [attrs.evolve(o, dry_run=True) if o.is_live else o for o in own]
        + [attrs.evolve(o, state=S.DONE) for o in own]
        + [attrs.evolve(o, state=S.LAPSED, order=None, order_id=None) for o in own]
    )
    assert without_own(book, idle) == book


def test_without_own_examples() -> None:
    ask = an_entry(Side.SELL)
    twin = an_entry(Side.SELL)
    other = an_entry(Side.SELL, price="0.3")
    bid = an_entry(Side.BUY)
    book = model.OrderBook(bids={"1": (bid,)}, asks={"1": (ask, other), "2": (twin,)})
    mine = own_order(a_request(Side.SELL))
    assert without_own(book, [mine]) == model.OrderBook(
        bids={"1": (bid,)}, asks={"1": (other,), "2": (twin,)}
    )
    assert without_own(book, [mine, mine]) == model.OrderBook(
        bids={"1": (bid,)}, asks={"1": (other,), "2": ()}
    )
    # A partly filled order is in the book with what is left of it.
    partly = own_order(a_request(Side.BUY, power=Decimal(1500)), filled=Decimal(500))
    assert without_own(book, [partly]).bids == {"1": ()}
    whole = own_order(a_request(Side.BUY, power=Decimal(1500)))
    assert without_own(book, [whole]) == book
    # Another window, price, side or country is not ours.
    for changed in (
        a_request(Side.SELL, delivery_end=WINDOWS[2][1]),
        a_request(Side.SELL, price=Decimal("0.25")),
        a_request(Side.BUY, price=Decimal("0.3")),
        a_request(Side.SELL, location=model.Location((), "AT")),
        a_request(Side.SELL, location=model.Location(("site-1",), "DE")),
    ):
        assert without_own(book, [own_order(changed)]) == book, changed
    assert without_own(book, []) is book
    assert without_own(book, [own_order(a_request(Side.SELL), dry_run=True)]) is book
