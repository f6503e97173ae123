"""The processes of a chaos run: the sandbox market, its config for the daemon, and each
`flexbot run` with its output copied into the logs and parsed as it comes."""

from __future__ import annotations

import json
import resource
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import yaml

from bench.chaos.settings import (
    CONSTANT_FAULTS,
    FULL_DISK,
    PASSWORD,
    ROOT,
    SETTLE_S,
    START_BOUND_S,
    TIME_SCALE,
)
from flexbot.sandbox.app import ADMIN_HEADER
from flexbot.sandbox.launch import child_env, launched_sandbox
from flexbot.sandbox.market import ADMIN_TOKEN_ENV


@attrs.frozen
class Sandbox:
    url: str
    admin: dict[str, str]  # the header that may switch its faults


@contextmanager
def sandbox(workdir: Path, seed: int) -> Iterator[Sandbox]:
    """The sandbox as a user starts it, on a port it picks, with an admin token of this run's."""
    args = [
        *(f"--user=alice:{PASSWORD}", "--user=bob:bob-pw", "--rate-limit", "off"),
        *("--time-scale", str(TIME_SCALE), "--seed", str(seed), "--settlement-delay", "60"),
        *("--counterparties", "6", "--counterparty-interval", "0.2", "--log-format", "json"),
        *(f"--fault={name}={value}" for name, value in CONSTANT_FAULTS.items()),
    ]
    token = secrets.token_urlsafe(16)
    with launched_sandbox(
        *args, logs=workdir, ready_s=START_BOUND_S, cwd=ROOT, env={ADMIN_TOKEN_ENV: token}
    ) as running:
        yield Sandbox(running.url, {ADMIN_HEADER: token})


def write_config(workdir: Path, url: str) -> Path:
    strategies = workdir / "strategies"
    strategies.mkdir(exist_ok=True)
    meters = [
        {
            "id": f"{site}-main",
            "location_id": site,
            "source": {"type": "synthetic", "seed": seed, "noise_w": 50, "history_days": 6},
            "baseline": {"method": "mean_of_days", "days": 5},
        }
        for seed, site in enumerate(("site-1", "site-2"), start=3)
    ]
    config = {
        "market": {
            "url": url,
            "username": "alice",
            "password": "${FLEXBOT_PASSWORD}",
            "clock": "sandbox",
            "timeout_s": 3,
            "ping_interval_s": 2,  # a half-open link is found within 6 s
        },
        "store": {"path": "flexbot.db"},
        "strategies": {"config_dir": "strategies", "code_dir": str(ROOT / "strategies")},
        "engine": {"resolve_interval_s": 0.5},
        "meters": meters,
        "verification": {"settle_delay_s": SETTLE_S, "max_wait_s": 600},
        "logging": {"format": "json"},
    }
    (workdir / "flexbot.yaml").write_text(yaml.safe_dump(config))
    for name in ("seller", "buyer", "spread"):
        spec = yaml.safe_load((ROOT / "config" / "strategies" / f"{name}.yaml").read_text())
        # Faster than the examples' defaults so that a short run trades a lot; live, not paper.
        spec.update(enabled=True, dry_run=False)
        spec.get("timer", {}).update(interval_s=5)
        if name == "seller":
            spec["params"].update(windows_ahead=8, capacity_w=500, ask_price=0.25, floor_price=0.05)
        if name == "spread":
            spec["risk"]["max_orders_per_minute"] = 120
        (strategies / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    return workdir / "flexbot.yaml"


def run_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "flexbot.cli", "run", "--config", str(config)]


def _disk_full_from_the_start() -> None:  # in the child, before it runs flexbot
    resource.setrlimit(resource.RLIMIT_FSIZE, FULL_DISK)


@attrs.define(eq=False)
class Daemon:
    """One `flexbot run`. Its stdout goes through a pipe (a file-size limit on the daemon must not
    stop its log) into `daemon.log`, its events parsed as they come; its stderr into
    `daemon.stderr.log`, kept apart: only a halt's last words belong there."""

    process: trio.Process
    started: float  # wall clock
    events: list[dict[str, Any]] = attrs.Factory(list)
    stderr: list[str] = attrs.Factory(list)
    drained: trio.Event = attrs.Factory(trio.Event)  # both outputs copied to their end

    def on_stdout(self, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return  # a line cut short by SIGKILL; the referee reads the file
        if isinstance(event, dict):
            self.events.append(event)

    def seen(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]

    async def wait_for(self, name: str, bound_s: float) -> bool:
        """Whether it logs `name` within `bound_s` (False at once if it exits without)."""
        with trio.move_on_after(bound_s):
            while not self.seen(name):
                if self.process.poll() is not None:
                    await self.drained.wait()
                    break
                await trio.sleep(0.05)
        return bool(self.seen(name))

    async def finish(self) -> int:
        """Its exit status, once it has exited and its output is read to the end."""
        status = await self.process.wait()
        with trio.move_on_after(5.0):
            await self.drained.wait()
        return status


async def start_daemon(
    nursery: trio.Nursery, config: Path, workdir: Path, *, full_disk: bool = False
) -> Daemon:
    process = await trio.lowlevel.open_process(
        run_argv(config),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(FLEXBOT_PASSWORD=PASSWORD),
        cwd=ROOT,
        preexec_fn=_disk_full_from_the_start if full_disk else None,
    )
    daemon = Daemon(process, time.time())
    nursery.start_soon(_copy_output, daemon, workdir)
    return daemon


async def _copy_output(daemon: Daemon, workdir: Path) -> None:
    stdout, stderr = daemon.process.stdout, daemon.process.stderr
    assert stdout is not None
    assert stderr is not None
    async with trio.open_nursery() as both:
        both.start_soon(_copy, stdout, workdir / "daemon.log", daemon.on_stdout)
        both.start_soon(_copy, stderr, workdir / "daemon.stderr.log", daemon.stderr.append)
    daemon.drained.set()


async def _copy(stream: trio.abc.ReceiveStream, sink: Path, on_line: Callable[[str], None]) -> None:
    pending = b""
    with sink.open("ab") as out:
        async with stream:
            async for chunk in stream:
                out.write(chunk)
                out.flush()
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    on_line(line.decode("utf-8", "replace"))
        if pending:  # a line cut short by SIGKILL: the next run starts on a line of its own
            out.write(b"\n")
            on_line(pending.decode("utf-8", "replace"))
