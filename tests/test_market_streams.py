"""WebSocket consumers (flexbot.market.streams) and the feed (flexbot.market.feed) against the
in-process sandbox, over real loopback WebSockets, with the sandbox's faults switched on.

Liveness runs on real trio time with short intervals (pings every 0.1-0.2 s, backoff of tens of
milliseconds); market time is the sandbox's manual wall, which these tests leave alone unless a
token must expire. Every wait for an outcome is bounded with `trio.fail_after` around the awaited
event (or a poll of a counter that the event moves); no fixed sleep decides a result.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
import trio.testing
import wsproto
import wsproto.events
from structlog.testing import capture_logs
from trio_websocket import WebSocketRequest, serve_websocket

from flexbot import model
from flexbot.backoff import Backoff
from flexbot.market import (
    Credentials,
    Endpoint,
    FeedSettings,
    MarketClient,
    MarketFeed,
    RetryPolicy,
    Secret,
    StreamConsumer,
    StreamSettings,
    TokenManager,
    TradeEvent,
)
from flexbot.market.feed import crossed_windows, differences
from flexbot.sandbox.faults import FaultSettings
from flexbot.sandbox.market import MarketSettings
from flexbot.sandbox.server import ServerSettings
from tests.conftest import MARKET_START, USERS, Sandbox
from tests.processes import free_port

pytestmark = pytest.mark.anyio

START = MARKET_START + timedelta(hours=1)
EXPIRY = MARKET_START + timedelta(minutes=30)
BOUND = 5.0  # the bound on any single wait for an outcome
FAST_BACKOFF = Backoff(base_s=0.05, cap_s=0.2)
FAST_REST = RetryPolicy(backoff=Backoff(base_s=0.01, cap_s=0.05))


@pytest.fixture
def market_settings(request: pytest.FixtureRequest) -> MarketSettings:
    """Faults on from the start when a test parametrizes this fixture with them (indirectly)."""
    faults: dict[str, Any] = getattr(request, "param", {})
    return MarketSettings(users=USERS, seed=7, rate_limit=None, faults=FaultSettings(**faults))


def with_faults(**faults: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("market_settings", [faults], indirect=True, ids=[""])


@pytest.fixture
def server_settings() -> ServerSettings:
    return ServerSettings(port=0, graceful_timeout_s=0.1, ws_ping_interval_s=None)


# --- helpers --------------------------------------------------------------------------------------


def stream_settings(sandbox: Sandbox | str, **changes: Any) -> StreamSettings:
    url = sandbox if isinstance(sandbox, str) else sandbox.running.ws_url
    base = StreamSettings(
        ws_url=url,
        ping_interval_s=0.2,
        backoff=FAST_BACKOFF,
        connect_timeout_s=2.0,
        close_timeout_s=0.5,
    )
    return attrs.evolve(base, **changes)


@pytest.fixture
async def http(sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=5) as client:
        yield client


@pytest.fixture
async def tokens(http: httpx.AsyncClient) -> TokenManager:
    tokens = TokenManager(http, Credentials("alice", Secret("alice-pw")))
    await tokens.login()
    return tokens


@pytest.fixture
def client(http: httpx.AsyncClient, tokens: TokenManager) -> MarketClient:
    return MarketClient(http, tokens, retry=FAST_REST)


def request(
    side: str,
    power: str = "1000",
    price: str = "0.30",
    *,
    slot: int = 0,
    country: str = "DE",
    baseline: bool = True,
) -> model.OrderRequest:
    """An order for the `slot`-th one-hour window after the market start (11:00 + slot hours)."""
    start = START + timedelta(hours=slot)
    end = start + timedelta(hours=1)
    reading = model.MeterReading(
        data_points=tuple(
            model.DataPoint(start + timedelta(minutes=15 * (i + 1)), Decimal("0.25"))
            for i in range(4)
        ),
        metering_id="m",
        reading_start=start,
        reading_end=end,
    )
    return model.OrderRequest(
        side=model.Side(side),
        power=Decimal(power),
        price=Decimal(price),
        delivery_start=start,
        delivery_end=end,
        expiry_time=EXPIRY,
        location=model.Location(("meter-1",), country),
        baseline=reading if side == "sell" and baseline else None,
    )


async def until(condition: Callable[[], bool], bound: float = BOUND) -> None:
    """Wait (bounded) for a condition that a running task makes true. The counters polled here
    belong to code under test that offers no event to wait on."""
    with trio.fail_after(bound):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.005)


@asynccontextmanager
async def running(*tasks: Callable[..., Any]) -> AsyncIterator[trio.Nursery]:
    """Start tasks that report started (consumers, feeds), cancel them all on exit."""
    async with trio.open_nursery() as nursery:
        for task in tasks:
            await nursery.start(task)
        yield nursery
        nursery.cancel_scope.cancel()


class FrameLog:
    """A consumer sink that keeps the decoded frames."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    async def __call__(self, frame: str | bytes) -> None:
        self.frames.append(orjson.loads(frame))

    def types(self) -> list[str]:
        return [f["type"] for f in self.frames]


