"""The order tracker: every intent from creation to its last contract, journalled.

    intent ──journal──► PENDING ──sent──► OPEN ──final status──► DONE
                           │  └──refused──► REJECTED
                           └──outcome unknown──► UNKNOWN ──seen on the market──► OPEN / DONE
                                                    └──past expiry, never seen──► LAPSED

An intent is journalled (state PENDING) *before* it is sent. The market's order request carries no
client id, so an UNKNOWN intent (a timeout, a 504) is matched to a market order by its fingerprint
(side, power, price, window, location, expiry) when the order shows up on `/trade`, in a listing,
or in reconciliation; two unresolved intents never share a fingerprint (the second is refused), so
the match is unambiguous. An UNKNOWN intent is never counted as failed and never resent; it lapses
only once its expiry has passed without a sign of it, when it can no longer trade.

After a restart the tracker is rebuilt from the journal: PENDING intents become UNKNOWN (they may
have been sent), and open ones are reconciled by the feed (`open_orders`, the feed's OrderSource).

Market reports are applied idempotently: a report never moves an order out of a final status, an
older report (`updated_at`) never replaces a newer one, and contracts are merged by id.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import attrs
import orjson
from attrs import define, frozen

from flexbot import logs, model, wire
from flexbot.market import TradeEvent
from flexbot.store import AsyncStore, JournalRow
from flexbot.trading import IntentState, OwnOrder, Position, Window

log = logs.get_logger("flexbot.engine.orders")

Fingerprint = tuple[str, Decimal, Decimal, datetime, datetime, tuple[str, ...], str]


class DuplicateIntent(Exception):
    """An unresolved intent with the same fingerprint exists: resolve it first."""


def _exact(value: Decimal) -> Decimal:
    # What the market will echo: the value after a trip through a JSON float.
    return wire.to_decimal(wire.decimal_to_json(value)).normalize()


def fingerprint(thing: model.OrderRequest | model.Order) -> Fingerprint:
    """What identifies an order without an id (expiry is compared apart: reports may omit it)."""
    ids = tuple(sorted(i for i in thing.location.location_id if i))
    return (
        str(thing.side),
        _exact(thing.power),
        _exact(thing.price),
        thing.delivery_start,
        thing.delivery_end,
        ids,
        thing.location.country_code,
    )


def fingerprint_key(thing: model.OrderRequest | model.Order) -> str:
    """The fingerprint as the journal keeps it (a text column)."""
    return orjson.dumps(fingerprint(thing), default=str).decode()


def matches(request: model.OrderRequest, order: model.Order) -> bool:
    if fingerprint(request) != fingerprint(order):
        return False
    return order.expiry_time is None or order.expiry_time == request.expiry_time


# How much earlier than the intent (market time) a market order may say it was created and still
# be the intent's. The market's clock and ours differ; a host clock minutes off must not make our
# own orders unclaimable (they would be followed by nobody), so the margin is wide: what it keeps
# out is an identical order of an earlier day or run (orders the journal owns are out anyway).
CLOCK_SKEW = timedelta(minutes=5)


def could_be(intent: Intent, order: model.Order) -> bool:
    """`order` may be what `intent` became: it matches, and it was not created before the intent
    was journalled (an identical order of an earlier run, or an operator's from before, is not)."""
    if not matches(intent.request, order):
        return False
    return order.created_at is None or order.created_at >= intent.created_at - CLOCK_SKEW


@define
class Intent:
    client_id: str
    strategy: str
    version: str
    request: model.OrderRequest
    state: IntentState
    created_at: datetime
    dry_run: bool = False
    order_id: str | None = None
    order: model.Order | None = None
    reason: str | None = None

    def snapshot(self) -> OwnOrder:
        return OwnOrder(
            client_id=self.client_id,
            strategy=self.strategy,
            request=self.request,
            state=self.state,
            order_id=self.order_id,
            order=self.order,
            reason=self.reason,
            dry_run=self.dry_run,
        )

    @property
    def following(self) -> bool:
        """News of it is still expected: live, or final with contracts not yet settled."""
        if self.state.is_live:
            return True
        if self.dry_run or self.state is not IntentState.DONE or self.order is None:
            return False
        return any(not model.is_final_contract_status(c.status) for c in self.order.contracts)

    def row(self, now: datetime) -> JournalRow:
        return JournalRow(
            client_id=self.client_id,
            strategy=self.strategy,
            strategy_version=self.version,
            fingerprint=fingerprint_key(self.request),
            request=wire.dumps(self.request).decode(),
            created_at=wire.format_datetime(self.created_at),
            dry_run=self.dry_run,
            **self.news(now),
        )

    def news(self, now: datetime) -> dict[str, Any]:
        """The journal columns that change after the intent is made."""
        return {
            "state": str(self.state),
            "updated_at": wire.format_datetime(now),
            "order_id": self.order_id,
            "last_order": None if self.order is None else wire.dumps(self.order).decode(),
            "reason": self.reason,
            "following": self.following,
        }

    @classmethod
    def from_row(cls, row: JournalRow) -> Intent:
        state = IntentState(row.state)
        if state is IntentState.PENDING:
            state = IntentState.UNKNOWN  # it may have been sent before the crash
        return cls(
            client_id=row.client_id,
            strategy=row.strategy,
            version=row.strategy_version,
            request=wire.decode(row.request, model.OrderRequest),
            state=state,
            created_at=wire.parse_datetime(row.created_at),
            dry_run=row.dry_run,
            order_id=row.order_id,
            order=None if row.last_order is None else wire.decode(row.last_order, model.Order),
            reason=row.reason,
        )


_PartKey = tuple[str, str, bool, bool]  # strategy, country, dry run, a buy


_NOT_ON_THE_MARKET = frozenset({IntentState.UNKNOWN, IntentState.REJECTED, IntentState.LAPSED})


@frozen
class Unclaimed:
    """Market orders no intent owns: `free` to claim, and `ambiguous` ones, identical to an
    operator's order in flight, that nobody may claim yet."""

    free: list[model.Order]
    ambiguous: list[model.Order] = attrs.field(factory=list)


@frozen
class Change:
    """A change of one own order, for its strategy: the order, and the contract that changed."""

    order: OwnOrder
    contract: model.Contract | None = None


class OrderTracker:
    """In memory, mirrored to the journal. Also the feed's `OrderSource`."""

    def __init__(self, store: AsyncStore | None) -> None:
        self._store = store
        self._intents: dict[str, Intent] = {}  # by client id, in creation order
        self._by_order_id: dict[str, Intent] = {}
        # Indexes, so that placing an order costs the same with ten thousand finished ones in
        # memory as with none (bench/latency.py found a scan of them all, four times an order):
        # the live and the unresolved ones by client id, and the filled power of the others
        # summed per window and (strategy, country, dry run, side), with each one's part.
        self._live: dict[str, Intent] = {}
        self._unresolved: dict[str, Intent] = {}
        self._settled: dict[Window, dict[_PartKey, Decimal]] = {}
        self._settled_part: dict[str, tuple[Window, _PartKey, Decimal]] = {}
        # Every sell in memory, by window and client id: what the assets are committed to
        # (`committed_sells`, which reads only the windows it is asked about).
        self._sells: dict[Window, dict[str, Intent]] = {}
        # Contract reports for orders not known yet (an unknown intent's order), by order id.
        self._orphan_contracts: dict[str, list[model.Contract]] = {}

    @classmethod
    async def restore(cls, store: AsyncStore) -> OrderTracker:
        tracker = cls(store)
        for row in await store.run(store.sync.followed):
            intent = Intent.from_row(row)
            if intent.dry_run:
                # Paper orders lived in the paper broker of the run that made them: gone now.
                intent.state = IntentState.LAPSED
                intent.reason = "a paper order of an earlier run"
                await tracker._save(intent, intent.created_at)
                continue
            if intent.state is not IntentState(row.state):  # PENDING, read back as UNKNOWN
                await tracker._save(intent, intent.created_at)  # so `flexbot status` says so
            tracker._add(intent)
        return tracker

    def _add(self, intent: Intent) -> None:
        self._intents[intent.client_id] = intent
        if intent.request.side is model.Side.SELL:
            self._sells.setdefault(Window.of(intent.request), {})[intent.client_id] = intent
        if intent.order_id is not None:
            self._by_order_id[intent.order_id] = intent
        self._reindex(intent)

    def _reindex(self, intent: Intent) -> None:
        """After any change of `intent.state` or `intent.order`."""
        for index, belongs in (
            (self._live, intent.state.is_live),
            (self._unresolved, intent.state.is_unresolved),
        ):
            if belongs:
                index[intent.client_id] = intent
            else:
                index.pop(intent.client_id, None)
        self._unsettle(intent.client_id)
        if not intent.state.is_live and intent.order is not None and intent.order.filled_power:
            request = intent.request
            window = Window.of(request)
            key = (
                intent.strategy,
                request.location.country_code,
                intent.dry_run,
                request.side is model.Side.BUY,
            )
            filled = intent.order.filled_power
            totals = self._settled.setdefault(window, {})
            totals[key] = totals.get(key, Decimal(0)) + filled
            self._settled_part[intent.client_id] = (window, key, filled)

    def _unsettle(self, client_id: str) -> None:
        part = self._settled_part.pop(client_id, None)
        if part is None:
            return
        window, key, filled = part
        totals = self._settled[window]
        totals[key] -= filled
        if not totals[key]:
            del totals[key]
            if not totals:
                del self._settled[window]

    # --- queries --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Intent]:
        return iter(list(self._intents.values()))

    def get(self, client_id: str) -> Intent | None:
        return self._intents.get(client_id)

    def by_order_id(self, order_id: str) -> Intent | None:
        return self._by_order_id.get(order_id)

    def live(self, strategy: str | None = None, *, dry_run: bool | None = None) -> list[Intent]:
        return [
            i
            for i in self._live.values()
            if (strategy is None or i.strategy == strategy)
            and (dry_run is None or i.dry_run == dry_run)
        ]

    def unresolved(self) -> list[Intent]:
        return [i for i in self._unresolved.values() if i.state is IntentState.UNKNOWN]

    def open_orders(self) -> Mapping[str, model.Order | None]:
        """The feed's `OrderSource`: every followed order with a market id (dry-run ones aside)."""
        return {
            i.order_id: i.order
            for i in self._intents.values()
            if i.order_id is not None and i.following and not i.dry_run
        }

    def position(
        self,
        window: Window,
        *,
        strategy: str | None = None,
        country: str | None = None,
        dry_run: bool | None = None,
    ) -> Position:
        bought = sold = open_buy = open_sell = Decimal(0)
        for (of_strategy, of_country, of_dry_run, is_buy), filled in self._settled.get(
            window, {}
        ).items():
            if (
                (strategy is None or of_strategy == strategy)
                and (country is None or of_country == country)
                and (dry_run is None or of_dry_run == dry_run)
            ):
                if is_buy:
                    bought += filled
                else:
                    sold += filled
        for i in self._live.values():
            if Window.of(i.request) != window:
                continue
            if strategy is not None and i.strategy != strategy:
                continue
            if country is not None and i.request.location.country_code != country:
                continue
            if dry_run is not None and i.dry_run != dry_run:
                continue
            own = i.snapshot()
            if i.request.side is model.Side.BUY:
                bought += own.filled_power_w
                open_buy += own.remaining_power_w
            else:
                sold += own.filled_power_w
                open_sell += own.remaining_power_w
        return Position(bought, sold, open_buy, open_sell)

    def fills(self) -> Iterator[tuple[str, str, model.Contract]]:
        """(strategy, side, contract) of every contract of the real orders in memory (`Ledger.of`:
        paper fills are no money)."""
        for intent in list(self._intents.values()):
            if intent.order is not None and not intent.dry_run:
                for contract in intent.order.contracts:
                    yield intent.strategy, str(intent.request.side), contract

    def committed_sells(
        self,
        sites: Collection[str],
        *,
        after: datetime,
        dry_run: bool | None = None,
        until: datetime | None = None,
        also: Sequence[Window] = (),
    ) -> dict[Window, Decimal]:
        """W of sells at any of `sites` per window ending after `after` (`committed_sells`);
        with `until`, only the windows starting before it or overlapping one of `also`."""

        def wanted(window: Window) -> bool:
            if window.end <= after:
                return False
            if until is None or window.start < until:
                return True
            return any(window.start < w.end and w.start < window.end for w in also)

        intents = (
            i for w, of_window in self._sells.items() if wanted(w) for i in of_window.values()
        )
        return committed_sells(intents, sites, after=after, dry_run=dry_run)

    # --- the intent's own path ------------------------------------------------------------------

    async def new_intent(
        self,
        strategy: str,
        version: str,
        request: model.OrderRequest,
        now: datetime,
        *,
        dry_run: bool = False,
    ) -> Intent:
        """Journal a new intent (PENDING); refuse one that an unresolved intent could be."""
        for other in self._unresolved.values():
            if fingerprint(other.request) == fingerprint(request):
                raise DuplicateIntent(other.client_id)
        intent = Intent(
            client_id=str(uuid.uuid4()),
            strategy=strategy,
            version=version,
            request=request,
            state=IntentState.PENDING,
            created_at=now,
            dry_run=dry_run,
        )
        if self._store is not None:
            await self._store.run(self._store.sync.journal, intent.row(now))
        self._add(intent)
        return intent

    async def placed(self, intent: Intent, order: model.Order, now: datetime) -> Change:
        """The market has the order (its answer, or a report that claimed the intent)."""
        new_id = intent.order_id != order.order_id
        intent.order_id = order.order_id
        self._by_order_id[order.order_id] = intent
        merged = _merge(intent.order, order)
        for contract in self._orphan_contracts.pop(order.order_id, []):
            merged = attrs.evolve(merged, contracts=_union([contract], merged.contracts))
        intent.order = merged
        # From the merged report: an answer that arrives after a fill report must not reopen it.
        intent.state = IntentState.DONE if merged.is_final else IntentState.OPEN
        self._reindex(intent)
        if not self._has_unresolved():
            self._orphan_contracts.clear()  # the other sides' order ids: nobody will claim them
        await self._save(intent, now, durable=new_id)
        return Change(intent.snapshot())

    async def set_state(
        self, intent: Intent, state: IntentState, now: datetime, reason: str | None = None
    ) -> Change:
        if intent.order_id is not None and state in _NOT_ON_THE_MARKET:
            # The market reported it: it exists, whatever a lost answer or a timer suggests.
            return Change(intent.snapshot())
        intent.state = state
        intent.reason = reason
        self._reindex(intent)
        # Never on the market, so the market cannot tell it again: kept through a power cut.
        await self._save(intent, now, durable=state in (IntentState.REJECTED, IntentState.LAPSED))
        return Change(intent.snapshot())

    async def _save(self, intent: Intent, now: datetime, *, durable: bool = False) -> None:
        """Journal the intent's news. Durable (an fsync) only when asked: what must survive even a
        power cut is that an order may have been sent (`new_intent`) and its market id (`placed`);
        its status and contracts the market tells again at the next start (reconciliation)."""
        if self._store is None:
            return
        await self._store.run(
            self._store.sync.update, intent.client_id, durable=durable, **intent.news(now)
        )

    # --- market reports -------------------------------------------------------------------------

    def _has_unresolved(self) -> bool:
        return bool(self._unresolved)

    def claim(self, order: model.Order) -> Intent | None:
        """The unresolved intent this market order is, by fingerprint (oldest first). The order
        must be nobody's yet (see `unclaimed`)."""
        for intent in self._unresolved.values():
            if could_be(intent, order):
                return intent
        return None

    async def unclaimed(self, orders: Sequence[model.Order]) -> Unclaimed:
        """Those of `orders` that no intent owns, in memory or in the journal: an order of an
        intent let go of (finished, or from before a restart) is never claimed a second time, and
        neither is an operator's (`flexbot orders place` journals them). Of the rest, those that
        may be an operator's order whose answer is not journalled yet are set apart: identical
        orders cannot be told apart, so they are claimed by nobody until the operator's is."""
        fresh = [o for o in orders if o.order_id not in self._by_order_id]
        if not fresh or self._store is None:
            return Unclaimed(fresh)
        owned, in_flight = await self._store.run(
            self._store.sync.ownership, [o.order_id for o in fresh]
        )
        free = [o for o in fresh if o.order_id not in owned]
        if not in_flight:
            return Unclaimed(free)
        theirs = [wire.decode(row.request, model.OrderRequest) for row in in_flight]
        ambiguous = [o for o in free if any(matches(request, o) for request in theirs)]
        return Unclaimed([o for o in free if o not in ambiguous], ambiguous)

    async def apply(self, event: TradeEvent, now: datetime) -> list[Change]:
        message = event.message
        if isinstance(message, model.OrderStatusUpdate):
            return await self.apply_order(message.data, now)
        if isinstance(message, model.ContractStatusUpdate):
            return await self.apply_contract(message.data, now)
        log.info("trade.unknown_message", type=message.type)
        return []

    async def apply_order(self, order: model.Order, now: datetime) -> list[Change]:
        intent = self._by_order_id.get(order.order_id)
        free = True  # no intent owns it, neither in memory nor in the journal
        if intent is None:
            sorted_out = await self.unclaimed([order])
            free = bool(sorted_out.free)
            if sorted_out.ambiguous and self.claim(order) is not None:
                log.warning("order.ambiguous", order_id=order.order_id, like="an operator's order")
            # The journal was read in a worker thread: the submission's answer may have come
            # (and been journalled) meanwhile.
            intent = self._by_order_id.get(order.order_id)
        if intent is None:
            if not free:
                return []  # an intent let go of: its news no longer concerns anyone
            intent = self.claim(order)
            if intent is None:
                log.warning("order.untracked", order_id=order.order_id, status=str(order.status))
                return []
            # A PENDING intent's report may simply outrun the submission's own answer: no news.
            if intent.state is IntentState.UNKNOWN:
                log.info(
                    "order.resolved",
                    client_id=intent.client_id,
                    order_id=order.order_id,
                    strategy=intent.strategy,
                    status=str(order.status),
                )
            return [await self.placed(intent, order, now)]
        known = intent.order
        merged = _merge(known, order)
        if merged == known:
            return []
        intent.order = merged
        if merged.is_final and intent.state.is_live:
            intent.state = IntentState.DONE
        self._reindex(intent)
        await self._save(intent, now)
        return [Change(intent.snapshot())]

    async def apply_contract(self, contract: model.Contract, now: datetime) -> list[Change]:
        changes: list[Change] = []
        for order_id in (contract.buy_order_id, contract.sell_order_id):
            intent = self._by_order_id.get(order_id)
            if intent is None:
                # Maybe the order of an intent not resolved yet (its report may come after):
                # kept until the intent is claimed, or until nothing is unresolved any more.
                if self._has_unresolved():
                    self._orphan_contracts.setdefault(order_id, []).append(contract)
                continue
            before = intent.order
            intent.order = _with_contract(before, contract)
            self._reindex(intent)
            if intent.order == before:
                continue
            await self._save(intent, now)
            changes.append(Change(intent.snapshot(), contract))
        return changes

    def forget_finished(self, before: datetime) -> int:
        """Drop from memory what is no longer followed and whose window ended before `before`."""
        gone = [
            i for i in self._intents.values() if not i.following and i.request.delivery_end < before
        ]
        for intent in gone:
            del self._intents[intent.client_id]
            if intent.request.side is model.Side.SELL:
                window = Window.of(intent.request)
                of_window = self._sells.get(window, {})
                of_window.pop(intent.client_id, None)
                if not of_window:
                    self._sells.pop(window, None)
            if intent.order_id is not None:
                self._by_order_id.pop(intent.order_id, None)
            self._unsettle(intent.client_id)
            self._live.pop(intent.client_id, None)
            self._unresolved.pop(intent.client_id, None)
        return len(gone)


def _merge(known: model.Order | None, new: model.Order) -> model.Order:
    """The newer of two reports of one order, never moving out of a final status, contracts kept."""
    if known is None:
        return new
    if known.is_final and not new.is_final:
        return attrs.evolve(known, contracts=_union(known.contracts, new.contracts))
    if (
        known.updated_at is not None
        and new.updated_at is not None
        and new.updated_at < known.updated_at
    ):
        return attrs.evolve(known, contracts=_union(known.contracts, new.contracts))
    return attrs.evolve(new, contracts=_union(new.contracts, known.contracts))


def _union(
    preferred: Iterable[model.Contract], other: Iterable[model.Contract]
) -> tuple[model.Contract, ...]:
    """Contracts of both reports by id; of two versions of one contract the further along its
    lifecycle wins (a stale report never moves a contract back), `preferred` on a tie."""
    by_id = {c.contract_id: c for c in other}
    for contract in preferred:
        known = by_id.get(contract.contract_id)
        if known is None or _progress(contract) >= _progress(known):
            by_id[contract.contract_id] = contract
    return tuple(by_id.values())


_CONTRACT_PROGRESS: dict[str, float] = {
    str(status): rank for rank, status in enumerate(model.ContractStatus)
}


def _progress(contract: model.Contract) -> float:
    # A status we do not know is a new one, taken as just after creation: any known later step
    # still wins over it, and it wins over `created`.
    return _CONTRACT_PROGRESS.get(str(contract.status), 0.5)


def _with_contract(order: model.Order | None, contract: model.Contract) -> model.Order | None:
    if order is None:
        return None
    return attrs.evolve(order, contracts=_union([contract], order.contracts))


def sell_commitments(
    intents: Iterable[Intent], *, after: datetime, dry_run: bool | None = None
) -> Iterator[tuple[tuple[str | None, ...], Window, Decimal]]:
    """(sites, window, W) of each sell among `intents` in a window ending after `after`: filled,
    and still open (or maybe open: unknown)."""
    for intent in intents:
        request = intent.request
        if request.side is not model.Side.SELL or request.delivery_end <= after:
            continue
        if dry_run is not None and intent.dry_run != dry_run:
            continue
        filled = intent.order.filled_power if intent.order is not None else Decimal(0)
        power = max(request.power, filled) if intent.state.is_live else filled
        if power:
            yield request.location.location_id, Window.of(request), power


def committed_sells(
    intents: Iterable[Intent],
    sites: Collection[str],
    *,
    after: datetime,
    dry_run: bool | None = None,
) -> dict[Window, Decimal]:
    """W of the sells among `intents` at any of `sites`, per window ending after `after`. A sell
    naming several sites counts whole for each."""
    out: dict[Window, Decimal] = {}
    for named, window, power in sell_commitments(intents, after=after, dry_run=dry_run):
        if any(site in sites for site in named):
            out[window] = out.get(window, Decimal(0)) + power
    return out


def lapse_due(intent: Intent, now: datetime, grace: timedelta) -> bool:
    """An unknown intent whose expiry (and a grace for late reports) has passed can no longer
    trade: if it was placed, it expired unseen."""
    return intent.state is IntentState.UNKNOWN and now > intent.request.expiry_time + grace


def sold_power(tracker: OrderTracker) -> Callable[[str, datetime], Decimal]:
    """W of sells traded (contracts) for the window holding `at` at a location: what the assets
    must deliver then (the meters' `Delivering`, handed to them at wiring time)."""

    def delivering(location_id: str, at: datetime) -> Decimal:
        total = Decimal(0)
        for intent in tracker:
            request = intent.request
            if request.side != "sell" or location_id not in request.location.location_id:
                continue
            if Window.of(request).start <= at < Window.of(request).end and intent.order:
                # A pool's sites share what it sold (the synthetic meters' stand-in for dispatch).
                total += intent.order.filled_power / len(request.location.location_id)
        return total

    return delivering
