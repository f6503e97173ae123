"""WebSocket liveness at the protocol level, which ASGI does not expose to applications.

Hypercorn answers client pings and can send pings, but never notices a client that stops answering
them. The sandbox needs both directions (spec §4, issue: "the server pings every --ping-interval
seconds and closes a connection after 3 missed pongs"; fault `ws_no_pong`), so this module gives
hypercorn a WebSocket stream that:

- pings every `ws_ping_interval_s` and closes the connection (1011, "ping timeout") once
  `ws_missed_pongs` pings in a row went unanswered;
- stops answering client pings while the `ws_no_pong` fault is on (a half-open link that looks
  alive).

`SandboxConfig` also bounds how long a connection may stall on a peer that stops reading (the
kernel's `TCP_USER_TIMEOUT`), the one way to unblock a write that hypercorn shields from
cancellation. The stream only acts for servers started with a `SandboxConfig`; for any other
hypercorn config it is the stock stream. Hypercorn has no hook for this, so `install()` points
hypercorn's HTTP/1 and HTTP/2 protocols at the subclass; it relies on hypercorn's `WSStream`
internals, hence the version pin.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Generator

import hypercorn.protocol.h2
import hypercorn.protocol.h11
from hypercorn.config import Config, Sockets
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.typing import WebsocketAcceptEvent
from wsproto.events import CloseConnection, Event, Ping, Pong

from flexbot.sandbox.faults import Faults


class SandboxConfig(Config):
    """A hypercorn config that also carries the sandbox's WebSocket liveness settings."""

    ws_ping_interval_s: float | None = 30.0
    ws_missed_pongs: int = 3
    faults: Faults | None = None
    ws_stats: Counter[str] | None = None
    # A peer that has not acknowledged our data for this long is cut off by the kernel. Without
    # it, a client that stops reading blocks hypercorn's (shielded, uncancellable) socket write
    # for ever: its close frame never leaves, and neither does a graceful shutdown.
    stall_timeout_s: float | None = 10.0

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        if self.stall_timeout_s and hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
            for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
                # Accepted connections inherit it from the listening socket.
                sock.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(self.stall_timeout_s * 1000)
                )
        return sockets


class LiveWSStream(WSStream):
    _unanswered = 0

    async def _accept(self, message: WebsocketAcceptEvent) -> None:
        await super()._accept(message)
        config = self.config
        if not isinstance(config, SandboxConfig):
            return
        events = self.connection.events

        def filtered() -> Generator[Event, None, None]:
            for event in events():
                if isinstance(event, Pong):
                    self._unanswered = 0
                    continue
                if isinstance(event, Ping) and config.faults and config.faults.settings.ws_no_pong:
                    config.faults.injected["ws_ping_unanswered"] += 1
                    continue  # hypercorn would answer it: swallow it instead
                yield event

        self.connection.events = filtered  # type: ignore[method-assign]
        if config.ws_ping_interval_s:
            self.task_group.spawn(self._keepalive, config)

    async def _keepalive(self, config: SandboxConfig) -> None:
        assert config.ws_ping_interval_s
        while True:
            await self.context.sleep(config.ws_ping_interval_s)
            if self.closed:
                return
            if self._unanswered >= config.ws_missed_pongs:
                if config.ws_stats is not None:
                    config.ws_stats["closed_ping_timeout"] += 1
                await self._send_wsproto_event(CloseConnection(code=1011, reason="ping timeout"))
                await self.handle(StreamClosed(stream_id=self.stream_id))  # the app hears it
                await self.send(StreamClosed(stream_id=self.stream_id))  # the socket closes
                return
            self._unanswered += 1
            await self._send_wsproto_event(Ping(payload=b"flexbot-sandbox"))


def install() -> None:
    """Make hypercorn build `LiveWSStream`s (idempotent; inert without a `SandboxConfig`)."""
    for protocol in (hypercorn.protocol.h11, hypercorn.protocol.h2):
        setattr(protocol, "WSStream", LiveWSStream)  # noqa: B010 - not a re-export mypy knows
