"""Submissions per second through the durable outbox, against a baseline in the same run.

An in-process sandbox on loopback holds N sell orders of one user, each with a contract whose
delivery has ended. The same N metering submissions are then made twice:

- `direct`: the market client posts each one (4 in flight), nothing kept (the baseline);
- `outbox`: the verifier's own path: the submissions committed to the SQLite outbox (WAL,
  synchronous=FULL) as a scan commits what it found due (one transaction), then sent by the
  verifier's sender (4 in flight) and their outcomes group-committed (`GroupCommit`: one fsync
  for the outcomes that came while the previous commit ran). Each submission is as durable as
  with a commit of its own: none is sent before its enqueue committed, none is reported before
  its outcome did.

Prints submissions/s for both and the ratio outbox/direct: what durability costs. The store lives
in a temporary directory on the machine's disk; its fsync speed decides much of the figure.

    .venv/bin/python bench/outbox.py [--orders 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path

import trio

from flexbot import logs, model, wire
from flexbot.clock import ManualWall, MarketClock
from flexbot.engine.orders import OrderTracker
from flexbot.market import ConnectionSettings, MarketClient, Secret, connect
from flexbot.meters.builder import Quarter, meter_reading
from flexbot.sandbox.market import MarketSettings, SandboxMarket
from flexbot.sandbox.server import ServerSettings, serve
from flexbot.store import AsyncStore, Store
from flexbot.strategy import Window, flat_baseline
from flexbot.verification import VerificationSettings, Verifier

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


async def durable(
    client: MarketClient, ids: list[str], body: model.MeterReading, clock: MarketClock
) -> None:
    """Through the verifier's own outbox path: the submissions enqueued as a scan enqueues what it
    found due (one transaction), then sent by its sender (4 in flight) and their outcomes
    committed as it commits them (together, as they come)."""
    text = wire.dumps(body).decode()
    with tempfile.TemporaryDirectory() as tmp:
        store = AsyncStore(Store.open(Path(tmp) / "bench.db"))
        settings = VerificationSettings(interval_s=0.05, in_flight=4)
        verifier = Verifier(
            settings, tracker=OrderTracker(None), store=store, client=client, clock=clock, meters=()
        )
        rows = [(order_id, "metering", text) for order_id in ids]
        await store.run(store.sync.enqueue_many, rows, 0.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(verifier.run)
            while verifier.sent < len(ids):  # noqa: ASYNC110 - the verifier has no such event
                await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
        pending, _ = store.sync.outbox_backlog()
        assert pending == 0, f"{pending} submissions still pending"
        print(f"           {verifier.results_committed} outcome commits for {len(ids)} submissions")
        store.sync.close()


async def bench(count: int, rounds: int) -> None:
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
        rates: dict[str, list[float]] = {"direct": [], "outbox": []}
        async with connect(settings) as session:
            for round_ in range(rounds):  # alternated: the machine's moods fall on both
                for name, submit in (("direct", direct), ("outbox", partial(durable, clock=clock))):
                    ids, window = make_contracts(market, count)
                    # Delivery ends: move market time past the window.
                    wall.advance((window.end - clock.now()).total_seconds() + 1)
                    started = time.perf_counter()
                    await submit(session.client, ids, reading(window))
                    elapsed = time.perf_counter() - started
                    rates[name].append(count / elapsed)
                    print(
                        f"{name:>7} #{round_ + 1}: {count} submissions in {elapsed:.2f} s = "
                        f"{count / elapsed:,.0f}/s"
                    )
        direct_rate, outbox_rate = (statistics.median(rates[n]) for n in ("direct", "outbox"))
        print(
            f"  medians of {rounds}: direct {direct_rate:,.0f}/s, outbox {outbox_rate:,.0f}/s;"
            f" ratio outbox/direct {outbox_rate / direct_rate:.2f} (target ≥ 0.9:"
            f" {'met' if outbox_rate >= 0.9 * direct_rate else 'NOT MET'})"
        )
        shutdown.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logs.configure(level="warning")
    trio.run(bench, args.orders, args.rounds)


if __name__ == "__main__":
    main()
