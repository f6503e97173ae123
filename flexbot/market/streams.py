"""WebSocket consumers: one per endpoint, reconnecting forever, never silently dead.

Each `StreamConsumer` connects (a fresh token on every connect, as the official client sends it,
even on public endpoints), checks the control message, then reads frames and hands them to a sink,
while a companion task pings every `ping_interval_s` and declares the link dead after `missed_pongs`
unanswered pings or `silence_s` without any frame. Any failure ends the connection, never the
consumer: it logs `ws.disconnected` with the reason, waits a capped, fully jittered backoff
(`ws.reconnecting`) and connects again; once a connection has been up for `stable_after_s`, the
backoff starts over. A frame that cannot be decoded is counted and logged, never fatal.

A message larger than the endpoint's limit (`max_message_bytes`; the book has its own, larger
`max_book_message_bytes`) makes trio-websocket close the link with 1009. The market would send the
same message again at once, so such a close is counted (`StreamStats.too_big`), logged once per
episode (`ws.message_too_big`, until a frame fits again: `ws.message_too_big_ended`) and followed
by a wait near the backoff's cap, never a backoff started over; the other endpoints, each its own
consumer, are untouched.

Endpoints are declared in one table (`DECODERS`), cryptofeed-style: what each endpoint carries and
how it is turned into events. The sinks decide delivery (see `flexbot.market.feed`).
"""

from __future__ import annotations

import enum
import math
import random
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
from attrs import define, field, frozen
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)
from wsproto.utilities import LocalProtocolError

from flexbot import logs, model, wire
from flexbot.backoff import Backoff, Retrying
from flexbot.market.auth import TokenManager
from flexbot.problems import Invalid

log = logs.get_logger("flexbot.market.streams")


class Endpoint(enum.StrEnum):
    TRADE = "trade"
    TICKER = "ticker"
    ORDERBOOK = "orderbook"

    @property
    def path(self) -> str:
        return f"/api/v1/ws/{self.value}"


# What each endpoint may carry. Anything else is counted as unexpected but still delivered, so a
# new message type from the market reaches the strategies instead of vanishing here.
EXPECTED: dict[Endpoint, frozenset[str]] = {
    Endpoint.TRADE: frozenset({"order_status_update", "contract_status_update"}),
    Endpoint.TICKER: frozenset({"ticker_update", "expired_order_update"}),
    Endpoint.ORDERBOOK: frozenset({"orderbook_update"}),
}


POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
# The full book every time, growing with the market: 3x the 18.8 MB book once seen (see
# `StreamSettings`); /trade and /ticker carry one order or trade a message.
MAX_BOOK_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class StreamDead(Exception):
    """The link is gone or not trustworthy any more; the consumer reconnects."""


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value}")


@frozen
class StreamSettings:
    ws_url: str  # ws(s)://host[:port], no path
    ping_interval_s: float = field(default=20.0, validator=_positive)
    missed_pongs: int = field(default=3, validator=_positive)
    silence_s: float = field(default=120.0, validator=_positive)
    connect_timeout_s: float = field(default=10.0, validator=_positive)
    close_timeout_s: float = field(default=2.0, validator=_positive)
    # A connection up this long resets the backoff. Short, because a market that drops links
    # every few seconds (a deploy, a proxy's idle limit) must not push reconnects out towards
    # the cap; a link that fails within it still backs off (the chaos run found this).
    stable_after_s: float = field(default=5.0, validator=_positive)
    backoff: Backoff = field(factory=lambda: Backoff(base_s=0.5, cap_s=30.0))
    # Limits on one message, as trio-websocket measures it (the characters of a text frame).
    max_message_bytes: int = field(default=MAX_MESSAGE_BYTES, validator=_positive)
    max_book_message_bytes: int = field(default=MAX_BOOK_MESSAGE_BYTES, validator=_positive)
    # Socket reads: a 10 KB book in one read, not three of trio-websocket's default 4 KiB
    # (bench/ingest.py: +60-70% messages/s at the socket).
    receive_buffer_bytes: int = 64 * 1024


@define
class StreamStats:
    connects: int = 0
    disconnects: int = 0
    frames: int = 0
    bad_frames: int = 0
    unexpected: int = 0
    too_big: int = 0  # links closed (1009) for a message over the limit
    disconnect_reasons: Counter[str] = field(factory=Counter)


# A sink receives each raw frame (bytes or str) and decides what to do with it; `on_connect` runs
# after the control message of each new connection (reconciliation, book reset).
FrameSink = Callable[[str | bytes], Awaitable[None]]
ConnectHook = Callable[[], Awaitable[None]]


