"""The sandbox matching engine (`flexbot.sandbox.matching`) against its own written rules.

Three layers:

- a stateful test that drives one `Matcher` through random submits, cancels, baselines and clock
  moves, and after every step checks what must always hold (book never crossed, fills add up,
  all-or-nothing sells, pay-the-resting-price, final orders frozen, the spec §5 lifecycle);
- a property test comparing every contract with a brute-force price-time-priority oracle;
- small example tests, one behaviour each.

The generators are local on purpose: a handful of owners, windows, prices and powers, so that ties,
self-trades, country clashes and sells too large for a bid all happen often.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from flexbot import model, rules
from flexbot.model import OrderStatus as S
from flexbot.model import Side
from flexbot.sandbox.events import (
    BookChanged,
    ContractChanged,
    Event,
    Expired,
    OrderChanged,
    Traded,
)
from flexbot.sandbox.matching import (
    BaselineLocked,
    BookOrder,
    Matcher,
    NotASell,
    OrderFinal,
    OrderNotFound,
)

# --- shared vocabulary -------------------------------------------------------------------------

T0 = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
QUARTER = timedelta(minutes=15)
# Delivery far enough ahead that the clock (at most 40 steps of 15 min) never reaches it.
DAY = T0 + timedelta(hours=12)
W1 = (DAY, DAY + QUARTER)
W2 = (DAY, DAY + 2 * QUARTER)  # same start as W1, different end: a different window
W3 = (DAY + QUARTER, DAY + 2 * QUARTER)
WINDOWS = (W1, W2, W3)

OWNERS = ("alice", "bob", "carol")
PRICES = tuple(Decimal(p) for p in ("0.10", "0.15", "0.20", "0.25"))
POWERS = tuple(Decimal(p) for p in ("500", "1000", "2000"))
COUNTRIES = ("", "DE", "FR")
EXPIRY_OFFSETS = tuple(timedelta(minutes=m) for m in (1, 4, 10, 60, 600))
# Weighted draws for the stateful test: most orders meet in one window and one country, so trades
# are common; the rest still exercise the "no match" cases.
WINDOW_DRAW = st.sampled_from((W1, W1, W1, W1, W2, W3))
COUNTRY_DRAW = st.sampled_from(("", "", "", "DE", "FR"))
BUY_POWER_DRAW = st.sampled_from(tuple(Decimal(p) for p in ("500", "1000", "2000", "2000")))
SELL_POWER_DRAW = st.sampled_from(tuple(Decimal(p) for p in ("500", "500", "1000", "2000")))
EXPIRY_DRAW = st.sampled_from((*EXPIRY_OFFSETS, EXPIRY_OFFSETS[-1], EXPIRY_OFFSETS[-1]))
FOREIGN_DRAW = st.sampled_from((False, False, False, True))
CLOCK_STEPS = (timedelta(seconds=30), 2 * MINUTE, 5 * MINUTE, QUARTER)

LIVE_IN_BOOK = (S.MATCHING_ACTIVE, S.PARTIAL_FILLED)
# Spec §5: every status an order may go to from the one it has (None: the first event).
ALLOWED_NEXT: dict[S | None, frozenset[S]] = {
    None: frozenset({S.AWAITING_BASELINE_DATA, S.ACCEPTED}),
    S.AWAITING_BASELINE_DATA: frozenset({S.ACCEPTED, S.CANCELLED, S.EXPIRED}),
    S.ACCEPTED: frozenset({S.MATCHING_ACTIVE, S.CANCELLED, S.EXPIRED}),
    S.MATCHING_ACTIVE: frozenset({S.PARTIAL_FILLED, S.FILLED, S.CANCELLED, S.EXPIRED}),
    S.PARTIAL_FILLED: frozenset({S.PARTIAL_FILLED, S.FILLED, S.CANCELLED, S.EXPIRED}),
    S.FILLED: frozenset(),
    S.CANCELLED: frozenset(),
    S.EXPIRED: frozenset(),
}


def new_matcher() -> Matcher:
    counter = itertools.count(1)
    return Matcher(lambda: f"id{next(counter)}")


def baseline_for(window: tuple[datetime, datetime], kwh: str = "0.25") -> model.MeterReading:
    start, end = window
    return model.MeterReading(
        data_points=(model.DataPoint(timestamp=start + QUARTER, value=Decimal(kwh)),),
        reading_start=start,
        reading_end=end,
    )


def request(
    side: Side,
    power: str | Decimal,
    price: str | Decimal,
    *,
    window: tuple[datetime, datetime] = W1,
    expiry: datetime = T0 + timedelta(hours=1),
    country: str = "",
    baseline: bool = True,
) -> model.OrderRequest:
    """A valid request at T0; a sell carries a baseline unless `baseline=False`."""
    return model.OrderRequest(
        side=side,
        power=Decimal(power),
        price=Decimal(price),
        delivery_start=window[0],
        delivery_end=window[1],
        expiry_time=expiry,
        location=model.Location(country_code=country),
        baseline=baseline_for(window) if side is Side.SELL and baseline else None,
    )


def buy(power: str, price: str, **kw: Any) -> model.OrderRequest:
    return request(Side.BUY, power, price, **kw)


def sell(power: str, price: str, **kw: Any) -> model.OrderRequest:
    return request(Side.SELL, power, price, **kw)


def same_or_any_country(a: model.Location, b: model.Location) -> bool:
    return a.country_code == b.country_code or not a.country_code or not b.country_code


def can_match(b: BookOrder, s: BookOrder) -> bool:
    """The engine's match conditions (module docstring), written out independently."""
    return (
        b.price >= s.price
        and b.window == s.window
        and same_or_any_country(b.request.location, s.request.location)
        and b.owner != s.owner
        and s.remaining_w <= b.remaining_w
    )


