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
internals and on wsproto (hypercorn's WebSocket library), hence the version pins in
pyproject.toml. `install()` first checks that every internal it relies on is there, with the
signature it is called with (`check_internals`), and refuses to start the sandbox with a message
that names what is missing and the versions needed (`UnsupportedServer`), rather than letting an
`AttributeError` surface deep inside the first WebSocket connection.
"""

from __future__ import annotations

import dataclasses
import inspect
import socket
from collections import Counter
from collections.abc import Callable, Generator
from importlib import import_module, metadata
from typing import Any

from flexbot.sandbox.faults import Faults

NEEDS = "hypercorn>=0.17,<0.19 and wsproto>=1.2,<2"  # the pins of pyproject.toml
FIX = "install the pinned versions with `pip install -e .`"


class UnsupportedServer(RuntimeError):
    """The installed hypercorn or wsproto lacks an internal the sandbox's liveness relies on."""


def _installed() -> str:
    found = []
    for name in ("hypercorn", "wsproto"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"no {name}")
    return ", ".join(found)


def _unsupported(problems: list[str]) -> str:
    return f"the sandbox needs {NEEDS} (installed: {_installed()}): {'; '.join(problems)}; {FIX}"


try:
    import hypercorn.protocol.h2
    import hypercorn.protocol.h11
    from hypercorn.config import Config, Sockets
    from hypercorn.protocol.events import StreamClosed
    from hypercorn.protocol.ws_stream import WSStream
    from hypercorn.typing import WebsocketAcceptEvent
    from wsproto.events import CloseConnection, Event, Ping, Pong
except ImportError as exc:  # pragma: no cover - only with versions outside the pins
    raise UnsupportedServer(_unsupported([str(exc)])) from exc


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
    """Make hypercorn build `LiveWSStream`s (idempotent; inert without a `SandboxConfig`).

    Raises `UnsupportedServer` if an internal it relies on is missing (`check_internals`)."""
    problems = check_internals()
    if problems:
        raise UnsupportedServer(_unsupported(problems))
    for protocol in (hypercorn.protocol.h11, hypercorn.protocol.h2):
        setattr(protocol, "WSStream", LiveWSStream)  # noqa: B010 - not a re-export mypy knows


# What `LiveWSStream` and `SandboxConfig` use of hypercorn and wsproto, each as (module, dotted
# attribute, the parameters it is called with, or None to only require it to exist). Instance
# attributes that `WSStream.__init__` sets are checked as its parameters.
_WS = "hypercorn.protocol.ws_stream"
RELIED_ON: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("hypercorn.protocol.h11", "WSStream", None),  # replaced by install()
    ("hypercorn.protocol.h2", "WSStream", None),
    (_WS, "WSStream.__init__", ("config", "context", "task_group", "send", "stream_id")),
    (_WS, "WSStream._accept", ("message",)),  # overridden, and called first
    (_WS, "WSStream._handle_events", ()),  # reads connection.events(), answers pings
    (_WS, "WSStream._send_wsproto_event", ("event",)),
    (_WS, "WSStream.handle", ("event",)),
    ("hypercorn.protocol.events", "StreamClosed", ("stream_id",)),
    ("hypercorn.trio.task_group", "TaskGroup.spawn", ("func",)),
    ("hypercorn.trio.worker_context", "WorkerContext.sleep", ("wait",)),
    ("hypercorn.config", "Config.create_sockets", ()),
    ("hypercorn.config", "Sockets", ("secure_sockets", "insecure_sockets")),
    ("wsproto", "Connection.events", ()),  # replaced per connection by a filter
    ("wsproto", "Connection.send", ("event",)),
    ("wsproto.events", "Ping", ("payload",)),
    ("wsproto.events", "Pong", ()),
    ("wsproto.events", "CloseConnection", ("code", "reason")),
)


def check_internals() -> list[str]:
    """What is missing, or called differently, of the internals listed in `RELIED_ON` (empty
    when all is there)."""
    problems = []
    for module_name, path, parameters in RELIED_ON:
        where = f"{module_name}.{path}"
        try:
            found: Any = import_module(module_name)
            for part in path.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError):
            problems.append(f"{where} is missing")
            continue
        if parameters is None:
            continue
        takes = _parameters(found)
        if takes is None:
            problems.append(f"{where} has no signature to check")
            continue
        lacking = [name for name in parameters if name not in takes]
        if lacking:
            problems.append(f"{where} takes no {', '.join(lacking)}")
    return problems


def _parameters(thing: Callable[..., Any] | type) -> set[str] | None:
    if dataclasses.is_dataclass(thing):
        return {field.name for field in dataclasses.fields(thing)}
    try:
        return set(inspect.signature(thing).parameters)
    except (TypeError, ValueError):
        return None
