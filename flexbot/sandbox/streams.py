"""The sandbox's WebSocket streams: `/api/v1/ws/trade`, `/ticker` and `/orderbook` (spec §4).

`StreamHub` turns matching events into wire messages and fans them out. Each message is serialized
once and the same string is queued for every connection that should see it; each connection has a
bounded queue, and a connection whose queue is full is cut off (close 1008, "send queue overflow")
instead of slowing the market or the other connections. Book changes within one batch of events
are coalesced into one snapshot.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from datetime import datetime

import orjson
import trio
from attrs import define
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from flexbot import logs, model, wire
from flexbot.sandbox.auth import NotAuthenticated
from flexbot.sandbox.events import (
    BookChanged,
    ContractChanged,
    Event,
    Expired,
    OrderChanged,
    Traded,
)
from flexbot.sandbox.market import SandboxMarket

log = logs.get_logger("flexbot.sandbox.ws")

CONTROL_MESSAGE = {
    "type": "control",
    "status": "success",
    "data": {"message": "Connected to the WebSocket API"},
}
MALFORMED_FRAME = '{"type": "orderbook_update", "data": {"bids": [1, 2'  # truncated on purpose


class Channel(enum.StrEnum):
    TRADE = "trade"
    TICKER = "ticker"
    ORDERBOOK = "orderbook"


@define(eq=False)
class Connection:
    channel: Channel
    user: str | None
    queue: trio.MemorySendChannel[str]
    inbox: trio.MemoryReceiveChannel[str]
    close_code: int = 1000
    close_reason: str = ""

    def cut(self, code: int, reason: str) -> None:
        """End this connection's stream; its handler closes the socket with `code`/`reason`."""
        if not self.close_reason:
            self.close_code, self.close_reason = code, reason
        self.queue.close()