def contracts_in(events: Sequence[Event]) -> list[model.Contract]:
    return [e.contract for e in events if isinstance(e, ContractChanged)]


def statuses_in(events: Sequence[Event], order_id: str) -> list[S | str]:
    return [
        e.order.status
        for e in events
        if isinstance(e, OrderChanged) and e.order.order_id == order_id
    ]


def priority_key(order: BookOrder, entered: int) -> tuple[Decimal, int]:
    return (-order.price if order.side is Side.BUY else order.price, entered)


# --- 1. the stateful test ----------------------------------------------------------------------


class MatchingMachine(RuleBasedStateMachine):
    order_ids = Bundle("order_ids")

    def __init__(self) -> None:
        super().__init__()
        self.matcher = new_matcher()
        self.now = T0
        self.owner: dict[str, str] = {}
        self.sides: dict[str, Side] = {}
        self.statuses: dict[str, list[S]] = {}
        # The order in which orders entered the book (time priority), from MATCHING_ACTIVE events.
        self.entered: dict[str, int] = {}
        self.entries = itertools.count()
        self.expected_price: dict[str, Decimal] = {}  # contract id -> the resting order's price
        self.frozen: dict[str, tuple[S, int]] = {}  # final order -> (status, contracts it had)

    # --- helpers --------------------------------------------------------------------------------

    def order(self, order_id: str) -> BookOrder:
        return self.matcher.get(self.owner[order_id], order_id)

    def foreigner(self, order_id: str) -> str:
        owner = self.owner[order_id]
        return OWNERS[(OWNERS.index(owner) + 1) % len(OWNERS)]

    def record_status(self, order_id: str, event: OrderChanged) -> None:
        status = event.order.status
        seq = self.statuses.setdefault(order_id, [])
        previous = seq[-1] if seq else None
        assert status in ALLOWED_NEXT[previous], f"{order_id}: {previous} -> {status} ({seq})"
        assert isinstance(status, S)
        seq.append(status)
        if status is S.MATCHING_ACTIVE:
            self.entered[order_id] = next(self.entries)
        if status.is_final:
            self.frozen[order_id] = (status, len(event.order.contracts))

    def absorb(self, events: Sequence[Event], aggressor: str | None) -> None:
        """Check the events of one call and record what they say. `aggressor` is the order that
        entered the book in this call (submitted, or completed by its baseline), if any."""
        seen = [e for e in events if not isinstance(e, BookChanged)]
        n_contracts = sum(isinstance(e, ContractChanged) for e in seen)
        assert sum(isinstance(e, Traded) for e in seen) == n_contracts
        for i, event in enumerate(seen):
            if isinstance(event, OrderChanged):
                order_id = event.order.order_id
                assert event.owner == self.owner[order_id]
                self.record_status(order_id, event)
            elif isinstance(event, ContractChanged):
                c = event.contract
                assert aggressor is not None, "a trade outside submit/baseline arrival"
                assert aggressor in (c.buy_order_id, c.sell_order_id)
                for party in (c.buy_order_id, c.sell_order_id):
                    assert party not in self.frozen, f"final order {party} traded again"
                assert self.sides[c.buy_order_id] is Side.BUY
                assert self.sides[c.sell_order_id] is Side.SELL
                resting = c.sell_order_id if aggressor == c.buy_order_id else c.buy_order_id
                self.expected_price[c.contract_id] = self.order(resting).price
                assert (event.buyer, event.seller) == (
                    self.owner[c.buy_order_id],
                    self.owner[c.sell_order_id],
                )
                # The pair met the match conditions (the sell fit is checked by the fills).
                b, s = self.order(c.buy_order_id), self.order(c.sell_order_id)
                assert event.buyer != event.seller, "self-trade"
                assert b.price >= s.price
                assert b.window == s.window
                assert same_or_any_country(b.request.location, s.request.location)
                assert s.baseline is not None, "a sell traded without a baseline"
                assert c.status == model.ContractStatus.CREATED
                assert c.created_at == self.now
                # A trade is: contract, buy update, sell update, ticker.
                buy_update, sell_update, ticker = seen[i + 1 : i + 4]
                assert isinstance(buy_update, OrderChanged)
                assert isinstance(sell_update, OrderChanged)
                assert isinstance(ticker, Traded)
                assert buy_update.order.order_id == c.buy_order_id
                assert sell_update.order.order_id == c.sell_order_id
                assert c in buy_update.order.contracts
                assert c in sell_update.order.contracts
                t = ticker.ticker
                assert (t.price, t.power, t.energy) == (c.price, c.power, c.energy)
                assert (t.delivery_start, t.delivery_end) == (c.delivery_start, c.delivery_end)
            elif isinstance(event, Expired):
                assert aggressor is None

    # --- rules ----------------------------------------------------------------------------------

    def _submit(
        self,
        side: Side,
        owner: str,
        window: tuple[datetime, datetime],
        price: Decimal,
        power: Decimal,
        country: str,
        expiry: timedelta,
        with_baseline: bool,
    ) -> str:
        req = model.OrderRequest(
            side=side,
            power=power,
            price=price,
            delivery_start=window[0],
            delivery_end=window[1],
            expiry_time=min(self.now + expiry, window[0] - MINUTE),
            location=model.Location(country_code=country),
            baseline=baseline_for(window) if with_baseline else None,
        )
        assert rules.check_order_request(req, self.now, strictness=rules.Strictness.MARKET) == []
        order, events = self.matcher.submit(owner, req, self.now)
        assert order.order_id not in self.owner
        self.owner[order.order_id] = owner
        self.sides[order.order_id] = side
        self.absorb(events, aggressor=order.order_id)
        first = self.statuses[order.order_id][0]
        waiting = side is Side.SELL and not with_baseline
        assert first is (S.AWAITING_BASELINE_DATA if waiting else S.ACCEPTED)
        if waiting:
            assert events == [OrderChanged(owner, self.matcher.snapshot(order))]
        return order.order_id

    @rule(
        target=order_ids,
        owner=st.sampled_from(OWNERS),
        window=WINDOW_DRAW,
        price=st.sampled_from(PRICES),
        power=BUY_POWER_DRAW,
        country=COUNTRY_DRAW,
        expiry=EXPIRY_DRAW,
    )
    def submit_buy(
        self,
        owner: str,
        window: tuple[datetime, datetime],
        price: Decimal,
        power: Decimal,
        country: str,
        expiry: timedelta,
    ) -> str:
        return self._submit(Side.BUY, owner, window, price, power, country, expiry, False)

    @rule(
        target=order_ids,
        owner=st.sampled_from(OWNERS),
        window=WINDOW_DRAW,
        price=st.sampled_from(PRICES),
        power=SELL_POWER_DRAW,
        country=COUNTRY_DRAW,
        expiry=EXPIRY_DRAW,
        with_baseline=st.booleans(),
    )
    def submit_sell(
        self,
        owner: str,
        window: tuple[datetime, datetime],
        price: Decimal,
        power: Decimal,
        country: str,
        expiry: timedelta,
        with_baseline: bool,
    ) -> str:
        return self._submit(Side.SELL, owner, window, price, power, country, expiry, with_baseline)

    @rule(order_id=order_ids, foreign=FOREIGN_DRAW)
    def cancel(self, order_id: str, foreign: bool) -> None:
        order = self.order(order_id)
        before = self.matcher.snapshot(order)
        if foreign:
            with pytest.raises(OrderNotFound):
                self.matcher.cancel(self.foreigner(order_id), order_id, self.now)
        elif order.is_final:
            with pytest.raises(OrderFinal):
                self.matcher.cancel(self.owner[order_id], order_id, self.now)
        else:
            events = self.matcher.cancel(self.owner[order_id], order_id, self.now)
            self.absorb(events, aggressor=None)
            assert order.status is S.CANCELLED
            assert statuses_in(events, order_id) == [S.CANCELLED]
            return
        assert self.matcher.snapshot(order) == before  # a refused request changes nothing

    @rule(order_id=order_ids, foreign=FOREIGN_DRAW, kwh=st.sampled_from(("0.25", "0.5")))
    def set_baseline(self, order_id: str, foreign: bool, kwh: str) -> None:
        order = self.order(order_id)
        before = self.matcher.snapshot(order)
        reading = baseline_for(order.window, kwh)
        owner = self.owner[order_id]
        if foreign:
            with pytest.raises(OrderNotFound):
                self.matcher.set_baseline(self.foreigner(order_id), order_id, reading, self.now)
        elif order.side is Side.BUY:
            with pytest.raises(NotASell):
                self.matcher.set_baseline(owner, order_id, reading, self.now)
        elif order.is_final or order.contract_ids:
            with pytest.raises(BaselineLocked):
                self.matcher.set_baseline(owner, order_id, reading, self.now)
        else:
            waiting = order.status is S.AWAITING_BASELINE_DATA
            events = self.matcher.set_baseline(owner, order_id, reading, self.now)
            assert order.baseline is reading
            if waiting:
                self.absorb(events, aggressor=order_id)
                assert statuses_in(events, order_id)[:2] == [S.ACCEPTED, S.MATCHING_ACTIVE]
            else:  # a replacement before matching: no event, no new matching
                assert events == []
            return
        assert self.matcher.snapshot(order) == before

    @rule(step=st.sampled_from(CLOCK_STEPS))
    def advance_clock(self, step: timedelta) -> None:
        self.now += step
        assert self.now < DAY - MINUTE
        live = [o for o in self.matcher.orders() if not o.is_final]
        assert self.matcher.next_expiry() == min((o.expires_at for o in live), default=None)
        due = {o.order_id for o in live if o.expires_at <= self.now}
        remaining = {o.order_id: o.remaining_w for o in live}
        events = self.matcher.expire_due(self.now)
        self.absorb(events, aggressor=None)
        expired = {o.order_id for o in live if o.status is S.EXPIRED}
        assert expired == due
        assert not any(o.is_final for o in live if o.order_id not in due)
        got = sorted(
            (e.expired.price, e.expired.power, e.expired.delivery_start, e.expired.delivery_end)
            for e in events
            if isinstance(e, Expired)
        )
        want = sorted(
            (o.price, remaining[o.order_id], *o.window) for o in live if o.order_id in due
        )
        assert got == want
        after = [o.expires_at for o in live if o.order_id not in due]
        assert self.matcher.next_expiry() == min(after, default=None)

    # --- invariants -----------------------------------------------------------------------------

    @invariant()
    def book_is_never_crossed(self) -> None:
        for b in self.matcher.resting(Side.BUY):
            for s in self.matcher.resting(Side.SELL):
                assert not can_match(b, s), f"crossed: {b.order_id} / {s.order_id}"

    @invariant()
    def fills_add_up_to_contracts(self) -> None:
        contracts = self.matcher.contracts
        assert set(contracts) == set(self.expected_price), "contracts made outside the events"
        for o in self.matcher.orders():
            mine = [
                c for c in contracts.values() if o.order_id in (c.buy_order_id, c.sell_order_id)
            ]
            assert o.remaining_w >= 0
            assert o.filled_w == sum((c.power for c in mine), Decimal(0))
            assert sorted(o.contract_ids) == sorted(c.contract_id for c in mine)
            assert self.matcher.snapshot(o).filled_power == o.filled_w
        for c in contracts.values():
            b, s = self.order(c.buy_order_id), self.order(c.sell_order_id)
            assert c.contract_id in b.contract_ids
            assert c.contract_id in s.contract_ids
            assert self.matcher.parties(c.contract_id) == (b.owner, s.owner)
            assert b.window == s.window == (c.delivery_start, c.delivery_end)
            assert c.energy == rules.energy_wh(c.power, c.delivery_start, c.delivery_end)

    @invariant()
    def sells_are_all_or_nothing_and_need_a_baseline(self) -> None:
        for o in self.matcher.orders():
            if o.side is Side.SELL:
                assert o.remaining_w in (o.request.power, 0)
                assert len(o.contract_ids) <= 1
                if o.contract_ids:
                    assert o.baseline is not None
                if o.status is S.AWAITING_BASELINE_DATA:
                    assert o.baseline is None

    @invariant()
    def contract_price_is_the_resting_orders_price(self) -> None:
        for contract_id, price in self.expected_price.items():
            assert self.matcher.contracts[contract_id].price == price

    @invariant()
    def final_orders_are_frozen(self) -> None:
        for order_id, (status, n_contracts) in self.frozen.items():
            order = self.order(order_id)
            assert order.status is status
            assert len(order.contract_ids) == n_contracts

    @invariant()
    def statuses_agree_with_the_order(self) -> None:
        for o in self.matcher.orders():
            assert o.status is self.statuses[o.order_id][-1]
            assert o.status is not S.ACCEPTED  # a passing status, never left standing
            assert (o.status is S.FILLED) == (o.remaining_w == 0)
            if o.status is S.PARTIAL_FILLED:
                assert 0 < o.remaining_w < o.request.power
            if not o.is_final:
                assert o.expires_at > self.now

    @invariant()
    def resting_orders_are_the_live_ones_in_priority_order(self) -> None:
        for side in Side:
            resting = list(self.matcher.resting(side))
            assert len({o.order_id for o in resting}) == len(resting)
            live = {
                o.order_id
                for o in self.matcher.orders()
                if o.side is side and o.status in LIVE_IN_BOOK
            }
            assert {o.order_id for o in resting} == live
            for window in WINDOWS:
                queue = [o for o in resting if o.window == window]
                keys = [priority_key(o, self.entered[o.order_id]) for o in queue]
                assert keys == sorted(keys)
        assert [e.price for e in self.matcher.book().flat_bids()] == sorted(
            (o.price for o in self.matcher.resting(Side.BUY)), reverse=True
        )


MatchingMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestMatchingMachine = MatchingMachine.TestCase


# --- 2. price-time priority against a brute-force oracle --------------------------------------


@dataclass
class OracleOrder:
    index: int
    side: Side
    owner: str
    window: tuple[datetime, datetime]
    price: Decimal
    remaining: Decimal
    country: str
    seq: int = 0


def oracle_crosses(a: OracleOrder, b: OracleOrder) -> bool:
    bid, ask = (a, b) if a.side is Side.BUY else (b, a)
    return (
        a.side is not b.side
        and bid.price >= ask.price
        and a.window == b.window
        and (a.country == b.country or not a.country or not b.country)
        and a.owner != b.owner
        and ask.remaining <= bid.remaining
    )


def oracle_submit(
    book: list[OracleOrder], incoming: OracleOrder, seq: int
) -> list[tuple[int, int, Decimal, Decimal]]:
    """Trade `incoming` against `book` by brute force; returns (buy, sell, power, price) rows."""
    made = []
    while incoming.remaining > 0:
        eligible = [r for r in book if oracle_crosses(incoming, r)]
        if not eligible:
            break
        best = min(eligible, key=lambda r: (-r.price if r.side is Side.BUY else r.price, r.seq))
        bid, ask = (incoming, best) if incoming.side is Side.BUY else (best, incoming)
        power = ask.remaining
        made.append((bid.index, ask.index, power, best.price))
        bid.remaining -= power
        ask.remaining -= power
        if best.remaining == 0:
            book.remove(best)
    if incoming.remaining > 0:
        incoming.seq = seq
        book.append(incoming)
    return made


