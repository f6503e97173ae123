"""`flexbot sandbox` as a child process, for tests, benchmarks and scripts.

It listens on a port it picks itself (`--port 0`, so no race for a free one) and is ready when its
banner says where: the banner is printed once the server is bound. Its output goes to files in a
directory of the caller's; it is stopped on every exit path.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from attrs import frozen

# What a child must not inherit: market settings of its own, or a systemd around it.
NOT_INHERITED = (
    "FLEXBOT_URL",
    "FLEXBOT_USER",
    "FLEXBOT_PASSWORD",
    "FLEXBOT_CONFIG",
    "CREDENTIALS_DIRECTORY",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
)
_LISTENING = re.compile(r"listening on (https?://\S+)")


class SandboxDidNotStart(RuntimeError):
    pass


@frozen
class LaunchedSandbox:
    process: subprocess.Popen[bytes]
    url: str  # http(s)://127.0.0.1:port
    stderr: Path  # its banner and anything it prints outside the log

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None  # the banner always names one
        return port


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without `NOT_INHERITED`, unbuffered, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def stop(process: subprocess.Popen[bytes], timeout_s: float = 5.0) -> int:
    """SIGTERM, then SIGKILL if it outlives `timeout_s`; returns the exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


@contextmanager
def launched_sandbox(
    *args: str,
    logs: Path,
    ready_s: float = 15.0,
    stop_s: float = 5.0,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[LaunchedSandbox]:
    """`flexbot sandbox ARGS` on a port of its choosing, its log in `logs/sandbox.log` and its
    stderr in `logs/sandbox.stderr.log`, `env` added to its environment (an admin token, say);
    raises `SandboxDidNotStart` (with its stderr) when it exits or is not listening within
    `ready_s`."""
    argv = [sys.executable, "-m", "flexbot.cli", "sandbox", "--port", "0", *args]
    err = logs / "sandbox.stderr.log"
    environ = child_env(**(env or {}))
    with (logs / "sandbox.log").open("wb") as out, err.open("wb") as errors:
        process = subprocess.Popen(argv, stdout=out, stderr=errors, env=environ, cwd=cwd)
    try:
        deadline = time.monotonic() + ready_s
        while not (found := _LISTENING.search(err.read_text(errors="replace"))):
            if process.poll() is not None:
                raise SandboxDidNotStart(
                    f"the sandbox exited with {process.returncode}: {err.read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise SandboxDidNotStart(
                    f"the sandbox is not listening after {ready_s} s: {err.read_text()[-2000:]}"
                )
            time.sleep(0.02)
        yield LaunchedSandbox(process, found.group(1), err)
    finally:
        stop(process, stop_s)