# --- the consumer ---------------------------------------------------------------------------------


async def test_consumer_checks_the_control_message_then_delivers_frames(
    sandbox: Sandbox, tokens: TokenManager
) -> None:
    book, trade = FrameLog(), FrameLog()
    book_consumer = StreamConsumer(Endpoint.ORDERBOOK, stream_settings(sandbox), book)
    trade_consumer = StreamConsumer(Endpoint.TRADE, stream_settings(sandbox), trade, tokens=tokens)
    with capture_logs() as logs:
        async with running(book_consumer.run, trade_consumer.run):
            await until(lambda: trade_consumer.connected and len(book.frames) == 1)
            assert book.types() == ["orderbook_update"]  # the control was checked, not delivered
            sandbox.market.place("alice", request("buy"))
            await until(lambda: len(book.frames) == 2 and len(trade.frames) == 2)
    assert book.frames[1]["data"]["bids"]
    assert trade.types() == ["order_status_update", "order_status_update"]
    assert [f["name"] for f in trade.frames] == ["accepted", "matching_active"]
    for consumer in (book_consumer, trade_consumer):
        assert consumer.stats.connects == 1
        assert consumer.stats.bad_frames == 0
    connected = [e["endpoint"] for e in logs if e["event"] == "ws.connected"]
    assert sorted(connected) == ["orderbook", "trade"]


async def test_consumer_without_a_successful_control_message_reconnects() -> None:
    answered = 0

    async def refuse(request: WebSocketRequest) -> None:
        nonlocal answered
        ws = await request.accept()
        answered += 1
        await ws.send_message('{"type":"control","status":"error","data":{"message":"nope"}}')
        await ws.aclose()

    sink = FrameLog()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, refuse, "127.0.0.1", 0, None)
        consumer = StreamConsumer(
            Endpoint.TICKER, stream_settings(f"ws://127.0.0.1:{server.port}"), sink
        )
        await nursery.start(consumer.run)
        await until(lambda: consumer.stats.disconnect_reasons["no control message"] >= 3)
        nursery.cancel_scope.cancel()
    assert consumer.stats.connects == 0
    assert not consumer.connected
    assert sink.frames == []
    assert answered >= 3


@with_faults(ws_drop_every=0.5)
async def test_server_drops_make_every_consumer_reconnect_and_log_why(
    sandbox: Sandbox, client: MarketClient, tokens: TokenManager
) -> None:
    feed = MarketFeed(FeedSettings(stream_settings(sandbox)), client, tokens)
    with capture_logs() as logs:
        async with running(feed.run):
            await until(lambda: all(c.stats.connects >= 3 for c in feed.consumers.values()))
    assert set(feed.consumers) == set(Endpoint)
    for consumer in feed.consumers.values():
        assert consumer.stats.disconnect_reasons["closed"] >= 2
        assert consumer.stats.disconnects >= 2
    reasons = [e["reason"] for e in logs if e["event"] == "ws.disconnected"]
    assert any("1012" in r and "ws_drop_every" in r for r in reasons)
    endpoints = {e["endpoint"] for e in logs if e["event"] == "ws.reconnecting"}
    assert endpoints == {"trade", "ticker", "orderbook"}
    assert sandbox.market.faults.injected["ws_drop"] >= 6