order_specs = st.tuples(
    st.sampled_from(Side),
    st.sampled_from(OWNERS),
    st.sampled_from((W1, W2)),
    st.sampled_from(PRICES),
    st.sampled_from(POWERS),
    st.sampled_from(COUNTRIES),
)


@settings(max_examples=250, deadline=None)
@given(resting=st.lists(order_specs, max_size=14), aggressor=order_specs)
def test_price_time_priority_agrees_with_a_brute_force_oracle(
    resting: list[tuple[Side, str, tuple[datetime, datetime], Decimal, Decimal, str]],
    aggressor: tuple[Side, str, tuple[datetime, datetime], Decimal, Decimal, str],
) -> None:
    matcher = new_matcher()
    book: list[OracleOrder] = []
    index_of: dict[str, int] = {}
    for i, (side, owner, window, price, power, country) in enumerate([*resting, aggressor]):
        now = T0 + i * timedelta(seconds=1)
        req = request(side, power, price, window=window, country=country)
        order, events = matcher.submit(owner, req, now)
        index_of[order.order_id] = i
        got = [
            (index_of[c.buy_order_id], index_of[c.sell_order_id], c.power, c.price)
            for c in contracts_in(events)
        ]
        incoming = OracleOrder(i, side, owner, window, price, power, country)
        assert got == oracle_submit(book, incoming, seq=i), f"at order {i}"
    for side in Side:
        for window in (W1, W2):
            engine = [
                (index_of[o.order_id], o.remaining_w)
                for o in matcher.resting(side)
                if o.window == window
            ]
            mine = sorted(
                (o for o in book if o.side is side and o.window == window),
                key=lambda o: (-o.price if side is Side.BUY else o.price, o.seq),
            )
            assert engine == [(o.index, o.remaining) for o in mine]


