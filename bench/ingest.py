"""Order book ingestion: messages per second through flexbot's full path, and a memory soak.

A WebSocket server runs in a subprocess (its own CPU; the machine may have only 2 cores): at
`/api/v1/ws/orderbook` it sends the sandbox's control message, then N `orderbook_update` frames
as fast as the socket takes them, cycling through a few hundred distinct books of 10-50 entries
(`--depth`; bids below asks, grouped by window and country as the sandbox groups them, serialized
as `StreamHub` serializes them), the last one an empty book that marks the end; then it idles
until the client leaves. The same N frames are consumed in this process, one way after another:

- `floor`: `orjson.loads` of the same frames (the same `str` objects the socket hands out) in a
  tight loop: the raw floor;
- `socket`: a bare `trio_websocket` client, opened as flexbot opens it, receiving and
  `orjson`-decoding the stream: the socket floor, what the WebSocket layer costs on its own (reads
  of 64 KiB, as flexbot sets them); and the same with trio_websocket's default 4 KiB reads, which
  flexbot used before this benchmark showed what they cost;
- `full`: flexbot's own path, as the daemon wires it: `MarketFeed` (its `StreamConsumer` for
  /orderbook: socket, watchdog, JSON parse, `Conflator`) with the engine attached (`Engine.run`
  with the feed, timed duties on, dry run: no broker, no orders): the engine's book pump calls
  `next_book()`, which structures the newest book into model objects, then matches paper orders,
  takes out our own orders and puts the book in the strategy's inbox; one strategy, run by its
  `StrategyRunner`, reads the best bid and ask of each book in `on_book`, as a strategy would.

The rate is frames received over the wall time from the first frame to the last, taken at the
socket reader (for `full`, through the feed's `recorder` hook); `full` also shows how many books
reached the strategy (the others were conflated away) and when the last one did. Prints msgs/s
for each, the ratios full/floor (target ≥ 50%) and socket/floor.

`--soak` runs only the full path, over `--soak-messages` frames (default 1,000,000) of 5-15
entries (unless `--depth` says otherwise: with 10-50 a million frames take about 9 minutes here,
with 5-15 about 4), sampling the process RSS (/proc/self/statm, Linux) every `--sample-every`
frames. It prints the samples as they come, the peak RSS (VmHWM), the drift of the samples after
the warm-up (the first 20% of the frames) against the first of them (target: flat within ±5%),
and how long the soak took. `--profile FILE` runs the full path under cProfile instead.

    .venv/bin/python bench/ingest.py [--messages 20000] [--distinct 300] [--depth 10-50]
    .venv/bin/python bench/ingest.py --soak [--soak-messages 1000000] [--sample-every 50000]
    .venv/bin/python bench/ingest.py --profile full.prof [--messages 10000]
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import os
import pstats
import random
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from flexbot import logs, model, wire
from flexbot.clock import MarketClock
from flexbot.engine.engine import Engine
from flexbot.engine.loader import StrategySpec
from flexbot.engine.orders import OrderTracker
from flexbot.engine.settings import EngineSettings
from flexbot.market import Endpoint, FeedSettings, MarketFeed, StreamSettings
from flexbot.sandbox.streams import CONTROL_MESSAGE
from flexbot.strategy import Context, NoParams, Strategy

TARGET = 0.5  # full path / floor
DRIFT_TARGET = 0.05  # ± of the RSS after warm-up
WARM_UP = 0.2  # the share of the soak counted as warm-up
THROUGHPUT_DEPTH = (10, 50)  # entries a book
SOAK_DEPTH = (5, 15)  # smaller books, so that a million of them take minutes, not a quarter hour
START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
COUNTRIES = ("DE", "DE", "DE", "NL")  # mostly one market, sometimes a second
MAX_MESSAGE = 16 * 1024 * 1024
FLEXBOT_READS = attrs.fields(StreamSettings).receive_buffer_bytes.default
LIBRARY_READS = 4 * 1024  # trio_websocket's default receive_buffer_size
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- the frames ---------------------------------------------------------------------------------


def book_frame(rng: random.Random, index: int, depth: tuple[int, int]) -> str:
    """One `orderbook_update` as the sandbox sends it: `depth` (a range) entries, bids < asks."""
    entries = rng.randint(*depth)
    windows = rng.randint(2, 8)
    bids: dict[str, list[model.BookEntry]] = {}
    asks: dict[str, list[model.BookEntry]] = {}
    groups: dict[tuple[int, str], str] = {}
    for _ in range(entries):
        slot, country = rng.randrange(windows), rng.choice(COUNTRIES)
        start = START + timedelta(minutes=15 * slot)
        side = rng.choice((model.Side.BUY, model.Side.SELL))
        power = Decimal(100 * rng.randint(5, 200))
        cents = rng.randint(100, 200) if side is model.Side.BUY else rng.randint(210, 350)
        entry = model.BookEntry(
            side=side,
            power=power,
            price=Decimal(cents) / 1000,
            delivery_start=start,
            delivery_end=start + timedelta(minutes=15),
            location=model.Location((f"site-{rng.randrange(1000)}",), country),
            energy=power / 4,
        )
        group = groups.setdefault((slot, country), str(100 + len(groups)))
        (bids if side is model.Side.BUY else asks).setdefault(group, []).append(entry)
    book = model.OrderBook(
        bids={k: tuple(sorted(v, key=lambda e: -e.price)) for k, v in bids.items()},
        asks={k: tuple(sorted(v, key=lambda e: e.price)) for k, v in asks.items()},
    )
    update = model.OrderBookUpdate(book, START + timedelta(seconds=index))
    return orjson.dumps(wire.unstructure(update)).decode()


def frames(distinct: int, seed: int, depth: tuple[int, int]) -> list[str]:
    rng = random.Random(seed)
    return [book_frame(rng, i, depth) for i in range(distinct)]


def end_frame() -> str:
    """The last frame of every stream: an empty book, which tells the strategy it is over."""
    return orjson.dumps(wire.unstructure(model.OrderBookUpdate(model.OrderBook(), START))).decode()


def stream(books: Sequence[str], count: int) -> list[str]:
    """The `count` frames the server sends, in order (references to the same strings)."""
    return [*itertools.islice(itertools.cycle(books), count - 1), end_frame()]


# --- the server (a subprocess) ------------------------------------------------------------------


async def serve(distinct: int, seed: int, depth: tuple[int, int]) -> None:
    """Print the port, then serve until stdin closes (the parent left). The path's first segment
    is how many frames to send: /<count>/api/v1/ws/orderbook."""
    books = frames(distinct, seed, depth)
    control = orjson.dumps(CONTROL_MESSAGE).decode()
    last = end_frame()

    async def handler(request: WebSocketRequest) -> None:
        count = int(request.path.strip("/").split("/")[0])
        ws = await request.accept()
        try:
            await ws.send_message(control)
            for frame in itertools.islice(itertools.cycle(books), count - 1):
                await ws.send_message(frame)
            await ws.send_message(last)
            while True:  # idle until the client leaves
                await ws.get_message()
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        print(server.port, flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        while await stdin.receive_some():
            pass
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def server_process(distinct: int, seed: int, depth: tuple[int, int]) -> AsyncIterator[int]:
    argv = [
        *(sys.executable, __file__, "--serve", "--distinct", str(distinct), "--seed", str(seed)),
        *("--depth", f"{depth[0]}-{depth[1]}"),
    ]
    process = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some()
                if not chunk:
                    raise RuntimeError(f"the server exited with {await process.wait()}")
                line += chunk
        yield int(line)
    finally:
        with trio.CancelScope(shield=True):
            if process.stdin is not None:
                await process.stdin.aclose()
            process.terminate()
            with trio.move_on_after(2):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


def url(port: int, count: int) -> str:
    """The ws_url flexbot is given (it appends the endpoint's path); the count rides in front."""
    return f"ws://127.0.0.1:{port}/{count}"


# --- the measurements ---------------------------------------------------------------------------


def mib(n: float) -> str:
    return f"{n / 2**20:7.1f} MiB"


def depth_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        depth = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX, got {text!r}") from None
    if not 1 <= depth[0] <= depth[1]:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return depth


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


def peak_rss_bytes() -> int:
    """The high-water mark of RSS: VmHWM, else getrusage (which the kernel updates lazily)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def floor(frames_sent: list[str]) -> float:
    loads = orjson.loads
    t0 = time.perf_counter()
    for frame in frames_sent:
        loads(frame)
    return len(frames_sent) / (time.perf_counter() - t0)


async def socket_floor(port: int, count: int, read_size: int = FLEXBOT_READS) -> float:
    """Receive and decode with trio_websocket opened as flexbot opens it (unless `read_size` says
    otherwise)."""
    loads = orjson.loads
    async with open_websocket_url(
        url(port, count) + Endpoint.ORDERBOOK.path,
        message_queue_size=64,
        max_message_size=MAX_MESSAGE,
        receive_buffer_size=read_size,
    ) as ws:
        await ws.get_message()  # the control message
        loads(await ws.get_message())
        t0 = time.perf_counter()
        for _ in range(count - 1):
            loads(await ws.get_message())
        elapsed = time.perf_counter() - t0
    return (count - 1) / elapsed


class TopOfBook(Strategy[NoParams]):
    """Reads each book as a strategy does: the best bid and ask, and the spread."""

    version = "bench"

    def __init__(self, params: NoParams) -> None:
        super().__init__(params)
        self.books = 0
        self.spread = Decimal(0)
        self.ended = trio.Event()
        self.ended_at = 0.0

    async def on_book(self, ctx: Context, book: model.OrderBook) -> None:
        bids, asks = book.flat_bids(), book.flat_asks()
        if not bids and not asks:  # the end of the stream
            self.ended_at = time.perf_counter()
            self.ended.set()
            return
        self.books += 1
        if bids and asks:
            self.spread += asks[0].price - bids[0].price


class Probe:
    """The feed's recorder: sees every frame at the socket reader, before anything else."""

    def __init__(self, count: int, sample_every: int | None = None, show: bool = False) -> None:
        self.count = count
        self.seen = 0
        self.first = self.last = 0.0
        self.done = trio.Event()
        self.sample_every = sample_every
        self.samples: list[tuple[int, float, int]] = []  # (frames, perf_counter, rss)
        self.show = show  # print each sample as it is taken

    def __call__(self, endpoint: Endpoint, frame: str | bytes) -> None:
        self.seen += 1
        if self.seen == 1:
            self.first = time.perf_counter()
        if self.sample_every and self.seen % self.sample_every == 0:
            self.samples.append((self.seen, time.perf_counter(), rss_bytes()))
            if self.show:
                self.print_sample(-1)
        if self.seen == self.count:
            self.last = time.perf_counter()
            self.done.set()

    def print_sample(self, index: int) -> None:
        n, t, rss = self.samples[index]
        previous_n, previous_t = (
            self.samples[index - 1][:2] if n > self.samples[0][0] else (0, self.first)
        )
        rate = (n - previous_n) / (t - previous_t) if t > previous_t else 0.0
        print(
            f"  {n:>10,} frames  {t - self.first:7.1f} s  RSS {mib(rss)}  ({rate:,.0f} msgs/s)",
            flush=True,
        )


async def full_path(port: int, probe: Probe) -> dict[str, Any]:
    streams = StreamSettings(ws_url=url(port, probe.count), connect_timeout_s=10.0)
    feed = MarketFeed(
        FeedSettings(streams), None, None, endpoints=(Endpoint.ORDERBOOK,), recorder=probe
    )
    spec = StrategySpec(name="top", path=Path("top.yaml"), cls=TopOfBook, params=NoParams())
    engine = Engine(
        EngineSettings(dry_run=True),
        [spec],
        clock=MarketClock(),
        tracker=OrderTracker(None),
        broker=None,
    )
    strategy = engine.runners["top"].strategy
    assert isinstance(strategy, TopOfBook)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run, feed)
        await nursery.start(feed.run)
        await probe.done.wait()
        with trio.move_on_after(30):
            await strategy.ended.wait()
        nursery.cancel_scope.cancel()
    consumer = feed.consumers[Endpoint.ORDERBOOK]
    return {
        "rate": (probe.count - 1) / (probe.last - probe.first),
        "books": strategy.books,
        "replaced_feed": feed.books_replaced,
        "replaced_inbox": engine.runners["top"].inbox.replaced_books,
        "ended_after_s": strategy.ended_at - probe.last if strategy.ended.is_set() else None,
        "connects": consumer.stats.connects,
        "bad": consumer.stats.bad_frames,
    }


