"""Shared fixtures: an in-process sandbox on a real loopback port, and clients for it.

The sandbox runs in the test's own trio run (anyio's pytest plugin, trio backend) with a manual wall
clock, so token lifetimes, rate limits and expiry are driven by the test, never by sleeping.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial

import attrs
import httpx
import pytest
import trio

from flexbot.clock import ManualWall, MarketClock
from flexbot.sandbox.market import MarketSettings, SandboxMarket
from flexbot.sandbox.server import Running, ServerSettings, serve
from tests.logging_state import logging_restored

# A fixed market start: Monday 2026-11-23 10:00:00 UTC, on the 15-minute grid.
MARKET_START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
USERS = {"alice": "alice-pw", "bob": "bob-pw"}


class MaxRandom(random.Random):
    """`uniform(a, b)` is always `b`: a backoff waits its full ceiling, deterministically."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Logging is process-wide: a test that configures it (`cli.main` does) must not leave its
    level or its (by then closed) captured stream to the tests that run after it in that worker."""
    with logging_restored():
        yield


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@attrs.define
class Sandbox:
    market: SandboxMarket
    wall: ManualWall
    running: Running

    @property
    def base_url(self) -> str:
        return self.running.base_url

    def advance(self, seconds: float) -> None:
        """Move wall (and so market) time forward."""
        self.wall.advance(seconds)


@pytest.fixture
def market_settings() -> MarketSettings:
    """Override in a test module (or parametrize indirectly) to change the sandbox's settings."""
    return MarketSettings(users=USERS, seed=7)


@pytest.fixture
def server_settings() -> ServerSettings:
    return ServerSettings(port=0, graceful_timeout_s=0.1)


@asynccontextmanager
async def open_sandbox(
    market_settings: MarketSettings, server_settings: ServerSettings
) -> AsyncIterator[Sandbox]:
    """A sandbox in this trio run, on a free loopback port, with a manual wall clock."""
    wall = ManualWall()
    clock = MarketClock(market_settings.time_scale, wall=wall, start=MARKET_START)
    market = SandboxMarket(market_settings, clock=clock)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        running = await nursery.start(partial(serve, market, server_settings, shutdown=shutdown))
        yield Sandbox(market=market, wall=wall, running=running)
        shutdown.set()


@pytest.fixture
async def sandbox(
    market_settings: MarketSettings, server_settings: ServerSettings
) -> AsyncIterator[Sandbox]:
    async with open_sandbox(market_settings, server_settings) as running:
        yield running


@pytest.fixture
async def http(sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    ca = sandbox.running.ca
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca)) if ca else True
    async with httpx.AsyncClient(base_url=sandbox.base_url, verify=verify, timeout=10) as client:
        yield client
