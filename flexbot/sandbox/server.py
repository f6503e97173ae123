"""Run the sandbox: hypercorn on trio, plus the task that expires orders on time."""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import cast

import trio
from attrs import frozen
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import Framework

from flexbot.sandbox import tls
from flexbot.sandbox.app import RequestLog, build_app
from flexbot.sandbox.market import SandboxMarket

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


@frozen
class Running:
    """What a started sandbox tells its parent."""

    base_url: str  # http(s)://host:port, no trailing slash
    ws_url: str  # ws(s)://host:port
    ca: Path | None  # the CA file to trust with --tls and a generated certificate


def _hypercorn_config(settings: ServerSettings, files: tls.TlsFiles | None) -> Config:
    config = Config()
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


async def expire_orders(market: SandboxMarket) -> None:
    """Expire orders at their expiry time, even when no request comes in to notice."""
    wake = trio.Event()

    def on_events(_: object) -> None:
        wake.set()  # a new order may expire before the deadline we sleep towards

    market.subscribe(on_events)
    while True:
        deadline = market.matcher.next_expiry()
        delay = math.inf if deadline is None else market.clock.wall_seconds_until(deadline)
        with trio.move_on_after(min(delay, _MAX_EXPIRY_SLEEP_S)):
            await wake.wait()
        wake = trio.Event()
        market.tick()


async def serve(
    market: SandboxMarket,
    settings: ServerSettings,
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set, then stop gracefully (hypercorn's graceful timeout)."""
    files = _tls_files(settings)
    config = _hypercorn_config(settings, files)
    app = cast(Framework, RequestLog(build_app(market), market))
    async with trio.open_nursery() as nursery:

        async def run_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
            await hypercorn_serve(
                app, config, shutdown_trigger=shutdown.wait, task_status=task_status
            )
            nursery.cancel_scope.cancel()

        nursery.start_soon(expire_orders, market)
        binds: list[str] = await nursery.start(run_http)
        base_url = binds[0]
        scheme, _, rest = base_url.partition("://")
        task_status.started(
            Running(
                base_url=base_url,
                ws_url=f"{'wss' if scheme == 'https' else 'ws'}://{rest}",
                ca=files.ca if files else None,
            )
        )