async def throughput(args: argparse.Namespace) -> None:
    depth = args.depth or THROUGHPUT_DEPTH
    books = frames(args.distinct, args.seed, depth)
    sent = stream(books, args.messages)
    sizes = sorted(len(f) for f in books)
    print(
        f"{args.messages:,} orderbook_update frames, cycling {len(books)} distinct books of "
        f"{depth[0]}-{depth[1]} entries, {sizes[0]:,}-{sizes[-1]:,} bytes "
        f"(median {sizes[len(sizes) // 2]:,})"
    )
    rates: dict[str, float] = {"floor": floor(sent)}
    async with server_process(args.distinct, args.seed, depth) as port:
        rates["socket"] = await socket_floor(port, args.messages)
        rates["socket4"] = await socket_floor(port, args.messages, LIBRARY_READS)
        full = await full_path(port, Probe(args.messages))
    rates["full"] = full["rate"]
    base = rates["floor"]
    print(f"  floor  (orjson.loads in a loop):       {rates['floor']:>9,.0f} msgs/s")
    print(
        f"  socket (trio_websocket + orjson):      {rates['socket']:>9,.0f} msgs/s"
        f"   {rates['socket'] / base:6.1%} of floor"
    )
    print(
        f"  socket, {LIBRARY_READS // 1024} KiB reads (library default):"
        f" {rates['socket4']:>7,.0f} msgs/s   {rates['socket4'] / base:6.1%} of floor"
    )
    print(
        f"  full   (feed + engine + strategy):     {rates['full']:>9,.0f} msgs/s"
        f"   {rates['full'] / base:6.1%} of floor   (target ≥ {TARGET:.0%}: "
        f"{'met' if rates['full'] / base >= TARGET else 'NOT met'})"
    )
    ended = full["ended_after_s"]
    print(
        f"         books to the strategy: {full['books']:,} of {args.messages - 1:,} "
        f"({full['replaced_feed']:,} conflated in the feed, {full['replaced_inbox']:,} in the "
        f"inbox); last book {'never arrived' if ended is None else f'{ended * 1000:.1f} ms'}"
        f" after the last frame; connects {full['connects']}, bad frames {full['bad']}"
    )
    full_ratio, socket_ratio = rates["full"] / base, rates["socket"] / base
    print(
        f"  ratio full/floor: {full_ratio:.2f}   socket/floor: {socket_ratio:.2f}"
        f"   full/socket: {rates['full'] / rates['socket']:.2f}"
    )


