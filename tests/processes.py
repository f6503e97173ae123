"""Real subprocesses for tests: the sandbox as a user starts it, a clean child environment.

Readiness is polled (the sandbox's banner) under bounded deadlines; nothing sleeps a fixed time to
synchronise. The launching itself is `flexbot.sandbox.launch`, shared with the benchmarks.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import httpx
import pytest

from flexbot.sandbox.app import ADMIN_HEADER
from flexbot.sandbox.launch import SandboxDidNotStart, child_env, launched_sandbox
from flexbot.sandbox.market import ADMIN_TOKEN_ENV

__all__ = [
    "ADMIN_HEADERS",
    "READY_S",
    "ROOT",
    "Market",
    "child_env",
    "default_sigint",
    "free_port",
    "logged_in",
    "sandbox_process",
]

ROOT = Path(__file__).parents[1]
READY_S = 15  # the interpreter and its imports start on a shared CI machine
# The sandbox's operator token, for the tests that switch its faults over HTTP.
ADMIN_TOKEN = "test-admin-token"
ADMIN_HEADERS = {ADMIN_HEADER: ADMIN_TOKEN}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def default_sigint() -> None:
    """In the child: SIGINT as a terminal's Ctrl-C finds it, even if our parent ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@attrs.frozen
class Market:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def logged_in(market: Market, user: str) -> httpx.Client:
    """A plain HTTP client of the sandbox, logged in as `user` (password `<user>-pw`)."""
    http = httpx.Client(base_url=market.url, timeout=5)
    form = {
        "client_id": "glocalflexmarket_public_api",
        "grant_type": "password",
        "username": user,
        "password": f"{user}-pw",
    }
    token = http.post("/auth/oauth/v2/token", data=form).json()["access_token"]
    http.headers["Authorization"] = f"Bearer {token}"
    return http


@contextmanager
def sandbox_process(logs: Path, *extra: str) -> Iterator[Market]:
    """`flexbot sandbox` with users alice and bob (and `extra` arguments); its faults change over
    HTTP with `ADMIN_HEADERS`."""
    args = ("--user=alice:alice-pw", "--user=bob:bob-pw", *extra, "--log-format", "json")
    env = {ADMIN_TOKEN_ENV: ADMIN_TOKEN}
    # Its graceful shutdown is tested elsewhere: a test does not wait it out.
    try:
        with launched_sandbox(
            *args, logs=logs, ready_s=READY_S, stop_s=1.0, cwd=ROOT, env=env
        ) as running:
            yield Market(running.process, running.port)
    except SandboxDidNotStart as exc:
        pytest.fail(str(exc))
