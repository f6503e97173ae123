"""The client survives a huge book (issue 14): a message over the size limit closes only its own
link (1009), is logged once per episode and counted, and the consumer retries near the backoff's
cap instead of fetching the same huge snapshot in a tight loop.

Seen: 17 orders with a 1 MB location id made the public book 18.8 MB; every client's /orderbook
link was closed with 1009, reconnected at once, got the same snapshot, and looped.

The server is a small trio-websocket server on a real loopback port that serves the three
endpoints; /orderbook sends a book too large for the client's limit. Each of those tests runs in
its own `trio.run` on a `MockClock` that jumps whenever every task waits (the threshold leaves
loopback I/O time to arrive), so minutes of backoff take a moment and the counts are exact. The
last test runs the daemon's feed against the in-process sandbox (conftest.py) in real time.
"""

from __future__ import annotations

import gc
import random
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
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
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from flexbot import model
from flexbot.backoff import Backoff
from flexbot.market import (
    Credentials,
    Endpoint,
    FeedSettings,
    MarketClient,
    MarketFeed,
    Secret,
    StreamConsumer,
    StreamSettings,
    TokenManager,
)
from flexbot.market.streams import MAX_BOOK_MESSAGE_BYTES, MAX_MESSAGE_BYTES
from flexbot.metrics import stream_metrics
from flexbot.sandbox.market import MarketSettings
from flexbot.sandbox.server import ServerSettings
from tests.conftest import USERS, Sandbox
from tests.test_market_streams import request

LIMIT = 256 * 1024  # the client's book limit in these tests: larger than one socket read
CAP_S = 30.0  # the default backoff's cap
CONTROL = (
    '{"type":"control","status":"success","data":{"message":"Connected to the WebSocket API"}}'
)
JUMP_AFTER_S = 0.02  # real seconds every task must wait before the mock clock jumps


def book(location_id_chars: int) -> str:
    """An `orderbook_update` with one bid whose location id is `location_id_chars` long."""
    entry = {
        "side": "buy",
        "power": 1000,
        "price": 0.3,
        "delivery_start": "2030-01-01T11:00:00Z",
        "delivery_end": "2030-01-01T12:00:00Z",
        "location": {"location_id": ["x" * location_id_chars], "country_code": "DE"},
        "energy": 1000,
    }
    data = {"bids": {"100": [entry]}, "asks": {}}
    message = {"type": "orderbook_update", "created_at": "2030-01-01T10:00:00Z", "data": data}
    return orjson.dumps(message).decode()


HUGE_BOOK = book(LIMIT + 1000)
SMALL_BOOK = book(8)


@attrs.define
class Market:
    """What the test server sends, and what it saw."""

    big: bool = True  # /orderbook sends HUGE_BOOK (else SMALL_BOOK)
    connections: Counter[str] = attrs.field(factory=Counter)
    push: trio.Event = attrs.field(factory=trio.Event)  # set: send the book again on every link

    async def serve(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        endpoint = request.path.rstrip("/").rsplit("/", 1)[-1]
        self.connections[endpoint] += 1
        try:
            await ws.send_message(CONTROL)
            if endpoint != "orderbook":
                await trio.sleep_forever()  # quiet: answers pings, sends nothing
            while True:
                await ws.send_message(HUGE_BOOK if self.big else SMALL_BOOK)
                await self.push.wait()
        except ConnectionClosed:
            pass  # the client closed it (1009 after an oversized book)


def settings(url: str, **changes: Any) -> StreamSettings:
    # Pings far apart: the links stay up on their own and no watchdog deadline lets the mock
    # clock cut a handshake short while bytes are in flight.
    base = StreamSettings(
        ws_url=url, ping_interval_s=10_000, silence_s=100_000, max_book_message_bytes=LIMIT
    )
    return attrs.evolve(base, **changes)


def run(main: Callable[[], Awaitable[None]]) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=JUMP_AFTER_S))


async def until(condition: Callable[[], bool]) -> None:
    """Wait (an hour of mock time at most) for a condition that a running task makes true; polled
    seldom, since every poll that finds all else asleep costs a clock jump's real wait."""
    with trio.fail_after(3600):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(5)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_the_book_has_a_larger_limit_than_the_other_streams() -> None:
    defaults = StreamSettings(ws_url="ws://x")
    assert defaults.max_book_message_bytes == MAX_BOOK_MESSAGE_BYTES > 18_800_000  # the seen book
    assert defaults.max_message_bytes == MAX_MESSAGE_BYTES
    consumers = {e: StreamConsumer(e, defaults, sink=record({})) for e in Endpoint}
    assert consumers[Endpoint.ORDERBOOK].max_message_bytes == MAX_BOOK_MESSAGE_BYTES
    assert consumers[Endpoint.TRADE].max_message_bytes == MAX_MESSAGE_BYTES
    assert consumers[Endpoint.TICKER].max_message_bytes == MAX_MESSAGE_BYTES