# --- 3. examples -------------------------------------------------------------------------------


def test_buy_fills_in_parts_across_several_sells() -> None:
    m = new_matcher()
    s1, _ = m.submit("alice", sell("500", "0.10"), T0)
    s2, _ = m.submit("bob", sell("500", "0.15"), T0)
    b, events = m.submit("carol", buy("2000", "0.20"), T0)

    assert [(c.sell_order_id, c.power, c.price) for c in contracts_in(events)] == [
        (s1.order_id, Decimal(500), Decimal("0.10")),
        (s2.order_id, Decimal(500), Decimal("0.15")),
    ]
    assert (b.status, b.remaining_w) == (S.PARTIAL_FILLED, Decimal(1000))
    assert statuses_in(events, b.order_id) == [
        S.ACCEPTED,
        S.MATCHING_ACTIVE,
        S.PARTIAL_FILLED,
        S.PARTIAL_FILLED,
    ]
    assert s1.status is s2.status is S.FILLED
    assert list(m.resting(Side.BUY)) == [b]

    s3, events = m.submit("alice", sell("1000", "0.20"), T0)
    assert [(c.buy_order_id, c.power) for c in contracts_in(events)] == [
        (b.order_id, Decimal(1000))
    ]
    assert b.status is s3.status is S.FILLED
    assert m.snapshot(b).filled_power == Decimal(2000)
    assert list(m.resting(Side.BUY)) == []


def test_sell_waits_for_baseline_then_matches_on_arrival() -> None:
    m = new_matcher()
    b, _ = m.submit("bob", buy("1000", "0.20"), T0)
    s, events = m.submit("alice", sell("1000", "0.10", baseline=False), T0)

    assert statuses_in(events, s.order_id) == [S.AWAITING_BASELINE_DATA]
    assert contracts_in(events) == []
    assert list(m.resting(Side.SELL)) == []

    later = T0 + 5 * MINUTE
    events = m.set_baseline("alice", s.order_id, baseline_for(W1), later)
    assert statuses_in(events, s.order_id) == [S.ACCEPTED, S.MATCHING_ACTIVE, S.FILLED]
    [contract] = contracts_in(events)
    assert (contract.buy_order_id, contract.sell_order_id) == (b.order_id, s.order_id)
    assert contract.price == Decimal("0.20")  # the buy was resting
    assert contract.created_at == later
    assert b.status is S.FILLED
    with pytest.raises(BaselineLocked):
        m.set_baseline("alice", s.order_id, baseline_for(W1), later)


def test_waiting_sell_queues_from_baseline_arrival_not_submission() -> None:
    m = new_matcher()
    early, _ = m.submit("alice", sell("1000", "0.10", baseline=False), T0)
    punctual, _ = m.submit("bob", sell("1000", "0.10"), T0 + MINUTE)
    m.set_baseline("alice", early.order_id, baseline_for(W1), T0 + 2 * MINUTE)
    assert list(m.resting(Side.SELL)) == [punctual, early]

    _, events = m.submit("carol", buy("1000", "0.10"), T0 + 3 * MINUTE)
    assert [c.sell_order_id for c in contracts_in(events)] == [punctual.order_id]


def test_baseline_may_be_replaced_until_the_sell_matches() -> None:
    m = new_matcher()
    s, _ = m.submit("alice", sell("1000", "0.30"), T0)
    replacement = baseline_for(W1, "0.5")
    assert m.set_baseline("alice", s.order_id, replacement, T0 + MINUTE) == []
    assert s.baseline is replacement
    assert s.status is S.MATCHING_ACTIVE

    b, _ = m.submit("bob", buy("500", "0.30"), T0)
    with pytest.raises(NotASell):
        m.set_baseline("bob", b.order_id, replacement, T0)