async def soak(args: argparse.Namespace) -> None:
    count, every = args.soak_messages, args.sample_every
    depth = args.depth or SOAK_DEPTH
    print(
        f"soak: {count:,} frames of {depth[0]}-{depth[1]} entries through the full path, "
        f"RSS sampled every {every:,}",
        flush=True,
    )
    before = rss_bytes()
    print(f"  RSS before connecting: {mib(before)}", flush=True)
    async with server_process(args.distinct, args.seed, depth) as port:
        probe = Probe(count, every, show=True)
        started = time.perf_counter()
        full = await full_path(port, probe)
        duration = time.perf_counter() - started
    settled = [rss for n, _, rss in probe.samples if n >= WARM_UP * count]
    if settled:
        ref = settled[0]
        low, high = (min(settled) - ref) / ref, (max(settled) - ref) / ref
        flat = low >= -DRIFT_TARGET and high <= DRIFT_TARGET
        print(
            f"  after warm-up ({WARM_UP:.0%}): first {mib(ref)}, min {mib(min(settled))}, "
            f"max {mib(max(settled))}: drift {low:+.1%} / {high:+.1%} "
            f"(target ±{DRIFT_TARGET:.0%}: {'met' if flat else 'NOT met'})"
        )
    print(f"  peak RSS (VmHWM): {mib(peak_rss_bytes())}")
    print(
        f"  duration {duration:.1f} s, {full['rate']:,.0f} msgs/s; books to the strategy "
        f"{full['books']:,}; connects {full['connects']}, bad frames {full['bad']}"
    )


