"""`flexbot watch trade | ticker | orderbook`: a live, readable view of one stream.

It uses the daemon's own stream consumer, so what it shows is what the daemon sees: reconnects
are logged (`ws.disconnected`, `ws.reconnecting`, `ws.connected`) and the view goes on. `/trade`
needs credentials; the public streams use them when given (as the official client does) and work
without. Stop with Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import AsyncExitStack
from datetime import datetime
from decimal import Decimal
from typing import TextIO

import trio

from flexbot import model
from flexbot.commands import UsageError, add_log_format, connection
from flexbot.commands.argtypes import positive_float
from flexbot.market import (
    AuthFailed,
    ConnectionSettings,
    Endpoint,
    FeedSettings,
    MarketFeed,
    StreamSettings,
    connect,
    ssl_context,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("watch", help="show a live market stream")
    parser.add_argument("endpoint", choices=[e.value for e in Endpoint])
    parser.add_argument("--depth", type=int, default=5, help="book levels shown per side")
    parser.add_argument("--ping-interval", type=positive_float, default=20.0, metavar="S")
    connection.add_options(parser)
    add_log_format(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    endpoint = Endpoint(args.endpoint)
    settings = connection.settings(args, login=endpoint is Endpoint.TRADE)
    refused: list[BaseException] = []
    try:
        trio.run(_watch, endpoint, settings, args.depth, args.ping_interval)
    except* AuthFailed as group:  # at login, or later inside the feed's nursery
        refused.extend(group.exceptions)
    if refused:
        raise UsageError(f"the market refused the credentials: {refused[0]}")
    return 0


async def _watch(
    endpoint: Endpoint, settings: ConnectionSettings, depth: int, ping_s: float
) -> None:
    streams = StreamSettings(ws_url=settings.ws_url, ping_interval_s=ping_s)
    async with AsyncExitStack() as stack:
        if settings.username and settings.password.reveal():
            session = await stack.enter_async_context(connect(settings))
            feed = session.feed(endpoints=(endpoint,), streams=streams)
        else:
            feed = _public_feed(endpoint, settings, streams)
        async with trio.open_nursery() as nursery:
            await nursery.start(feed.run)
            await _show(endpoint, feed, depth, sys.stdout)


def _public_feed(
    endpoint: Endpoint, settings: ConnectionSettings, streams: StreamSettings
) -> MarketFeed:
    """A feed of one public stream, without logging in."""
    context = ssl_context(settings.ca_bundle) if settings.url.startswith("https") else None
    return MarketFeed(FeedSettings(streams), None, None, ssl_context=context, endpoints=(endpoint,))


async def _show(endpoint: Endpoint, feed: MarketFeed, depth: int, out: TextIO) -> None:
    if endpoint is Endpoint.ORDERBOOK:
        while True:
            book = await feed.next_book()
            print(render_book(book, depth), file=out, flush=True)
    elif endpoint is Endpoint.TICKER:
        while True:
            print(render_message(await feed.ticker.get()), file=out, flush=True)
    else:
        async for event in feed.trade:
            print(render_message(event.message), file=out, flush=True)


def render_book(book: model.OrderBook | None, depth: int) -> str:
    if book is None:
        return "-- book unknown (reconnecting) --"
    windows: dict[tuple[datetime, datetime], tuple[list[model.BookEntry], list[model.BookEntry]]]
    windows = {}
    for entry in book.flat_bids():
        windows.setdefault((entry.delivery_start, entry.delivery_end), ([], []))[0].append(entry)
    for entry in book.flat_asks():
        windows.setdefault((entry.delivery_start, entry.delivery_end), ([], []))[1].append(entry)
    lines = [f"-- book: {len(windows)} delivery windows --"]
    for (start, end), (bids, asks) in sorted(windows.items()):
        lines.append(f"{_window(start, end)}  bids {len(bids)}  asks {len(asks)}")
        for i in range(min(depth, max(len(bids), len(asks)))):
            bid = _level(bids[i]) if i < len(bids) else ""
            ask = _level(asks[i]) if i < len(asks) else ""
            lines.append(f"    {bid:>28}  |  {ask:<28}")
    return "\n".join(lines)


def _window(start: datetime, end: datetime) -> str:
    return f"{start:%m-%d %H:%M}-{end:%H:%M}Z"


def _level(entry: model.BookEntry) -> str:
    country = entry.location.country_code or "--"
    return f"{_num(entry.power):>7} W @ {_num(entry.price):<7} {country}"


def _num(value: Decimal) -> str:
    """`2000.0` → `2000`, `0.1650` → `0.165`: the digits that carry information."""
    return f"{value.normalize():f}"


def render_message(message: model.Message) -> str:
    if isinstance(message, model.TickerUpdate):
        t = message.data
        return (
            f"trade    {t.closed_at:%H:%M:%S}  {t.power:>7} W @ {t.price} €/kWh  "
            f"{t.delivery_start:%m-%d %H:%M}-{t.delivery_end:%H:%M}Z"
        )
    if isinstance(message, model.ExpiredOrderUpdate):
        e = message.data
        return f"expired  {e.expired_at:%H:%M:%S}  {e.power:>7} W @ {e.price} €/kWh"
    if isinstance(message, model.OrderStatusUpdate):
        o = message.data
        return f"order    {o.order_id}  {o.side!s:4}  {o.status}  filled {o.filled_power} W"
    if isinstance(message, model.ContractStatusUpdate):
        c = message.data
        return f"contract {c.contract_id}  {c.power} W @ {c.price}  {c.status}"
    return f"{message.type}"