def test_sell_too_large_for_the_bid_is_skipped_not_split() -> None:
    m = new_matcher()
    big, _ = m.submit("alice", sell("2000", "0.10"), T0)
    fits, _ = m.submit("bob", sell("1000", "0.15"), T0)
    b, events = m.submit("carol", buy("1000", "0.20"), T0)

    assert [(c.sell_order_id, c.power, c.price) for c in contracts_in(events)] == [
        (fits.order_id, Decimal(1000), Decimal("0.15"))
    ]
    assert (big.status, big.remaining_w) == (S.MATCHING_ACTIVE, Decimal(2000))
    assert b.status is S.FILLED
    assert list(m.resting(Side.SELL)) == [big]


def test_sell_too_large_for_the_best_bid_goes_to_the_next_one() -> None:
    m = new_matcher()
    small, _ = m.submit("alice", buy("500", "0.25"), T0)
    large, _ = m.submit("bob", buy("2000", "0.15"), T0)
    _, events = m.submit("carol", sell("1000", "0.10"), T0)

    [contract] = contracts_in(events)
    assert (contract.buy_order_id, contract.price) == (large.order_id, Decimal("0.15"))
    assert (small.remaining_w, large.remaining_w) == (Decimal(500), Decimal(1000))
    assert large.status is S.PARTIAL_FILLED


@pytest.mark.parametrize(
    ("first", "second", "price"),
    [
        pytest.param(sell("1000", "0.10"), buy("1000", "0.25"), "0.10", id="sell-rests"),
        pytest.param(buy("1000", "0.25"), sell("1000", "0.10"), "0.25", id="buy-rests"),
    ],
)
def test_contract_price_is_the_resting_orders_price(
    first: model.OrderRequest, second: model.OrderRequest, price: str
) -> None:
    m = new_matcher()
    m.submit("alice", first, T0)
    _, events = m.submit("bob", second, T0)
    [contract] = contracts_in(events)
    assert contract.price == Decimal(price)
    [traded] = [e for e in events if isinstance(e, Traded)]
    assert traded.ticker.price == Decimal(price)


def test_equal_prices_trade_oldest_first() -> None:
    m = new_matcher()
    first, _ = m.submit("alice", buy("1000", "0.20"), T0)
    second, _ = m.submit("bob", buy("1000", "0.20"), T0 + MINUTE)
    better, _ = m.submit("alice", buy("1000", "0.25"), T0 + 2 * MINUTE)
    taken = []
    for _ in range(3):
        _, events = m.submit("carol", sell("1000", "0.20"), T0 + 3 * MINUTE)
        taken += [c.buy_order_id for c in contracts_in(events)]
    assert taken == [better.order_id, first.order_id, second.order_id]


def test_partial_fill_keeps_time_priority() -> None:
    m = new_matcher()
    old, _ = m.submit("alice", buy("2000", "0.20"), T0)
    young, _ = m.submit("bob", buy("2000", "0.20"), T0 + MINUTE)
    m.submit("carol", sell("500", "0.20"), T0 + 2 * MINUTE)
    assert old.status is S.PARTIAL_FILLED
    assert list(m.resting(Side.BUY)) == [old, young]


def test_no_self_trade() -> None:
    m = new_matcher()
    s, _ = m.submit("alice", sell("1000", "0.10"), T0)
    b, events = m.submit("alice", buy("1000", "0.25"), T0)
    assert contracts_in(events) == []
    assert list(m.resting(Side.BUY)) == [b]
    assert list(m.resting(Side.SELL)) == [s]

    _, events = m.submit("bob", sell("1000", "0.20"), T0)
    [contract] = contracts_in(events)
    assert contract.buy_order_id == b.order_id  # alice's own sell was no obstacle
    assert contract.price == Decimal("0.25")


@pytest.mark.parametrize(
    ("buy_country", "sell_country", "trades"),
    [
        ("", "", True),
        ("", "DE", True),
        ("FR", "", True),
        ("DE", "DE", True),
        ("DE", "FR", False),
    ],
)
def test_country_empty_matches_any(buy_country: str, sell_country: str, trades: bool) -> None:
    m = new_matcher()
    m.submit("alice", sell("1000", "0.10", country=sell_country), T0)
    _, events = m.submit("bob", buy("1000", "0.10", country=buy_country), T0)
    assert len(contracts_in(events)) == int(trades)
    if trades:
        [traded] = [e for e in events if isinstance(e, Traded)]
        assert traded.ticker.location.country_code == (sell_country or buy_country)


def test_windows_must_be_identical_not_overlapping() -> None:
    m = new_matcher()
    m.submit("alice", sell("1000", "0.10", window=W1), T0)
    m.submit("alice", sell("1000", "0.10", window=W3), T0)
    _, events = m.submit("bob", buy("1000", "0.20", window=W2), T0)
    assert contracts_in(events) == []


