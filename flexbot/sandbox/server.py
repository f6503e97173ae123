"""Run the sandbox: hypercorn on trio, plus the task that expires orders on time."""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import cast

import trio
from attrs import frozen
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import Framework
from starlette.types import ASGIApp

from flexbot.sandbox import liveness, tls
from flexbot.sandbox.app import RequestLog, build_app
from flexbot.sandbox.counterparties import Counterparties
from flexbot.sandbox.liveness import SandboxConfig
from flexbot.sandbox.market import SandboxMarket
from flexbot.sandbox.streams import StreamHub

_MAX_EXPIRY_SLEEP_S = 1.0  # re-read the clock at least this often, whatever the next deadline


@frozen
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    tls: bool = False
    cert: Path | None = None
    key: Path | None = None
    tls_dir: Path | None = None  # where a generated certificate is written
    graceful_timeout_s: float = 3.0
    ws_ping_interval_s: float | None = 30.0  # None: the server sends no pings
    ws_missed_pongs: int = 3
    ws_queue_size: int = 256  # messages queued per connection before it is cut off
    stall_timeout_s: float | None = 10.0  # a peer that stops reading is cut off after this


@frozen
class Running:
    """What a started sandbox tells its parent."""

    base_url: str  # http(s)://host:port, no trailing slash
    ws_url: str  # ws(s)://host:port
    ca: Path | None  # the CA file to trust with --tls and a generated certificate
    hub: StreamHub


def _hypercorn_config(
    settings: ServerSettings, files: tls.TlsFiles | None, market: SandboxMarket, hub: StreamHub
) -> Config:
    liveness.install()
    config = SandboxConfig()
    config.ws_ping_interval_s = settings.ws_ping_interval_s
    config.ws_missed_pongs = settings.ws_missed_pongs
    config.faults = market.faults
    config.ws_stats = hub.stats
    config.stall_timeout_s = settings.stall_timeout_s
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.accesslog = None  # RequestLog writes one structured line per request instead
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = settings.graceful_timeout_s
    if files is not None:
        config.certfile, config.keyfile = str(files.cert), str(files.key)
    return config


def _tls_files(settings: ServerSettings) -> tls.TlsFiles | None:
    if not settings.tls:
        return None
    if settings.cert is not None and settings.key is not None:
        return tls.TlsFiles(cert=settings.cert, key=settings.key, ca=None)
    directory = settings.tls_dir or Path(tempfile.mkdtemp(prefix="flexbot-sandbox-tls-"))
    return tls.generate(directory)


async def keep_time(market: SandboxMarket) -> None:
    """Expire orders and step contracts when their time comes, even if no request comes in."""
    wake = trio.Event()

    def on_events(_: object) -> None:
        wake.set()  # a new order or contract may be due before the deadline we sleep towards

    market.subscribe(on_events)
    while True:
        deadline = market.next_deadline()
        delay = math.inf if deadline is None else market.clock.wall_seconds_until(deadline)
        with trio.move_on_after(min(delay, _MAX_EXPIRY_SLEEP_S)):
            await wake.wait()
        wake = trio.Event()
        market.tick()


async def drop_connections(market: SandboxMarket, hub: StreamHub) -> None:
    """The `ws_drop_every` fault: cut every WebSocket connection every N seconds while it is on."""
    while True:
        every = market.faults.settings.ws_drop_every
        await trio.sleep(every or 1.0)  # off: look again in a second
        if every and market.faults.settings.ws_drop_every:
            dropped = hub.drop_all(1012, "sandbox fault: ws_drop_every")
            market.faults.injected["ws_drop"] += dropped


async def serve(
    market: SandboxMarket,
    settings: ServerSettings,
    *,
    shutdown: trio.Event,
    wrap_app: Callable[[ASGIApp], ASGIApp] | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set, then stop gracefully (hypercorn's graceful timeout).
    `wrap_app` adds an outermost ASGI layer (a benchmark's stamps, say)."""
    files = _tls_files(settings)
    hub = StreamHub(market, queue_size=settings.ws_queue_size)
    config = _hypercorn_config(settings, files, market, hub)
    asgi: ASGIApp = RequestLog(build_app(market, hub), market)
    app = cast(Framework, asgi if wrap_app is None else wrap_app(asgi))
    async with trio.open_nursery() as nursery:

        async def run_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
            await hypercorn_serve(
                app, config, shutdown_trigger=shutdown.wait, task_status=task_status
            )
            nursery.cancel_scope.cancel()

        nursery.start_soon(keep_time, market)
        nursery.start_soon(drop_connections, market, hub)
        traders = Counterparties(market, market.settings.counterparties, seed=market.settings.seed)
        nursery.start_soon(traders.run, market.settings.counterparty_interval_s)
        binds: list[str] = await nursery.start(run_http)
        base_url = binds[0]
        scheme, _, rest = base_url.partition("://")
        task_status.started(
            Running(
                base_url=base_url,
                ws_url=f"{'wss' if scheme == 'https' else 'ws'}://{rest}",
                ca=files.ca if files else None,
                hub=hub,
            )
        )