@with_faults(ws_no_pong=True)
async def test_half_open_link_is_declared_dead_after_missed_pongs_and_reconnected(
    sandbox: Sandbox,
) -> None:
    sink = FrameLog()
    settings = stream_settings(sandbox, ping_interval_s=0.1, missed_pongs=3)
    consumer = StreamConsumer(Endpoint.ORDERBOOK, settings, sink)
    async with running(consumer.run):
        await until(lambda: consumer.stats.connects == 1)
        connected_at = trio.current_time()
        await until(lambda: consumer.stats.disconnects == 1)
        dead_after = trio.current_time() - connected_at
        await until(lambda: consumer.stats.connects == 2)  # and it comes back
        sandbox.market.faults.update({"ws_no_pong": False})
    assert consumer.stats.disconnect_reasons["3 pings unanswered"] >= 1
    # One interval asleep, then three intervals waiting for the pong: about 0.4 s.
    assert 0.35 <= dead_after < 1.5
    assert sandbox.market.faults.injected["ws_ping_unanswered"] >= 1


async def serve_half_open(stream: trio.SocketStream) -> None:
    """A WebSocket server that accepts, sends the control message, then never reads again: no
    pong, no close handshake, as a peer behind a dead NAT or a pulled cable looks."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    while True:
        ws.receive_data(await stream.receive_some())
        for event in ws.events():
            if isinstance(event, wsproto.events.Request):
                await stream.send_all(ws.send(wsproto.events.AcceptConnection()))
                control = '{"type":"control","status":"success","data":{"message":"hi"}}'
                await stream.send_all(ws.send(wsproto.events.TextMessage(data=control)))
                await trio.sleep_forever()


async def test_a_truly_half_open_link_is_one_disconnect_with_the_watchdogs_reason() -> None:
    sink = FrameLog()
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            serve = partial(trio.serve_tcp, serve_half_open, 0, host="127.0.0.1")
            listeners = await nursery.start(serve)
            port = listeners[0].socket.getsockname()[1]
            settings = stream_settings(
                f"ws://127.0.0.1:{port}", ping_interval_s=0.1, close_timeout_s=0.2
            )
            consumer = StreamConsumer(Endpoint.TICKER, settings, sink)
            await nursery.start(consumer.run)
            await until(lambda: consumer.stats.connects == 2)
            nursery.cancel_scope.cancel()
    assert consumer.stats.disconnects == 1
    assert consumer.stats.disconnect_reasons == {"3 pings unanswered": 1}
    reconnecting = [e["reason"] for e in logs if e["event"] == "ws.reconnecting"]
    assert reconnecting[0] == "3 pings unanswered"


async def test_trade_handshake_refused_with_401_renews_the_token_and_reconnects(
    sandbox: Sandbox, tokens: TokenManager
) -> None:
    stale = await tokens.token()
    sandbox.advance(301)  # the market's view: that access token has expired
    sink = FrameLog()
    consumer = StreamConsumer(Endpoint.TRADE, stream_settings(sandbox), sink, tokens=tokens)
    async with running(consumer.run):
        await until(lambda: consumer.connected)
    assert consumer.stats.disconnect_reasons == {"handshake refused with HTTP 401": 1}
    assert consumer.stats.connects == 1
    assert tokens.grants == 2
    assert await tokens.token() != stale
    assert sandbox.running.hub.stats["refused_unauthenticated"] == 1


@with_faults(ws_malformed_rate=1.0)
async def test_malformed_frames_are_counted_and_never_kill_the_consumer(
    sandbox: Sandbox,
) -> None:
    feed = MarketFeed(
        FeedSettings(stream_settings(sandbox)), None, None, endpoints=(Endpoint.TICKER,)
    )
    consumer = feed.consumers[Endpoint.TICKER]
    trades = 5
    with capture_logs() as logs:
        async with running(feed.run):
            await until(lambda: consumer.connected)
            for i in range(trades):
                sandbox.market.place("alice", request("sell", price=f"0.3{i}", slot=i))
                sandbox.market.place("bob", request("buy", price="0.50", slot=i))
            prices = []
            with trio.fail_after(BOUND):
                for _ in range(trades):
                    message = await feed.ticker.get()
                    assert isinstance(message, model.TickerUpdate)
                    prices.append(message.data.price)
            await until(lambda: consumer.stats.bad_frames == trades)
    assert prices == [Decimal(f"0.3{i}") for i in range(trades)]
    assert consumer.stats.connects == 1
    assert consumer.stats.disconnects == 0
    assert len([e for e in logs if e["event"] == "ws.bad_message"]) == trades


@with_faults(ws_drop_every=0.5)
async def test_backoff_starts_over_after_a_stable_connection(sandbox: Sandbox) -> None:
    # Connections live about 0.5 s between drops: stable for one consumer (after 0.2 s), never
    # for the other (after 60 s), whose attempts keep counting.
    stable = StreamConsumer(
        Endpoint.TICKER, stream_settings(sandbox, stable_after_s=0.2), FrameLog()
    )
    flapping = StreamConsumer(
        Endpoint.ORDERBOOK, stream_settings(sandbox, stable_after_s=60), FrameLog()
    )
    with capture_logs() as logs:
        async with running(stable.run, flapping.run):
            await until(lambda: min(stable.stats.connects, flapping.stats.connects) >= 4)
    attempts: dict[str, list[int]] = {"ticker": [], "orderbook": []}
    for e in logs:
        if e["event"] == "ws.reconnecting":
            attempts[e["endpoint"]].append(e["attempt"])
    assert attempts["ticker"][:3] == [1, 1, 1]
    assert attempts["orderbook"][:3] == [1, 2, 3]


# --- the feed: order books and ticker -------------------------------------------------------------


def public_feed(sandbox: Sandbox, *endpoints: Endpoint, **feed: Any) -> MarketFeed:
    return MarketFeed(
        FeedSettings(stream_settings(sandbox), **feed), None, None, endpoints=endpoints
    )


async def test_a_slow_book_reader_gets_the_newest_book_and_skipped_books_are_counted(
    sandbox: Sandbox,
) -> None:
    feed = public_feed(sandbox, Endpoint.ORDERBOOK)
    consumer = feed.consumers[Endpoint.ORDERBOOK]
    async with running(feed.run):
        with trio.fail_after(BOUND):
            first = await feed.next_book()
        assert first == model.OrderBook()
        for i in range(10):
            sandbox.market.place("alice", request("buy", price=f"0.{10 + i}"))
        await until(lambda: consumer.stats.frames == 11)  # the snapshot and ten changes
        with trio.fail_after(BOUND):
            book = await feed.next_book()
    assert book is not None
    assert [e.price for e in book.flat_bids()] == [Decimal(f"0.{19 - i}") for i in range(10)]
    assert feed.books_replaced == 9


async def test_next_book_is_none_after_a_drop_then_the_new_connections_book(
    sandbox: Sandbox,
) -> None:
    sandbox.market.place("alice", request("buy"))
    feed = public_feed(sandbox, Endpoint.ORDERBOOK)
    consumer = feed.consumers[Endpoint.ORDERBOOK]
    async with running(feed.run):
        with trio.fail_after(BOUND):
            assert await feed.next_book() is not None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drop_once_the_reader_waits, sandbox)
                unknown = await feed.next_book()
            again = await feed.next_book()
    assert unknown is None
    assert again is not None
    assert len(again.flat_bids()) == 1
    assert consumer.stats.connects == 2


async def drop_once_the_reader_waits(sandbox: Sandbox) -> None:
    await trio.testing.wait_all_tasks_blocked()
    sandbox.running.hub.drop_all(1012, "test drop")


async def test_ticker_events_arrive_in_order_and_overflow_drops_the_oldest(
    sandbox: Sandbox,
) -> None:
    feed = public_feed(sandbox, Endpoint.TICKER, ticker_buffer=3)
    consumer = feed.consumers[Endpoint.TICKER]
    with capture_logs() as logs:
        async with running(feed.run):
            await until(lambda: consumer.connected)
            for i in range(10):
                sandbox.market.place("alice", request("sell", price=f"0.{30 + i}", slot=i))
                sandbox.market.place("bob", request("buy", price="0.90", slot=i))
            await until(lambda: consumer.stats.frames == 10)
            kept = [await feed.ticker.get() for _ in range(3)]
            sandbox.market.place("alice", request("sell", price="0.77", slot=11))
            sandbox.market.place("bob", request("buy", price="0.90", slot=11))
            with trio.fail_after(BOUND):
                latest = await feed.ticker.get()
    prices = [m.data.price for m in kept if isinstance(m, model.TickerUpdate)]
    assert prices == [Decimal("0.37"), Decimal("0.38"), Decimal("0.39")]
    assert isinstance(latest, model.TickerUpdate)
    assert latest.data.price == Decimal("0.77")
    assert feed.ticker.dropped == 7
    assert any(e["event"] == "feed.ticker_dropped" for e in logs)


@with_faults(ws_malformed_rate=1.0)
async def test_a_malformed_book_frame_does_not_hide_the_newest_good_book(
    sandbox: Sandbox,
) -> None:
    feed = public_feed(sandbox, Endpoint.ORDERBOOK)
    consumer = feed.consumers[Endpoint.ORDERBOOK]
    async with running(feed.run):
        with trio.fail_after(BOUND):
            await feed.next_book()  # the snapshot at connect (sent without a malformed frame)
        sandbox.market.place("alice", request("buy"))
        await until(lambda: consumer.stats.frames == 3)  # snapshot, new book, malformed frame
        with trio.fail_after(1):
            book = await feed.next_book()
    assert book is not None
    assert len(book.flat_bids()) == 1


# --- /trade: the order truth ----------------------------------------------------------------------


def rank(order: model.Order) -> tuple[bool, int, int]:
    """How far an order's life has come; a consumer never moves an order backwards."""
    steps = ["awaiting_baseline_data", "accepted", "matching_active", "partial_filled"]
    status = str(order.status)
    step = steps.index(status) if status in steps else len(steps)
    return (order.is_final, len(order.contracts), step)


