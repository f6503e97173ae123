"""Fan-out of orderbook updates from the sandbox to many WebSocket clients.

Runs an in-process sandbox on loopback, connects N `/orderbook` clients (trio-websocket), then
publishes M book changes and measures how long until every client has every frame. It does this
twice in the same run:

- `hub`: the sandbox as shipped: each update serialized once, the same string queued for everyone;
- `naive`: the same, but each update serialized again for every client (the baseline the hub is
  designed to beat).

Prints frames/s delivered and the ratio hub/naive. Clients and server share one process (and so one
GIL), so absolute figures include the clients' own parsing; the ratio is the figure to compare.

    .venv/bin/python bench/fanout.py [--clients 100] [--updates 200] [--book 50]
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from decimal import Decimal
from functools import partial

import trio
from trio_websocket import open_websocket_url

from flexbot import logs, model, rules
from flexbot.sandbox import streams
from flexbot.sandbox.events import BookChanged
from flexbot.sandbox.market import MarketSettings, SandboxMarket
from flexbot.sandbox.server import Running, ServerSettings, serve


def _fill_book(market: SandboxMarket, entries: int) -> None:
    now = market.clock.now()
    start = rules.ceil_to_grid(now + timedelta(hours=1))
    for i in range(entries):
        side = model.Side.BUY if i % 2 else model.Side.SELL
        price = Decimal("0.20") + (
            Decimal(i) / 1000 if side is model.Side.SELL else -Decimal(i) / 1000
        )
        market.place(
            f"trader-{i % 7}",
            model.OrderRequest(
                side=side,
                power=Decimal(1000),
                price=price,
                delivery_start=start,
                delivery_end=start + timedelta(minutes=15),
                expiry_time=now + timedelta(minutes=30),
                location=model.Location(("site",), "DE"),
                baseline=None,
            ),
        )


async def _run(clients: int, updates: int, book: int, naive: bool) -> float:
    market = SandboxMarket(MarketSettings(users={"demo": "demo"}, rate_limit=None, seed=1))
    _fill_book(market, book)  # sells wait for baselines, so half the entries rest as bids
    shutdown = trio.Event()
    original = streams._text
    if naive:
        # Re-serialize per client: wrap delivery so each connection gets its own encoding.
        def deliver(self: streams.StreamHub, conns: object, text: str) -> None:
            for conn in list(conns):  # type: ignore[call-overload]
                self._offer(conn, original(model.OrderBookUpdate(market.matcher.book())))

        streams.StreamHub._deliver = deliver  # type: ignore[method-assign]
    try:
        async with trio.open_nursery() as nursery:
            settings = ServerSettings(port=0, ws_queue_size=updates + 16, ws_ping_interval_s=None)
            running: Running = await nursery.start(
                partial(serve, market, settings, shutdown=shutdown)
            )
            remaining = clients
            all_done = trio.Event()
            ready = trio.Event()
            connected = 0

            async def client() -> None:
                nonlocal remaining, connected
                url = running.ws_url + "/api/v1/ws/orderbook"
                async with open_websocket_url(url, message_queue_size=updates + 16) as ws:
                    await ws.get_message()  # control
                    await ws.get_message()  # snapshot
                    connected += 1
                    if connected == clients:
                        ready.set()
                    for _ in range(updates):
                        await ws.get_message()
                    remaining -= 1
                    if remaining == 0:
                        all_done.set()

            for _ in range(clients):
                nursery.start_soon(client)
            await ready.wait()
            started = time.perf_counter()
            for _ in range(updates):
                running.hub.on_events([BookChanged()])
                await trio.lowlevel.checkpoint()
            await all_done.wait()
            elapsed = time.perf_counter() - started
            shutdown.set()
    finally:
        streams.StreamHub._deliver = _ORIGINAL_DELIVER  # type: ignore[method-assign]
    return clients * updates / elapsed


_ORIGINAL_DELIVER = streams.StreamHub._deliver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--book", type=int, default=50, help="orders in the book")
    args = parser.parse_args()
    logs.configure(json=True, level="warning")  # one line per connection would drown the figures
    hub = trio.run(_run, args.clients, args.updates, args.book, False)
    naive = trio.run(_run, args.clients, args.updates, args.book, True)
    print(f"fan-out to {args.clients} clients, {args.updates} updates, book of {args.book}")
    print(f"  hub (serialize once):        {hub:10.0f} frames/s")
    print(f"  naive (serialize per client): {naive:9.0f} frames/s")
    print(f"  ratio hub/naive:             {hub / naive:10.2f}x")


if __name__ == "__main__":
    main()