def test_an_oversized_book_is_logged_once_counted_and_retried_at_the_cap() -> None:
    market = Market()
    period_s = 600.0
    result: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, market.serve, "127.0.0.1", 0, None)
            url = f"ws://127.0.0.1:{server.port}"
            feed = MarketFeed(
                FeedSettings(settings(url)),
                None,
                None,
                endpoints=(Endpoint.TICKER, Endpoint.ORDERBOOK),
            )
            trade = StreamConsumer(Endpoint.TRADE, settings(url), sink=record(result))
            await nursery.start(feed.run)
            await nursery.start(trade.run)
            started = trio.current_time()
            await until(lambda: trade.connected and feed.consumers[Endpoint.TICKER].connected)
            await trio.sleep_until(started + period_s)
            result["feed"], result["trade"] = feed, trade
            result["metrics"] = {m.name: m for m in stream_metrics(feed)}
            nursery.cancel_scope.cancel()

    with capture_logs() as logs:
        run(main)

    feed, trade = result["feed"], result["trade"]
    book, ticker = feed.consumers[Endpoint.ORDERBOOK], feed.consumers[Endpoint.TICKER]
    # The other streams never noticed.
    for quiet in (trade, ticker):
        assert quiet.stats.connects == 1
        assert quiet.stats.disconnects == 0
        assert quiet.stats.too_big == 0
        assert quiet.connected
    assert market.connections["trade"] == market.connections["ticker"] == 1
    assert "frames" not in result  # /trade delivered nothing, and lost nothing
    # Every /orderbook link ended with the oversized book, each counted.
    assert book.stats.too_big == book.stats.connects == market.connections["orderbook"]
    assert book.stats.disconnects == book.stats.connects
    # Bounded: each retry waits in [cap/2, cap], so 600 s hold between 20 and 41 attempts; a
    # backoff started over each time would have made hundreds.
    assert period_s / CAP_S <= book.stats.connects <= period_s / (CAP_S / 2) + 1
    retries = [e for e in events(logs, "ws.reconnecting") if e["endpoint"] == "orderbook"]
    assert len(retries) >= book.stats.connects - 1
    assert all(CAP_S / 2 <= e["delay_s"] <= CAP_S for e in retries)
    # Logged once for the whole episode, with the stream and the limit.
    [warning] = events(logs, "ws.message_too_big")
    assert warning["endpoint"] == "orderbook"
    assert warning["limit_bytes"] == LIMIT
    assert "Exceeded maximum message size" in warning["reason"]
    assert events(logs, "ws.message_too_big_ended") == []
    # The metrics read the counter.
    samples = {
        s.labels["endpoint"]: s.value
        for s in result["metrics"]["flexbot_ws_messages_too_big"].samples
    }
    assert samples == {"ticker": 0, "orderbook": book.stats.too_big}


def record(result: dict[str, Any]) -> Callable[[str | bytes], Awaitable[None]]:
    async def sink(frame: str | bytes) -> None:
        result.setdefault("frames", []).append(frame)

    return sink


def test_an_episode_ends_when_a_book_fits_and_a_stable_link_still_retries_at_the_cap() -> None:
    market = Market()
    result: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, market.serve, "127.0.0.1", 0, None)
            consumer = StreamConsumer(
                Endpoint.ORDERBOOK,
                settings(f"ws://127.0.0.1:{server.port}"),
                sink=record(result),
                rng=random.Random(3),
            )
            await nursery.start(consumer.run)
            await until(lambda: consumer.stats.too_big == 3)
            market.big = False  # the book shrinks: the next link reads it
            await until(lambda: len(result.get("frames", [])) == 1)
            await trio.sleep(60)  # a link up long enough to count as stable
            result["up_before"] = consumer.stats.connects
            market.big = True  # and grows again, on the live link
            market.push.set()
            await until(lambda: consumer.stats.too_big == 4)
            await until(lambda: consumer.stats.connects == result["up_before"] + 1)
            nursery.cancel_scope.cancel()

    with capture_logs() as logs:
        run(main)

    assert [e["event"] for e in logs if e["event"].startswith("ws.message_too_big")] == [
        "ws.message_too_big",
        "ws.message_too_big_ended",
        "ws.message_too_big",
    ]
    [ended] = events(logs, "ws.message_too_big_ended")
    assert ended["closes"] == 3
    # The link that had been up for a minute ended with 1009: no backoff started over.
    last = events(logs, "ws.reconnecting")[-1]
    assert "1009" in last["reason"]
    assert last["delay_s"] >= CAP_S / 2