def test_expiry_emits_expired_event_and_removes_from_book() -> None:
    m = new_matcher()
    expiry = T0 + 10 * MINUTE
    b, _ = m.submit("alice", buy("2000", "0.20", expiry=expiry), T0)
    m.submit("bob", sell("500", "0.20"), T0)
    assert b.status is S.PARTIAL_FILLED

    assert m.expire_due(expiry - timedelta(seconds=1)) == []
    events = m.expire_due(expiry)
    assert statuses_in(events, b.order_id) == [S.EXPIRED]
    [expired] = [e.expired for e in events if isinstance(e, Expired)]
    assert expired == model.ExpiredOrder(
        expired_at=expiry,
        price=Decimal("0.20"),
        delivery_start=W1[0],
        delivery_end=W1[1],
        power=Decimal(1500),
        energy=Decimal(375),  # 1500 W for 15 min
        location=model.Location(),
    )
    assert BookChanged() in events
    assert list(m.resting(Side.BUY)) == []
    assert m.book() == model.OrderBook()
    assert len(b.contract_ids) == 1  # the contract survives expiry

    _, events = m.submit("carol", sell("500", "0.10"), expiry)
    assert contracts_in(events) == []
    assert m.expire_due(expiry + MINUTE) == []  # expires once


def test_an_order_past_its_expiry_never_trades_even_before_expire_due_runs() -> None:
    m = new_matcher()
    expiry = T0 + 10 * MINUTE
    b, _ = m.submit("alice", buy("1000", "0.20", expiry=expiry), T0)
    late = expiry + MINUTE  # nobody called expire_due in between
    s, events = m.submit("bob", sell("500", "0.10"), late)
    assert contracts_in(events) == []
    assert b.contract_ids == []
    assert s.status is S.MATCHING_ACTIVE
    assert statuses_in(m.expire_due(late), b.order_id) == [S.EXPIRED]


def test_waiting_sell_expires_too() -> None:
    m = new_matcher()
    s, _ = m.submit("alice", sell("1000", "0.10", baseline=False, expiry=T0 + MINUTE), T0)
    events = m.expire_due(T0 + MINUTE)
    assert statuses_in(events, s.order_id) == [S.EXPIRED]
    assert not any(isinstance(e, BookChanged) for e in events)  # it was never in the book
    with pytest.raises(BaselineLocked):
        m.set_baseline("alice", s.order_id, baseline_for(W1), T0 + MINUTE)


def _filled(m: Matcher) -> BookOrder:
    order, _ = m.submit("alice", buy("1000", "0.20"), T0)
    m.submit("bob", sell("1000", "0.20"), T0)
    return order


def _cancelled(m: Matcher) -> BookOrder:
    order, _ = m.submit("alice", buy("1000", "0.20"), T0)
    m.cancel("alice", order.order_id, T0)
    return order


def _expired(m: Matcher) -> BookOrder:
    order, _ = m.submit("alice", buy("1000", "0.20", expiry=T0 + MINUTE), T0)
    m.expire_due(T0 + MINUTE)
    return order


@pytest.mark.parametrize("end", [_filled, _cancelled, _expired])
def test_cancel_of_final_order_raises(end: Callable[[Matcher], BookOrder]) -> None:
    m = new_matcher()
    order = end(m)
    status = order.status
    assert status.is_final
    with pytest.raises(OrderFinal):
        m.cancel("alice", order.order_id, T0 + 2 * MINUTE)
    assert order.status is status


def test_cancel_removes_from_book_and_keeps_contracts() -> None:
    m = new_matcher()
    b, _ = m.submit("alice", buy("2000", "0.20"), T0)
    m.submit("bob", sell("1000", "0.20"), T0)
    events = m.cancel("alice", b.order_id, T0 + MINUTE)
    assert statuses_in(events, b.order_id) == [S.CANCELLED]
    assert BookChanged() in events
    assert list(m.resting(Side.BUY)) == []
    assert m.snapshot(b).filled_power == Decimal(1000)
    _, events = m.submit("carol", sell("500", "0.10"), T0 + MINUTE)
    assert contracts_in(events) == []


def test_foreign_order_is_not_found() -> None:
    m = new_matcher()
    s, _ = m.submit("alice", sell("1000", "0.10", baseline=False), T0)
    with pytest.raises(OrderNotFound):
        m.get("bob", s.order_id)
    with pytest.raises(OrderNotFound):
        m.cancel("bob", s.order_id, T0)
    with pytest.raises(OrderNotFound):
        m.set_baseline("bob", s.order_id, baseline_for(W1), T0)
    with pytest.raises(OrderNotFound):
        m.cancel("alice", "no-such-order", T0)
    assert s.status is S.AWAITING_BASELINE_DATA
    assert s.baseline is None
    assert m.orders("bob") == []
    assert m.orders("alice") == [s]