class StreamConsumer:
    def __init__(
        self,
        endpoint: Endpoint,
        settings: StreamSettings,
        sink: FrameSink,
        *,
        tokens: TokenManager | None = None,
        ssl_context: ssl.SSLContext | None = None,
        on_connect: ConnectHook | None = None,
        on_disconnect: ConnectHook | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self._sink = sink
        self._tokens = tokens
        self._ssl = ssl_context
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._rng = rng or random.Random()
        self.stats = StreamStats()
        self.connected = False
        self._up_since: float | None = None
        self.last_frame_at = 0.0
        self._token_suspect = False
        self._too_big = False  # the connection that just ended was closed 1009
        self._too_big_episode = 0  # 1009 closes since a frame last fitted; 0: no episode

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and reconnect until cancelled. Reports started once the first attempt is made."""
        retrying = Retrying(self.settings.backoff, self._rng)
        task_status.started()
        while True:
            self._up_since = None
            self._too_big = False
            reason = await self._one_connection()
            self.connected = False
            if self._was_stable() and not self._too_big:
                retrying.reset()
            if self._on_disconnect is not None:
                await self._on_disconnect()
            # After a 1009 the same message would come again at once: wait near the cap.
            delay = retrying.next_delay_at_cap() if self._too_big else retrying.next_delay()
            log.info(
                "ws.reconnecting",
                endpoint=str(self.endpoint),
                attempt=retrying.attempt,
                delay_s=round(delay, 3),
                reason=reason,
            )
            await trio.sleep(delay)

    def _was_stable(self) -> bool:
        """Up (control message in) long enough: a connection that never came up, however long
        its attempt took (a 10 s connect timeout), still backs off."""
        up_since = self._up_since
        return (
            up_since is not None and trio.current_time() - up_since >= self.settings.stable_after_s
        )

    @property
    def max_message_bytes(self) -> int:
        if self.endpoint is Endpoint.ORDERBOOK:
            return self.settings.max_book_message_bytes
        return self.settings.max_message_bytes

    async def _one_connection(self) -> str:
        """One connection, from connect to its end; returns why it ended."""
        url = self.settings.ws_url.rstrip("/") + self.endpoint.path
        headers: list[tuple[bytes, bytes]] = []
        if self._tokens is not None:
            token = await self._tokens.token()
            headers.append((b"Authorization", f"Bearer {token}".encode()))
        ended: str | None = None
        opened: WebSocketConnection | None = None
        try:
            async with open_websocket_url(
                url,
                self._ssl,
                extra_headers=headers,
                message_queue_size=64,
                max_message_size=self.max_message_bytes,
                receive_buffer_size=self.settings.receive_buffer_bytes,
                connect_timeout=self.settings.connect_timeout_s,
                disconnect_timeout=self.settings.close_timeout_s,
            ) as ws:
                opened = ws
                self._token_suspect = False
                ended = await self._session(ws)
                if self._too_big:
                    # trio-websocket (0.12) sends its 1009 but then neither closes the socket nor
                    # bounds its reader's wait for the peer: close it, so the reader ends now.
                    await trio.aclose_forcefully(ws._stream)
                if self._token_suspect and self._tokens is not None:
                    await self._tokens.renew_after_401(token)
        except ConnectionRejected as exc:
            if exc.status_code == 401 and self._tokens is not None:
                await self._tokens.renew_after_401(token)
            return self._ended(f"handshake refused with HTTP {exc.status_code}")
        except (HandshakeError, OSError, trio.BrokenResourceError, LocalProtocolError) as exc:
            # LocalProtocolError: trio-websocket's reader, meeting a second oversized fragment in
            # one read after its 1009, tries to close again; a dead link, not a dead consumer.
            if ended is not None:
                # The session had ended (and was counted); only its close handshake timed out,
                # as it does on a half-open link.
                return ended
            cause = exc.__cause__ or exc.__context__
            detail = str(exc) or (f"{type(cause).__name__}: {cause}" if cause else "")
            what = "link failed" if self.connected else "connect failed"
            return self._ended(f"{what}: {type(exc).__name__}: {detail}")
        finally:
            if opened is not None:
                # A no-op after a normal close; after the reader's own failure (above), the only
                # thing that closes the socket (else it lingers until garbage collection).
                await trio.aclose_forcefully(opened._stream)
        assert ended is not None
        return ended

    async def _session(self, ws: WebSocketConnection) -> str:
        try:
            await self._expect_control(ws)
        except (StreamDead, ConnectionClosed) as exc:
            # The spec's variant of a refused login: a control error, then close 1008.
            self._token_suspect = True
            return self._ended(f"no control message: {exc}")
        self.connected = True
        self._up_since = trio.current_time()
        self.stats.connects += 1
        self.last_frame_at = trio.current_time()
        log.info("ws.connected", endpoint=str(self.endpoint))
        ended: list[str] = []

        async def until_it_ends(part: Callable[[WebSocketConnection], Awaitable[None]]) -> None:
            # The reader and the watchdog end the connection the same way: the first reason wins.
            try:
                await part(ws)
            except ConnectionClosed as exc:
                why = exc.reason
                detail = f"{why.code} {why.reason or why.name}" if why is not None else "no reason"
                if why is not None and why.code == POLICY_VIOLATION:
                    self._token_suspect = True  # how a server says "your token is no good" late
                if why is not None and why.code == MESSAGE_TOO_BIG and not ended:
                    self._message_too_big(why.reason)
                ended.append(f"closed: {detail}")
            except StreamDead as exc:
                ended.append(str(exc))
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(until_it_ends, self._watchdog)
            nursery.start_soon(until_it_ends, self._read)
        return self._ended(ended[0] if ended else "ended")

    async def _read(self, ws: WebSocketConnection) -> None:
        if self._on_connect is not None:
            await self._on_connect()
        while True:
            frame = await ws.get_message()
            self.last_frame_at = trio.current_time()
            self.stats.frames += 1
            if self._too_big_episode:
                self._too_big_ended()
            await self._sink(frame)

    def _message_too_big(self, reason: str | None) -> None:
        self._too_big = True
        self.stats.too_big += 1
        self._too_big_episode += 1
        if self._too_big_episode == 1:  # once per episode, not on every reconnect
            log.warning(
                "ws.message_too_big",
                endpoint=str(self.endpoint),
                limit_bytes=self.max_message_bytes,
                reason=reason,
            )

    def _too_big_ended(self) -> None:
        log.info(
            "ws.message_too_big_ended", endpoint=str(self.endpoint), closes=self._too_big_episode
        )
        self._too_big_episode = 0

    async def _expect_control(self, ws: WebSocketConnection) -> None:
        with trio.move_on_after(self.settings.silence_s) as scope:
            frame = await ws.get_message()
        if scope.cancelled_caught:
            raise StreamDead("no control message in time")
        try:
            message = wire.parse_message(frame)
        except Invalid as exc:
            raise StreamDead(f"unreadable control message: {exc}") from None
        if not isinstance(message, model.Control) or message.status != "success":
            raise StreamDead(f"expected a successful control message, got {frame!r:.200}")

    async def _watchdog(self, ws: WebSocketConnection) -> None:
        """Ping, and declare the link dead when pongs or frames stop coming."""
        interval = self.settings.ping_interval_s
        while True:
            await trio.sleep(interval)
            silent_for = trio.current_time() - self.last_frame_at
            if silent_for > self.settings.silence_s:
                raise StreamDead(f"silent for {silent_for:.1f} s")
            with trio.move_on_after(interval * self.settings.missed_pongs) as scope:
                await ws.ping()
            if scope.cancelled_caught:
                raise StreamDead(f"{self.settings.missed_pongs} pings unanswered")
            self.last_frame_at = max(self.last_frame_at, trio.current_time())

    def _ended(self, reason: str) -> str:
        if self.connected:
            self.stats.disconnects += 1
        self.stats.disconnect_reasons[reason.split(":")[0]] += 1
        log.info("ws.disconnected", endpoint=str(self.endpoint), reason=reason)
        return reason


def decode_frame(
    frame: str | bytes, endpoint: Endpoint, stats: StreamStats
) -> model.Message | None:
    """Decode one frame into a typed message; None (counted and logged) when it is unreadable."""
    try:
        message = wire.parse_message(frame)
    except Invalid as exc:
        stats.bad_frames += 1
        log.warning(
            "ws.bad_message", endpoint=str(endpoint), error=str(exc)[:300], frame=_preview(frame)
        )
        return None
    kind = message.type
    if kind not in EXPECTED[endpoint]:
        stats.unexpected += 1
        log.info("ws.unexpected_message", endpoint=str(endpoint), type=kind)
    return message


def _preview(frame: Any) -> str:
    text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else str(frame)
    return text[:120]
