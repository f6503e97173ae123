"""`MarketFeed`: the three streams, delivered by the rules of ARCHITECTURE.md, and the order truth.

- `/orderbook` frames are full snapshots: each is parsed as JSON on arrival (cheap, and a frame
  that is no book never displaces a good one), goes into a `Conflator`, and is structured into
  model objects only when a reader asks (`next_book`): a slow reader gets the newest book, never a
  backlog, and the dear structuring is paid only for books someone reads. `None` from
  `next_book` means "book unknown": the link dropped; the next book comes from the new connection.
- `/ticker` events are facts: decoded at once and kept in order in a bounded buffer that drops the
  oldest on overflow (counted and logged).
- `/trade` events are never dropped: they go through a bounded channel that the socket reader waits
  on. If the reader falls far behind, the server cuts the link, and reconciliation (below) restores
  the truth on reconnect: nothing is lost either way.

The book and ticker buffers are `flexbot.buffers`' one implementation, which each strategy's inbox
uses too; the metrics and alarms read their sizes and drops (`flexbot_backlog_*`, `backlog_full`).

Reconciliation is the snapshot-then-updates pattern of exchange order channels: after every
(re)connect of `/trade`, and every `poll_interval_s` while `/trade` is down or silent for longer
than `trade_silence_s`, the state of every order the caller tracks as open (`OrderSource`) is
fetched over REST and every difference from the caller's last known state is emitted as an event
(`source="reconcile"`). An order the market does not know (404) is logged and left unknown, never
taken as cancelled. Events may therefore repeat a state already seen, or arrive after a newer one
came by another path: consumers apply them idempotently and never move an order backwards out of a
final status.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, Protocol

import trio
from attrs import frozen

from flexbot import logs, model, rules, wire
from flexbot.buffers import Conflator, DropOldest
from flexbot.market.auth import TokenManager
from flexbot.market.errors import MarketError, NotFound
from flexbot.market.rest import MarketClient
from flexbot.market.streams import Endpoint, StreamConsumer, StreamSettings, decode_frame
from flexbot.problems import Invalid

log = logs.get_logger("flexbot.market.feed")

TradeMessage = model.OrderStatusUpdate | model.ContractStatusUpdate | model.UnknownMessage


@frozen
class TradeEvent:
    message: TradeMessage
    source: Literal["ws", "reconcile"] = "ws"


class OrderSource(Protocol):
    def open_orders(self) -> Mapping[str, model.Order | None]:
        """Every order the caller still expects news of, with its last known state (None: never
        seen): open orders, and also final ones whose contracts are not settled yet, or their
        verification and settlement updates could be missed after a drop."""
        ...


class NoOrders:
    """An `OrderSource` that tracks nothing (the `watch` command)."""

    def open_orders(self) -> Mapping[str, model.Order | None]:
        return {}


@frozen
class FeedSettings:
    streams: StreamSettings
    ticker_buffer: int = 1024
    trade_buffer: int = 1024
    poll_interval_s: float = 2.0
    trade_silence_s: float = 60.0
    reconcile_in_flight: int = 4


class MarketFeed:
    def __init__(
        self,
        settings: FeedSettings,
        client: MarketClient | None,
        tokens: TokenManager | None,
        *,
        orders: OrderSource | None = None,
        ssl_context: ssl.SSLContext | None = None,
        endpoints: tuple[Endpoint, ...] = tuple(Endpoint),
        recorder: Callable[[Endpoint, str | bytes], None] | None = None,
    ) -> None:
        if Endpoint.TRADE in endpoints and (client is None or tokens is None):
            raise ValueError("/trade needs a token and a REST client (for reconciliation)")
        self.settings = settings
        self._recorder = recorder  # sees every frame as received, before anything else
        self._client = client
        self._orders = orders or NoOrders()
        # Parsed JSON of the newest book frame; None after a drop (the book is unknown).
        self._books: Conflator[dict[str, Any] | None] = Conflator()
        self.ticker: DropOldest[model.Message] = DropOldest(settings.ticker_buffer)
        self._trade_in, self.trade = trio.open_memory_channel[TradeEvent](settings.trade_buffer)
        self.consumers: dict[Endpoint, StreamConsumer] = {}
        sinks = {
            Endpoint.TRADE: self._on_trade_frame,
            Endpoint.TICKER: self._on_ticker_frame,
            Endpoint.ORDERBOOK: self._on_book_frame,
        }
        hooks = {Endpoint.TRADE: self._reconcile_on_connect}
        for endpoint in endpoints:
            self.consumers[endpoint] = StreamConsumer(
                endpoint,
                settings.streams,
                sinks[endpoint],
                tokens=tokens,
                ssl_context=ssl_context,
                on_connect=hooks.get(endpoint),
                on_disconnect=self._book_unknown if endpoint is Endpoint.ORDERBOOK else None,
            )
        self.book_decode_failures = 0
        self._unconfirmed: set[str] = set()  # order ids whose latest state we failed to learn
        self._crossed: set[CrossKey] = set()
        self.reconciled_events = 0
        # Set once /trade has connected and the tracked orders were reconciled (READY waits).
        self.reconciled = trio.Event()
        if Endpoint.TRADE not in endpoints:
            self.reconciled.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for consumer in self.consumers.values():
                await nursery.start(consumer.run)
            if Endpoint.TRADE in self.consumers:
                nursery.start_soon(self._poll_while_trade_is_unreliable)
            task_status.started()

    # --- order book -----------------------------------------------------------------------------

    async def _on_book_frame(self, frame: str | bytes) -> None:
        if self._recorder is not None:
            self._recorder(Endpoint.ORDERBOOK, frame)
        # Parse (cheap) now, structure (dear) on read: a frame that is not even a JSON book must
        # not displace the newest good one.
        try:
            data = wire.loads(frame)
        except Invalid:
            data = None
        if isinstance(data, dict) and data.get("type") == model.MessageType.ORDERBOOK_UPDATE:
            self._books.put(data)
        else:  # counted and logged there
            decode_frame(frame, Endpoint.ORDERBOOK, self.consumers[Endpoint.ORDERBOOK].stats)
            self.book_decode_failures += 1

    async def _book_unknown(self) -> None:
        self._books.put(None)

    async def next_book(self) -> model.OrderBook | None:
        """The newest book (waiting for one if none is new), or None when it is unknown."""
        while True:
            data = await self._books.get()
            if data is None:
                return None
            try:
                message = wire.message_from_data(data)
            except Invalid as exc:
                self.consumers[Endpoint.ORDERBOOK].stats.bad_frames += 1
                self.book_decode_failures += 1
                log.warning("ws.bad_message", endpoint="orderbook", error=str(exc)[:300])
                continue
            assert isinstance(message, model.OrderBookUpdate)  # its type was checked on arrival
            self._log_new_crossings(message.data)
            return message.data

    def _log_new_crossings(self, book: model.OrderBook) -> None:
        """Log a crossed (window, country) once, when it appears, not in every book after."""
        crossed = crossed_windows(book)
        for (start, end, country), (bid, ask) in crossed.items():
            if (start, end, country) not in self._crossed:
                log.info(
                    "book.crossed",
                    delivery_start=wire.format_datetime(start),
                    delivery_end=wire.format_datetime(end),
                    country=country,
                    bid=float(bid),
                    ask=float(ask),
                )
        self._crossed = set(crossed)

    @property
    def books_replaced(self) -> int:
        """Books overwritten before anyone read them (conflation at work)."""
        return self._books.replaced

    # --- ticker ---------------------------------------------------------------------------------

    async def _on_ticker_frame(self, frame: str | bytes) -> None:
        if self._recorder is not None:
            self._recorder(Endpoint.TICKER, frame)
        message = decode_frame(frame, Endpoint.TICKER, self.consumers[Endpoint.TICKER].stats)
        if message is None or self.ticker.put(message):
            return
        if self.ticker.dropped == 1 or self.ticker.dropped % 100 == 0:  # log, but not each drop
            log.warning("feed.ticker_dropped", dropped=self.ticker.dropped)

    # --- trade and the order truth --------------------------------------------------------------

    async def _on_trade_frame(self, frame: str | bytes) -> None:
        if self._recorder is not None:
            self._recorder(Endpoint.TRADE, frame)
        message = decode_frame(frame, Endpoint.TRADE, self.consumers[Endpoint.TRADE].stats)
        if message is None:
            # An own-order event we could not read: find out from REST what it said.
            self._unconfirmed.update(self._orders.open_orders())
            return
        if isinstance(
            message, model.OrderStatusUpdate | model.ContractStatusUpdate | model.UnknownMessage
        ):
            await self._trade_in.send(TradeEvent(message))

    async def _reconcile_on_connect(self) -> None:
        await self.reconcile()
        self.reconciled.set()  # the first time: the order truth is known

    async def reconcile(self) -> int:
        """Fetch every open order the caller tracks; emit what differs. Returns events emitted."""
        tracked = dict(self._orders.open_orders())
        client = self._client
        if not tracked or client is None:
            return 0
        fetched: dict[str, model.Order] = {}
        limiter = trio.CapacityLimiter(self.settings.reconcile_in_flight)

        async def fetch(order_id: str) -> None:
            async with limiter:
                try:
                    fetched[order_id] = await client.get_order(order_id)
                except NotFound:
                    log.warning("reconcile.unknown_order", order_id=order_id)
                except MarketError as exc:
                    log.info("reconcile.fetch_failed", order_id=order_id, reason=str(exc))

        async with trio.open_nursery() as nursery:
            for order_id in tracked:
                nursery.start_soon(fetch, order_id)
        # What could not be fetched is tried again by the poller, however healthy /trade looks.
        self._unconfirmed = set(tracked) - set(fetched)
        emitted = 0
        for order_id, order in fetched.items():
            for message in differences(tracked[order_id], order):
                await self._trade_in.send(TradeEvent(message, source="reconcile"))
                emitted += 1
        if emitted:
            log.info("reconcile.done", orders=len(tracked), events=emitted)
        self.reconciled_events += emitted
        return emitted

    async def _poll_while_trade_is_unreliable(self) -> None:
        trade = self.consumers[Endpoint.TRADE]
        while True:
            await trio.sleep(self.settings.poll_interval_s)
            silent_for = trio.current_time() - trade.last_frame_at
            unreliable = not trade.connected or silent_for > self.settings.trade_silence_s
            if unreliable or self._unconfirmed:
                await self.reconcile()


def differences(known: model.Order | None, current: model.Order) -> list[TradeMessage]:
    """The events that take a consumer from `known` to `current` (contracts first, as the market
    sends them: a fill's contract, then the order's new status)."""
    out: list[TradeMessage] = []
    known_contracts = {c.contract_id: c for c in known.contracts} if known else {}
    for contract in current.contracts:
        if known_contracts.get(contract.contract_id) != contract:
            out.append(model.ContractStatusUpdate(data=contract, name=str(contract.status)))
    if known is None or known.status != current.status or out:
        out.append(model.OrderStatusUpdate(data=current, name=str(current.status)))
    return out


CrossKey = tuple[datetime, datetime, str]


def crossed_windows(book: model.OrderBook) -> dict[CrossKey, tuple[Decimal, Decimal]]:
    """(window, country) → (bid, ask) where a bid and an ask could have traded and did not: they
    may meet (`rules.may_meet`: an empty country meets any), the bid is at least the ask and large
    enough to take the (all-or-nothing) sell. The market may still leave such a pair (the same
    owner on both sides is invisible here), so it is an anomaly to log, never an error. The key's
    country is the ask's, or the bid's where the ask names none."""
    bids: dict[tuple[datetime, datetime], list[model.BookEntry]] = {}
    for entry in book.flat_bids():
        bids.setdefault((entry.delivery_start, entry.delivery_end), []).append(entry)
    crossed: dict[CrossKey, tuple[Decimal, Decimal]] = {}
    for ask in book.flat_asks():
        for bid in bids.get((ask.delivery_start, ask.delivery_end), ()):
            if bid.price < ask.price:
                break  # bids are best first: none further can cross
            if bid.power >= ask.power and rules.may_meet(bid, ask):
                country = ask.location.country_code or bid.location.country_code
                crossed.setdefault(
                    (ask.delivery_start, ask.delivery_end, country), (bid.price, ask.price)
                )
                break
    return crossed