def test_book_snapshot_groups_by_window_and_country_in_priority_order() -> None:
    m = new_matcher()
    m.submit("alice", buy("500", "0.10", country="DE"), T0)
    m.submit("alice", buy("1000", "0.20", country="DE"), T0)
    m.submit("bob", buy("2000", "0.20", country="DE"), T0)  # same price, later
    m.submit("alice", buy("500", "0.15", country="FR"), T0)
    m.submit("alice", buy("500", "0.12", window=W2), T0)
    m.submit("carol", sell("1000", "0.30", country="DE"), T0)
    m.submit("carol", sell("500", "0.25", country="DE"), T0)
    m.submit("carol", sell("500", "0.40", window=W3), T0)

    def groups(
        side: dict[str, tuple[model.BookEntry, ...]],
    ) -> dict[tuple[datetime, datetime, str], list[tuple[Decimal, Decimal]]]:
        out = {}
        for entries in side.values():
            keys = {(e.delivery_start, e.delivery_end, e.location.country_code) for e in entries}
            assert len(keys) == 1, "a group mixes windows or countries"
            out[keys.pop()] = [(e.price, e.power) for e in entries]
        assert len(out) == len(side)
        return out

    book = m.book()
    d = Decimal
    assert groups(dict(book.bids)) == {
        (*W1, "DE"): [(d("0.20"), d(1000)), (d("0.20"), d(2000)), (d("0.10"), d(500))],
        (*W1, "FR"): [(d("0.15"), d(500))],
        (*W2, ""): [(d("0.12"), d(500))],
    }
    assert groups(dict(book.asks)) == {
        (*W1, "DE"): [(d("0.25"), d(500)), (d("0.30"), d(1000))],
        (*W3, ""): [(d("0.40"), d(500))],
    }
    assert [(e.price, e.power) for e in book.flat_bids()][:3] == [
        (d("0.20"), d(1000)),
        (d("0.20"), d(2000)),
        (d("0.15"), d(500)),
    ]
    assert all(e.side == Side.BUY for e in book.flat_bids())
    assert all(e.side == Side.SELL for e in book.flat_asks())


def test_book_shows_remaining_power_of_a_partly_filled_buy() -> None:
    m = new_matcher()
    m.submit("alice", buy("2000", "0.20"), T0)
    m.submit("bob", sell("500", "0.20"), T0)
    [entry] = m.book().flat_bids()
    assert (entry.power, entry.energy) == (Decimal(1500), Decimal(375))


def test_events_order_for_a_trade() -> None:
    m = new_matcher()
    b, _ = m.submit("bob", buy("1000", "0.20"), T0)
    s, events = m.submit("alice", sell("1000", "0.10"), T0)

    shape = [
        (type(e).__name__, e.order.order_id, e.order.status)
        if isinstance(e, OrderChanged)
        else type(e).__name__
        for e in events
        if not isinstance(e, BookChanged)
    ]
    assert shape == [
        ("OrderChanged", s.order_id, S.ACCEPTED),
        ("OrderChanged", s.order_id, S.MATCHING_ACTIVE),
        "ContractChanged",
        ("OrderChanged", b.order_id, S.FILLED),
        ("OrderChanged", s.order_id, S.FILLED),
        "Traded",
    ]
    [contract_event] = [e for e in events if isinstance(e, ContractChanged)]
    assert (contract_event.buyer, contract_event.seller) == ("bob", "alice")
    assert m.parties(contract_event.contract.contract_id) == ("bob", "alice")
    owners = [e.owner for e in events if isinstance(e, OrderChanged)]
    assert owners == ["alice", "alice", "bob", "alice"]
    # The resting buy left the book (one BookChanged); the filled aggressor never entered it.
    assert events.count(BookChanged()) == 1
    [traded] = [e.ticker for e in events if isinstance(e, Traded)]
    assert (traded.price, traded.power, traded.energy) == (
        Decimal("0.20"),
        Decimal(1000),
        Decimal(250),
    )


def test_next_expiry_skips_final_orders() -> None:
    m = new_matcher()
    assert m.next_expiry() is None
    a, _ = m.submit("alice", buy("1000", "0.20", expiry=T0 + 5 * MINUTE), T0)
    b, _ = m.submit("alice", buy("1000", "0.20", expiry=T0 + 10 * MINUTE), T0)
    c, _ = m.submit("alice", sell("1000", "0.50", expiry=T0 + 20 * MINUTE), T0)
    assert m.next_expiry() == T0 + 5 * MINUTE
    m.cancel("alice", a.order_id, T0)
    assert m.next_expiry() == T0 + 10 * MINUTE
    m.submit("bob", sell("1000", "0.20"), T0)  # fills b (a is cancelled)
    assert b.status is S.FILLED
    assert m.next_expiry() == T0 + 20 * MINUTE
    m.cancel("alice", c.order_id, T0)
    assert m.next_expiry() is None  # bob's sell filled at once


def test_update_contract_reaches_both_parties_and_order_snapshots() -> None:
    m = new_matcher()
    b, _ = m.submit("bob", buy("1000", "0.20"), T0)
    s, _ = m.submit("alice", sell("1000", "0.10"), T0)
    [contract_id] = b.contract_ids
    verified = attrs.evolve(
        m.contracts[contract_id], status=model.ContractStatus.VERIFICATION_INITIATED
    )
    assert m.update_contract(verified) == ContractChanged("bob", "alice", verified)
    assert m.snapshot(b).contracts == m.snapshot(s).contracts == (verified,)


# --- contract updates -------------------------------------------------------------------------


def test_update_of_an_unknown_contract_changes_nothing() -> None:
    m = new_matcher()
    stray = model.Contract(
        contract_id="no-such-contract",
        buy_order_id="b",
        sell_order_id="s",
        power=Decimal(1000),
        energy=Decimal(250),
        price=Decimal("0.10"),
        delivery_start=W1[0],
        delivery_end=W1[1],
        status=model.ContractStatus.CREATED,
    )
    with pytest.raises(KeyError):
        m.update_contract(stray)
    assert m.contracts == {}
