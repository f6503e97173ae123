"""Submissions per second through the durable outbox, against a baseline in the same run.

An in-process sandbox on loopback holds N sell orders of one user, each with a contract whose
delivery has ended. The same N metering submissions are then made twice:

- `direct`: the market client posts each one (4 in flight), nothing kept (the baseline);
- `outbox`: each is first committed to the SQLite outbox (WAL, synchronous=FULL: an fsync per
  commit) and then sent by the verifier's worker, acknowledged in the store afterwards.

Prints submissions/s for both and the ratio outbox/direct: what durability costs. The store lives
in a temporary directory on the machine's disk; its fsync speed decides much of the figure.

    .venv/bin/python bench/outbox.py [--orders 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path

import trio

from flexbot import logs, model, wire
from flexbot.clock import ManualWall, MarketClock
from flexbot.market import ConnectionSettings, MarketClient, Secret, connect
from flexbot.meters.builder import Quarter, meter_reading
from flexbot.sandbox.market import MarketSettings, SandboxMarket
from flexbot.sandbox.server import ServerSettings, serve
from flexbot.store import AsyncStore, Store
from flexbot.strategy import Window, flat_baseline

USERS = {"seller": "pw", "buyer": "pw"}


def make_contracts(market: SandboxMarket, count: int) -> tuple[list[str], Window]:
    """`count` sells of `seller`, each matched by a buy; then time moves past delivery."""
    now = market.clock.now()
    window = Window.upcoming(now, 2)[1]
    ids = []
    for _ in range(count):
        for user, side in (("seller", model.Side.SELL), ("buyer", model.Side.BUY)):
            request = model.OrderRequest(
                side=side,
                power=Decimal(1000),
                price=Decimal("0.2"),
                delivery_start=window.start,
                delivery_end=window.end,
                expiry_time=window.start - timedelta(seconds=60),
                location=model.Location(location_id=("site",)),
                baseline=flat_baseline(window, Decimal(5000), created_at=now)
                if side is model.Side.SELL
                else None,
            )
            order = market.submit_order(user, wire.unstructure(request))
            if side is model.Side.SELL:
                ids.append(order.order_id)
    return ids, window


def reading(window: Window) -> model.MeterReading:
    quarters = [Quarter(end=window.end, energy_kwh=Decimal("1.0"))]
    return meter_reading(quarters, window.start, window.end, created_at=window.end)


async def direct(client: MarketClient, ids: list[str], body: model.MeterReading) -> None:
    limiter = trio.CapacityLimiter(4)

    async def one(order_id: str) -> None:
        async with limiter:
            await client.submit_metering(order_id, body)

    async with trio.open_nursery() as nursery:
        for order_id in ids:
            nursery.start_soon(one, order_id)


async def durable(client: MarketClient, ids: list[str], body: model.MeterReading) -> None:
    limiter = trio.CapacityLimiter(4)
    text = wire.dumps(body).decode()
    with tempfile.TemporaryDirectory() as tmp:
        store = AsyncStore(Store.open(Path(tmp) / "bench.db"))

        async def one(order_id: str) -> None:
            async with limiter:
                await store.run(store.sync.enqueue, order_id, "metering", text, 0.0)
                await client.submit_metering(order_id, body)
                await store.run(store.sync.settle, order_id, "metering", "acked", 0.0, None)

        async with trio.open_nursery() as nursery:
            for order_id in ids:
                nursery.start_soon(one, order_id)
        store.sync.close()


async def bench(count: int) -> None:
    wall = ManualWall(time.time())
    clock = MarketClock(1.0, wall=wall)
    market = SandboxMarket(MarketSettings(users=USERS, rate_limit=None, seed=1), clock=clock)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        server = partial(serve, market, ServerSettings(port=0), shutdown=shutdown)
        running = await nursery.start(server)
        settings = ConnectionSettings(
            url=running.base_url, username="seller", password=Secret("pw")
        )
        results = {}
        async with connect(settings) as session:
            for name, submit in (("direct", direct), ("outbox", durable)):
                ids, window = make_contracts(market, count)
                # Delivery ends: move market time past the window.
                wall.advance((window.end - clock.now()).total_seconds() + 1)
                started = time.perf_counter()
                await submit(session.client, ids, reading(window))
                elapsed = time.perf_counter() - started
                results[name] = count / elapsed
                print(f"{name:>7}: {count} submissions in {elapsed:.2f} s = {results[name]:,.0f}/s")
        print(f"  ratio outbox/direct: {results['outbox'] / results['direct']:.2f}")
        shutdown.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=200)
    args = parser.parse_args()
    logs.configure(level="warning")
    trio.run(bench, args.orders)


if __name__ == "__main__":
    main()