async def profile(args: argparse.Namespace) -> None:
    async with server_process(args.distinct, args.seed, args.depth or THROUGHPUT_DEPTH) as port:
        profiler = cProfile.Profile()
        profiler.enable()
        full = await full_path(port, Probe(args.messages))
        profiler.disable()
    print(f"full path under cProfile: {full['rate']:,.0f} msgs/s, books {full['books']:,}")
    profiler.dump_stats(args.profile)
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--distinct", type=int, default=300, help="distinct books, cycled")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--depth",
        type=depth_range,
        help=f"entries a book, MIN-MAX (default {THROUGHPUT_DEPTH[0]}-{THROUGHPUT_DEPTH[1]}; "
        f"{SOAK_DEPTH[0]}-{SOAK_DEPTH[1]} for the soak)",
    )
    parser.add_argument("--soak", action="store_true", help="the RSS soak instead")
    parser.add_argument("--soak-messages", type=int, default=1_000_000)
    parser.add_argument("--sample-every", type=int, default=50_000)
    parser.add_argument("--profile", metavar="FILE", help="cProfile the full path into FILE")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, args.distinct, args.seed, args.depth or THROUGHPUT_DEPTH)
        return
    logs.configure(level="warning")
    if args.soak:
        trio.run(soak, args)
    elif args.profile:
        trio.run(profile, args)
    else:
        trio.run(throughput, args)


if __name__ == "__main__":
    main()