async def serve_fragmented_huge_message(stream: trio.SocketStream) -> None:
    """Control, then one message in many small fragments sent in one write: after its 1009,
    trio-websocket's reader meets further oversized fragments in the same read."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    while True:
        data = await stream.receive_some()
        if not data:
            return
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, wsproto.events.Request):
                out = ws.send(wsproto.events.AcceptConnection())
                out += ws.send(wsproto.events.TextMessage(data=CONTROL))
                for i in range(20):
                    fragment = wsproto.events.TextMessage(data="y" * 600, message_finished=i == 19)
                    out += ws.send(fragment)
                await stream.send_all(out)
            elif isinstance(event, wsproto.events.CloseConnection):
                return


def test_a_fragmented_oversized_message_ends_the_link_not_the_consumer() -> None:
    result: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            serve = partial(trio.serve_tcp, serve_fragmented_huge_message, 0, host="127.0.0.1")
            listeners = await nursery.start(serve)
            port = listeners[0].socket.getsockname()[1]
            url = f"ws://127.0.0.1:{port}"
            consumer = StreamConsumer(
                Endpoint.ORDERBOOK,
                settings(url, max_book_message_bytes=1000),
                sink=record(result),
            )
            await nursery.start(consumer.run)
            await until(lambda: consumer.stats.connects >= 3)
            result["consumer"] = consumer
            nursery.cancel_scope.cancel()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        run(main)
        gc.collect()
    consumer = result["consumer"]
    assert consumer.stats.disconnects >= 2
    assert consumer.stats.disconnect_reasons.keys() <= {"closed", "link failed"}
    assert "frames" not in result
    # Every socket was closed by the consumer, none left to the garbage collector.
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


# --- against the sandbox --------------------------------------------------------------------------


@pytest.fixture
def market_settings() -> MarketSettings:
    return MarketSettings(users=USERS, seed=7, rate_limit=None)


@pytest.fixture
def server_settings() -> ServerSettings:
    return ServerSettings(port=0, graceful_timeout_s=0.1, ws_ping_interval_s=None)


@pytest.mark.anyio
async def test_a_sandbox_book_over_the_limit_closes_only_the_book_link(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    """The daemon's feed on all three streams of the sandbox, whose book (one order at the caps:
    100 location ids of 100 characters) exceeds the client's book limit: /trade keeps delivering
    alice's news on its first link while /orderbook retries near the (short) backoff cap."""
    tokens = TokenManager(http, Credentials("alice", Secret("alice-pw")))
    await tokens.login()
    client = MarketClient(http, tokens)
    wide = model.Location(tuple(f"{i:03d}".ljust(100, "x") for i in range(100)), "DE")
    sandbox.market.place("bob", attrs.evolve(request("sell"), location=wide))
    streams = StreamSettings(
        ws_url=sandbox.running.ws_url,
        ping_interval_s=0.2,
        backoff=Backoff(base_s=0.05, cap_s=0.2),
        connect_timeout_s=2.0,
        close_timeout_s=0.5,
        max_book_message_bytes=4096,
    )
    feed = MarketFeed(FeedSettings(streams), client, tokens)
    book, trade = feed.consumers[Endpoint.ORDERBOOK], feed.consumers[Endpoint.TRADE]
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(feed.run)
            with trio.fail_after(5):
                while book.stats.too_big < 3 or not trade.connected:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                placed = await client.submit_order(request("buy", price="0.10", slot=1))
                while True:
                    event = await feed.trade.receive()
                    if event.message.data.order_id == placed.order_id:
                        break
            nursery.cancel_scope.cancel()
    assert trade.stats.connects == 1
    assert trade.stats.disconnects == 0
    assert feed.consumers[Endpoint.TICKER].stats.disconnects == 0
    assert book.stats.too_big == book.stats.disconnects >= 3
    assert book.stats.frames == 0
    [warning] = events(logs, "ws.message_too_big")
    assert (warning["endpoint"], warning["limit_bytes"]) == ("orderbook", 4096)