class Journal:
    """What a daemon's order journal does with the feed: tracks the caller's orders and applies
    every TradeEvent idempotently. It is the feed's `OrderSource`."""

    def __init__(self) -> None:
        self.orders: dict[str, model.Order | None] = {}
        self.contracts: dict[str, model.Contract] = {}
        self.events: list[TradeEvent] = []
        self.changed = trio.Event()

    def open_orders(self) -> Mapping[str, model.Order | None]:
        return {k: o for k, o in self.orders.items() if o is None or not o.is_final}

    def track(self, order: model.Order) -> None:
        self._order(order)

    def apply(self, event: TradeEvent) -> None:
        self.events.append(event)
        message = event.message
        if isinstance(message, model.OrderStatusUpdate):
            self._order(message.data)
        elif isinstance(message, model.ContractStatusUpdate):
            self.contracts[message.data.contract_id] = message.data
        self.changed.set()
        self.changed = trio.Event()

    def _order(self, order: model.Order) -> None:
        known = self.orders.get(order.order_id)
        if known is None or rank(order) >= rank(known):
            self.orders[order.order_id] = order
        for contract in order.contracts:
            self.contracts.setdefault(contract.contract_id, contract)

    def state(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        return {
            order_id: (str(o.status), tuple(sorted(c.contract_id for c in o.contracts)))
            for order_id, o in self.orders.items()
            if o is not None
        }

    async def consume(self, feed: MarketFeed) -> None:
        async for event in feed.trade:
            self.apply(event)


def truth(sandbox: Sandbox, user: str = "alice") -> dict[str, tuple[str, tuple[str, ...]]]:
    return {
        o.order_id: (str(o.status), tuple(sorted(o.contract_ids)))
        for o in sandbox.market.matcher.orders(user)
    }


async def until_journal_matches(journal: Journal, sandbox: Sandbox, bound: float = BOUND) -> None:
    with trio.fail_after(bound):
        while journal.state() != truth(sandbox):
            await journal.changed.wait()


def trade_feed(
    sandbox: Sandbox | str,
    client: MarketClient,
    tokens: TokenManager,
    journal: Journal,
    streams: StreamSettings | None = None,
    **feed: Any,
) -> MarketFeed:
    """A feed of alice's /trade stream that reconciles the orders `journal` tracks."""
    settings = FeedSettings(streams or stream_settings(sandbox), **feed)
    return MarketFeed(settings, client, tokens, orders=journal, endpoints=(Endpoint.TRADE,))


@with_faults(ws_drop_every=0.5)
async def test_no_trade_event_is_lost_across_drops(
    sandbox: Sandbox, client: MarketClient, tokens: TokenManager
) -> None:
    journal = Journal()
    feed = trade_feed(sandbox, client, tokens, journal, poll_interval_s=0.3)
    consumer = feed.consumers[Endpoint.TRADE]
    hub = sandbox.running.hub
    async with running(feed.run) as nursery:
        nursery.start_soon(journal.consume, feed)
        await until(lambda: consumer.connected)
        for i in range(8):
            if i % 2 == 0:  # alice sells, bob's buy takes it whole
                mine = await client.submit_order(request("sell", price=f"0.3{i}", slot=i))
                journal.track(mine)
                counter = request("buy", price="0.50", slot=i)
            else:  # alice buys 2 kW, bob sells 1 kW: a partial fill, then alice cancels
                mine = await client.submit_order(request("buy", "2000", "0.60", slot=i))
                journal.track(mine)
                counter = request("sell", price="0.40", slot=i)
            if i % 3 == 0:
                # Cut alice's /trade link and fill at once: these events cannot reach her socket.
                hub.drop_all(1012, "test: drop before the fill")
            sandbox.market.place("bob", counter)
            if i % 2 == 1:
                cancelled = await client.cancel_order(mine.order_id)
                assert cancelled is not None
                journal.track(cancelled)  # what the cancel answered, as a journal would
            await trio.sleep(0.1)  # pace the rounds across several drops
        await until_journal_matches(journal, sandbox)
    final = truth(sandbox)
    assert len(final) == 8
    assert {status for status, _ in final.values()} == {"filled", "cancelled"}
    assert all(len(contracts) == 1 for _, contracts in final.values())
    assert set(journal.contracts) == {c for _, cs in final.values() for c in cs}
    assert any(e.source == "reconcile" for e in journal.events)
    assert feed.reconciled_events > 0
    assert consumer.stats.connects >= 3


async def test_polling_reconciles_while_trade_cannot_connect(
    sandbox: Sandbox, client: MarketClient, tokens: TokenManager
) -> None:
    journal = Journal()
    dead = f"ws://127.0.0.1:{free_port()}"  # nothing listens there: /trade is down
    feed = trade_feed(dead, client, tokens, journal, poll_interval_s=0.1)
    consumer = feed.consumers[Endpoint.TRADE]
    gets = 0
    real_get = client.get_order

    async def counting_get(order_id: str) -> model.Order:
        nonlocal gets
        gets += 1
        return await real_get(order_id)

    client.get_order = counting_get  # type: ignore[method-assign]
    async with running(feed.run) as nursery:
        nursery.start_soon(journal.consume, feed)
        filled = await client.submit_order(request("sell", slot=0))
        resting = await client.submit_order(request("sell", price="0.90", slot=1))
        for order in (filled, resting):
            journal.track(order)
        sandbox.market.place("bob", request("buy", price="0.50", slot=0))
        await until_journal_matches(journal, sandbox)
        await until(lambda: feed.reconciled_events == 2)  # counted once all were sent
        seen = gets
        await until(lambda: gets >= seen + 5)  # five more polls of the resting order...
        assert feed.reconciled_events == 2  # ...and no event: it has not changed
    assert consumer.stats.connects == 0
    assert consumer.stats.disconnect_reasons["connect failed"] >= 1
    sources = {e.source for e in journal.events}
    assert sources == {"reconcile"}
    kinds = [type(e.message).__name__ for e in journal.events]
    assert kinds == ["ContractStatusUpdate", "OrderStatusUpdate"]
    assert journal.state()[filled.order_id][0] == "filled"


async def test_polling_reconciles_while_trade_is_connected_but_silent(
    sandbox: Sandbox,
    client: MarketClient,
    tokens: TokenManager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    journal = Journal()
    quiet = stream_settings(sandbox, ping_interval_s=20.0)  # no pong breaks the silence
    feed = trade_feed(
        sandbox, client, tokens, journal, quiet, poll_interval_s=0.1, trade_silence_s=0.05
    )
    consumer = feed.consumers[Endpoint.TRADE]
    # A link that is up but delivers nothing: the sandbox stops sending /trade messages.
    monkeypatch.setattr(sandbox.running.hub, "_to_user", lambda user, message: None)
    async with running(feed.run) as nursery:
        nursery.start_soon(journal.consume, feed)
        await until(lambda: consumer.connected)
        mine = await client.submit_order(request("sell", slot=0))
        journal.track(mine)
        sandbox.market.place("bob", request("buy", price="0.50", slot=0))
        await until_journal_matches(journal, sandbox)
    assert (consumer.stats.connects, consumer.stats.disconnects) == (1, 0)  # up all along
    assert {e.source for e in journal.events} == {"reconcile"}


async def test_reconcile_emits_nothing_when_the_journal_is_up_to_date(
    sandbox: Sandbox, client: MarketClient, tokens: TokenManager
) -> None:
    journal = Journal()
    feed = trade_feed(sandbox, client, tokens, journal)
    orders = [await client.submit_order(request("sell", price=f"0.3{i}", slot=i)) for i in range(3)]
    for order in orders:
        journal.track(await client.get_order(order.order_id))
    assert await feed.reconcile() == 0
    # One fill behind: exactly that order's contract and new status.
    sandbox.market.place("bob", request("buy", price="0.50", slot=1))
    assert await feed.reconcile() == 2
    events = [feed.trade.receive_nowait() for _ in range(2)]
    assert all(e.source == "reconcile" for e in events)
    assert isinstance(events[0].message, model.ContractStatusUpdate)
    assert isinstance(events[1].message, model.OrderStatusUpdate)
    assert events[1].message.data.order_id == orders[1].order_id
    assert events[1].message.name == "filled"
    with pytest.raises(trio.WouldBlock):
        feed.trade.receive_nowait()


async def test_reconcile_leaves_an_unknown_order_unknown(
    sandbox: Sandbox, client: MarketClient, tokens: TokenManager
) -> None:
    journal = Journal()
    journal.orders["no-such-order"] = None
    feed = trade_feed(sandbox, client, tokens, journal)
    with capture_logs() as logs:
        assert await feed.reconcile() == 0
    assert journal.orders == {"no-such-order": None}  # never taken as cancelled
    assert any(e["event"] == "reconcile.unknown_order" for e in logs)


# --- differences() --------------------------------------------------------------------------------


def an_order(
    status: str = "matching_active", contracts: tuple[model.Contract, ...] = ()
) -> model.Order:
    return model.Order(
        order_id="o-1",
        side=model.Side.SELL,
        power=Decimal(1000),
        price=Decimal("0.30"),
        delivery_start=START,
        delivery_end=START + timedelta(hours=1),
        status=status,
        contracts=contracts,
    )


def a_contract(contract_id: str = "c-1", status: str = "created") -> model.Contract:
    return model.Contract(
        contract_id=contract_id,
        buy_order_id="b-1",
        sell_order_id="o-1",
        power=Decimal(1000),
        energy=Decimal(1000),
        price=Decimal("0.30"),
        delivery_start=START,
        delivery_end=START + timedelta(hours=1),
        status=status,
    )


def kinds(messages: list[Any]) -> list[tuple[str, str]]:
    return [(m.type, m.name) for m in messages]


def test_differences_of_an_unchanged_order_are_none() -> None:
    order = an_order("partial_filled", (a_contract(),))
    assert differences(order, order) == []


def test_differences_of_a_never_seen_order_is_its_state() -> None:
    assert kinds(differences(None, an_order())) == [("order_status_update", "matching_active")]
    filled = an_order("filled", (a_contract(),))
    assert kinds(differences(None, filled)) == [
        ("contract_status_update", "created"),
        ("order_status_update", "filled"),
    ]


def test_differences_of_a_status_change_is_one_order_event() -> None:
    out = differences(an_order("matching_active"), an_order("cancelled"))
    assert out == [model.OrderStatusUpdate(data=an_order("cancelled"), name="cancelled")]


def test_differences_of_a_fill_are_the_new_contract_then_the_order() -> None:
    old = an_order("partial_filled", (a_contract("c-1"),))
    new = an_order("filled", (a_contract("c-1"), a_contract("c-2")))
    out = differences(old, new)
    assert out == [
        model.ContractStatusUpdate(data=a_contract("c-2"), name="created"),
        model.OrderStatusUpdate(data=new, name="filled"),
    ]


def test_differences_of_a_contract_step_name_the_contract_and_the_order() -> None:
    old = an_order("filled", (a_contract(status="created"),))
    new = an_order("filled", (a_contract(status="verification_initiated"),))
    assert kinds(differences(old, new)) == [
        ("contract_status_update", "verification_initiated"),
        ("order_status_update", "filled"),
    ]


def _entry(side: str, power: str, price: str, country: str = "DE") -> model.BookEntry:
    start = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    return model.BookEntry(
        side=side,
        power=Decimal(power),
        price=Decimal(price),
        delivery_start=start,
        delivery_end=start + timedelta(minutes=15),
        location=model.Location(("x",), country),
    )


@pytest.mark.parametrize(
    ("bid", "ask", "crossed"),
    [
        (("1000", "0.20"), ("1000", "0.18"), True),  # could have traded
        (("1000", "0.18"), ("1000", "0.18"), True),  # bid == ask trades too
        (("500", "0.20"), ("1000", "0.18"), False),  # the all-or-nothing sell is too big
        (("1000", "0.17"), ("1000", "0.18"), False),  # no price overlap
    ],
)
def test_a_book_is_crossed_only_where_a_bid_could_have_taken_an_ask(
    bid: tuple[str, str], ask: tuple[str, str], crossed: bool
) -> None:
    book = model.OrderBook(bids={"1": (_entry("buy", *bid),)}, asks={"2": (_entry("sell", *ask),)})
    assert bool(crossed_windows(book)) is crossed


def test_different_countries_do_not_cross() -> None:
    book = model.OrderBook(
        bids={"1": (_entry("buy", "1000", "0.3", "DE"),)},
        asks={"2": (_entry("sell", "1000", "0.1", "FR"),)},
    )
    assert crossed_windows(book) == {}
