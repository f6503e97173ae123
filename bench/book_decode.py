"""Cost of turning one /orderbook frame into a model `OrderBook`, against the raw floor.

Builds a realistic frame (a book of N entries in the wire's keyed shape, as the sandbox sends it)
and times, over many runs in the same process:

- floor: `orjson.loads` of the frame alone;
- decode: `flexbot.market.streams.decode_frame` (orjson, then the model types: the hand-read fast
  path for plain books, cattrs for anything else);
- conflate: one `Conflator.put` + `get` (what a frame costs when nobody reads it in time).

Prints medians in µs and the ratio decode/floor.

    .venv/bin/python bench/book_decode.py [--entries 50] [--runs 5000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import trio

from flexbot import model, wire
from flexbot.buffers import Conflator
from flexbot.market.streams import Endpoint, StreamStats, decode_frame


def frame(entries: int) -> bytes:
    start = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    groups: dict[str, list[model.BookEntry]] = {}
    for i in range(entries):
        window = start + timedelta(minutes=15 * (i % 4))
        entry = model.BookEntry(
            side=model.Side.BUY,
            power=Decimal(500 * (1 + i % 5)),
            price=Decimal("0.2") - Decimal(i) / 1000,
            delivery_start=window,
            delivery_end=window + timedelta(minutes=15),
            location=model.Location((f"site-{i}",), "DE"),
            energy=Decimal(125 * (1 + i % 5)),
        )
        groups.setdefault(str(100 + i % 4), []).append(entry)
    book = model.OrderBook(bids={k: tuple(v) for k, v in groups.items()}, asks={})
    return wire.dumps(model.OrderBookUpdate(book, start))


def median_us(fn: object, runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5000)
    args = parser.parse_args()
    raw = frame(args.entries)
    stats = StreamStats()
    floor = median_us(lambda: orjson.loads(raw), args.runs)
    decode = median_us(lambda: decode_frame(raw, Endpoint.ORDERBOOK, stats), args.runs)

    async def conflate() -> float:
        box: Conflator[bytes] = Conflator()
        samples = []
        for _ in range(args.runs):
            t0 = time.perf_counter_ns()
            box.put(raw)
            await box.get()
            samples.append(time.perf_counter_ns() - t0)
        return statistics.median(samples) / 1000

    conflated = trio.run(conflate)
    print(f"/orderbook frame of {args.entries} entries, {len(raw)} bytes, {args.runs} runs")
    print(f"  floor  (orjson.loads):            {floor:8.1f} µs")
    print(f"  decode (orjson + typed model):   {decode:8.1f} µs   ratio {decode / floor:.1f}x")
    print(f"  conflator put+get:                {conflated:8.2f} µs")


if __name__ == "__main__":
    main()