class StreamHub:
    def __init__(self, market: SandboxMarket, *, queue_size: int = 256) -> None:
        self.market = market
        self.queue_size = queue_size
        self._by_channel: dict[Channel, set[Connection]] = {c: set() for c in Channel}
        self._trade_by_user: dict[str, set[Connection]] = {}
        self._book_text: str | None = None
        self.stats: Counter[str] = Counter()
        market.subscribe(self.on_events)

    # --- connections ----------------------------------------------------------------------------

    def connect(self, channel: Channel, user: str | None) -> Connection:
        queue, inbox = trio.open_memory_channel[str](self.queue_size)
        conn = Connection(channel, user, queue, inbox)
        self._by_channel[channel].add(conn)
        if channel is Channel.TRADE and user is not None:
            self._trade_by_user.setdefault(user, set()).add(conn)
        self.stats[f"connected_{channel}"] += 1
        self._offer(conn, orjson.dumps(CONTROL_MESSAGE).decode())
        if channel is Channel.ORDERBOOK:  # spec §4 [A]: one snapshot right after the control
            self._offer(conn, self._book())
        return conn

    def disconnect(self, conn: Connection) -> None:
        self._by_channel[conn.channel].discard(conn)
        if conn.user is not None and conn.user in self._trade_by_user:
            self._trade_by_user[conn.user].discard(conn)
            if not self._trade_by_user[conn.user]:
                del self._trade_by_user[conn.user]
        conn.queue.close()

    def drop_all(self, code: int, reason: str) -> int:
        """Cut every connection (the `ws_drop_every` fault); returns how many."""
        conns = [c for group in self._by_channel.values() for c in group]
        for conn in conns:
            conn.cut(code, reason)
        return len(conns)

    def connections(self, channel: Channel) -> int:
        return len(self._by_channel[channel])

    def snapshot(self) -> dict[str, object]:
        return {
            "open": {str(c): len(conns) for c, conns in self._by_channel.items()},
            **dict(sorted(self.stats.items())),
        }

    # --- events ---------------------------------------------------------------------------------

    def on_events(self, events: list[Event]) -> None:
        now = self.market.clock.now()
        book_changed = False
        for event in events:
            if isinstance(event, OrderChanged):
                message = model.OrderStatusUpdate(
                    data=event.order, name=str(event.order.status), created_at=now
                )
                self._to_user(event.owner, message)
            elif isinstance(event, ContractChanged):
                message_c = model.ContractStatusUpdate(
                    data=event.contract, name=str(event.contract.status), created_at=now
                )
                for user in dict.fromkeys((event.buyer, event.seller)):
                    self._to_user(user, message_c)
            elif isinstance(event, Traded):
                self._broadcast(Channel.TICKER, _text(model.TickerUpdate(event.ticker, now)))
            elif isinstance(event, Expired):
                update = model.ExpiredOrderUpdate(event.expired, now)
                self._broadcast(Channel.TICKER, _text(update))
            elif isinstance(event, BookChanged):
                book_changed = True
        if book_changed:
            self._book_text = None
            self._broadcast(Channel.ORDERBOOK, self._book(now))

    def _book(self, now: datetime | None = None) -> str:
        if self._book_text is None:
            update = model.OrderBookUpdate(
                self.market.matcher.book(), now or self.market.clock.now()
            )
            self._book_text = _text(update)
        return self._book_text

    def _to_user(self, user: str, message: object) -> None:
        conns = self._trade_by_user.get(user)
        if conns:
            self._deliver(conns, _text(message))

    def _broadcast(self, channel: Channel, text: str) -> None:
        self._deliver(self._by_channel[channel], text)

    def _deliver(self, conns: Iterable[Connection], text: str) -> None:
        malformed = self.market.faults.chance(
            self.market.faults.settings.ws_malformed_rate, "ws_malformed_frame"
        )
        for conn in list(conns):
            self._offer(conn, text)
            if malformed:
                self._offer(conn, MALFORMED_FRAME)

    def _offer(self, conn: Connection, text: str) -> None:
        try:
            conn.queue.send_nowait(text)
        except trio.WouldBlock:
            self.stats["closed_overflow"] += 1
            conn.cut(1008, "send queue overflow")
        except trio.ClosedResourceError:
            pass  # already cut; its handler is closing it
        else:
            self.stats["messages_queued"] += 1


def _text(message: object) -> str:
    return orjson.dumps(wire.unstructure(message)).decode()


def channel_of(path: str) -> Channel:
    return Channel(path.rstrip("/").rsplit("/", 1)[-1])


async def serve_stream(websocket: WebSocket, market: SandboxMarket, hub: StreamHub) -> None:
    """One WebSocket connection, from handshake to close."""
    channel = channel_of(websocket.url.path)
    user: str | None = None
    if channel is Channel.TRADE:
        try:
            user = market.issuer.authenticate(websocket.headers.get("authorization"))
        except NotAuthenticated as exc:
            # Refuse the handshake itself (spec §4 [A]): no accept-then-close.
            hub.stats["refused_unauthenticated"] += 1
            denial = Response(
                orjson.dumps({"detail": str(exc)}),
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
                media_type="application/json",
            )
            await websocket.send_denial_response(denial)
            return
    await websocket.accept()
    conn = hub.connect(channel, user)
    log.info("sandbox.ws.connected", channel=str(channel), user=user)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_until_closed, websocket, nursery.cancel_scope)
            async for text in conn.inbox:
                await websocket.send_text(text)
            nursery.cancel_scope.cancel()
        if conn.close_reason:
            await websocket.close(conn.close_code, conn.close_reason)
    except WebSocketDisconnect:
        pass
    finally:
        hub.disconnect(conn)
        log.info(
            "sandbox.ws.disconnected",
            channel=str(channel),
            user=user,
            reason=conn.close_reason or "client",
        )


async def _read_until_closed(websocket: WebSocket, scope: trio.CancelScope) -> None:
    """Clients send nothing (spec §4); read anyway, to notice when they leave."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    finally:
        scope.cancel()
