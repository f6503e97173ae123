"""Real subprocesses for tests: the sandbox as a user starts it, a clean child environment.

Readiness is polled (the banner on stderr, the port accepting connections) under bounded
deadlines; nothing sleeps a fixed time to synchronise.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).parents[1]
READY_S = 15  # the interpreter and its imports start on a shared CI machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment without any market settings of its own, plus `extra`."""
    skip = {
        "FLEXBOT_URL",
        "FLEXBOT_USER",
        "FLEXBOT_PASSWORD",
        "FLEXBOT_CONFIG",
        "CREDENTIALS_DIRECTORY",
    }
    env = {k: v for k, v in os.environ.items() if k not in skip}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


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


@contextmanager
def sandbox_process(logs: Path, *extra: str) -> Iterator[Market]:
    """`flexbot sandbox` on a free port with users alice and bob (and `extra` arguments)."""
    port = free_port()
    argv = [
        *(sys.executable, "-m", "flexbot.cli", "sandbox", "--port", str(port)),
        *("--user=alice:alice-pw", "--user=bob:bob-pw", *extra),
        *("--log-format", "json"),
    ]
    err = logs / "stderr.log"
    with (logs / "stdout.log").open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=child_env(), cwd=ROOT)
    try:
        deadline = time.monotonic() + READY_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"sandbox exited with {process.returncode}: {err.read_text()}")
            if "listening on" in err.read_text():
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                pytest.fail(f"sandbox not ready after {READY_S} s: {err.read_text()}")
            time.sleep(0.02)
        yield Market(process, port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=1)  # its graceful shutdown is tested elsewhere; do not wait it out
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
