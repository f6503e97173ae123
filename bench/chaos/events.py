"""What a chaos run does to the daemon, and when: fault bursts, the kill moments, the plan of
the events (two daemons on one store, a full disk), each event and what it found, and the
timeline of the daemon's runs."""

from __future__ import annotations

import contextlib
import json
import random
import resource
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from bench.chaos.processes import Daemon, run_argv
from bench.chaos.settings import (
    DISK_FREED,
    FULL_DISK,
    FULL_HOLD_S,
    HALT_BOUND_S,
    PASSWORD,
    READY_BOUND_S,
    RESTART_DELAY_S,
    ROOT,
    SECOND_BOUND_S,
    TRACEBACK,
    TRADE_BOUND_S,
    ChaosSettings,
)
from flexbot.sandbox.launch import child_env
from flexbot.store import lock

# --- what each event found ------------------------------------------------------------------------


@attrs.frozen
class SecondDaemon:
    """A second `flexbot run` on the store of a running one."""

    exit_code: int | None  # None: still running at its bound (then killed)
    took_s: float
    named_first: bool  # its stderr names the running daemon's pid
    did: list[str]  # its log events: `daemon.store_unusable` only, or it touched something
    tracebacks: int
    first_ran_on: bool
    first_held_lock: bool = True  # the running daemon held the store's lock when it started

    def problems(self) -> list[str]:
        found = []
        if not self.first_held_lock:
            found.append("the running daemon never held the store's lock")
        if self.exit_code != 2:
            found.append(f"exited {self.exit_code} after {self.took_s:.1f} s, expected 2")
        if not self.named_first:
            found.append("its stderr did not name the running daemon's pid")
        if self.did != ["daemon.store_unusable"]:
            found.append(f"its log: {self.did}, expected only daemon.store_unusable")
        if self.tracebacks:
            found.append("a traceback")
        if not self.first_ran_on:
            found.append("the running daemon stopped")
        return found


@attrs.define
class DiskFull:
    """The running daemon's disk full, its restart under the full disk, the disk freed."""

    was_ready: bool = False  # the daemon was trading when its disk filled
    exit_code: int | None = None  # None: still running at its bound (then killed)
    halt_s: float = 0.0  # the limit applied to the exit
    store_failed: list[dict[str, Any]] = attrs.Factory(list)  # its `store.failed` events
    halt_tracebacks: int = 0
    waited: int = 0  # the restart's `store.unwritable` events while the disk was full
    exited_while_full: int | None = None  # the restart's exit status under the full disk, if any
    ready_after_s: float | None = None  # the disk freed to the restart's `daemon.ready`
    traded: bool = False  # the restart placed an order

    def problems(self) -> list[str]:
        if not self.was_ready:
            return [f"the daemon was not ready within {READY_BOUND_S:.0f} s"]
        found = []
        if self.exit_code != 1:
            found.append(f"exited {self.exit_code} after {self.halt_s:.1f} s, expected 1")
        if len(self.store_failed) != 1:
            found.append(f"{len(self.store_failed)} store.failed events, expected 1")
        elif self.store_failed[0].get("retry_may_fix") is not True:
            found.append(f"store.failed says no retry may fix it: {self.store_failed[0]}")
        if self.halt_tracebacks:
            found.append("a traceback at the halt")
        if self.exited_while_full is not None:
            found.append(f"the restart under the full disk exited {self.exited_while_full}")
        elif not self.waited:
            found.append("the restart under the full disk did not log store.unwritable")
        if self.ready_after_s is None:
            found.append(f"the restart was not ready {READY_BOUND_S:.0f} s after the disk freed")
        elif not self.traded:
            found.append(f"the restart placed no order within {TRADE_BOUND_S:.0f} s of ready")
        return found


# --- the events -----------------------------------------------------------------------------------


async def two_daemons(config: Path, workdir: Path, first: Daemon) -> SecondDaemon:
    """A second `flexbot run` on the running daemon's config, once that one holds the store's
    lock (it takes it first thing, within its interpreter's start)."""
    store = workdir / "flexbot.db"
    pid = first.process.pid
    with trio.move_on_after(READY_BOUND_S):
        while lock.holder(store) != lock.Holder(held=True, pid=pid):
            if first.process.poll() is not None:
                break
            await trio.sleep(0.05)
    if lock.holder(store) != lock.Holder(held=True, pid=pid):
        return SecondDaemon(None, 0.0, False, [], 0, False, first_held_lock=False)
    started = trio.current_time()
    result: subprocess.CompletedProcess[bytes] | None = None
    with trio.move_on_after(SECOND_BOUND_S):
        result = await trio.run_process(
            run_argv(config),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=child_env(FLEXBOT_PASSWORD=PASSWORD),
            cwd=ROOT,
        )
    took = trio.current_time() - started
    out = result.stdout.decode("utf-8", "replace") if result is not None else ""
    err = result.stderr.decode("utf-8", "replace") if result is not None else ""
    with (workdir / "second-daemons.log").open("a") as log:
        log.write(f"# beside pid {pid}: exit {None if result is None else result.returncode}\n")
        log.write(out + err)
    did = []
    for line in out.splitlines():
        try:
            did.append(str(json.loads(line).get("event")))
        except (ValueError, AttributeError):
            did.append(line[:200])
    return SecondDaemon(
        exit_code=None if result is None else result.returncode,
        took_s=took,
        named_first=f"pid {pid}" in err,
        did=did,
        tracebacks=(out + err).count(TRACEBACK),
        first_ran_on=first.process.poll() is None,
    )


async def disk_full(
    daemon: Daemon, restart: Callable[[], Awaitable[Daemon]], deaths: list[float]
) -> tuple[DiskFull, Daemon]:
    """Fill the disk of the trading `daemon`, `restart` it under the full disk, free the disk.
    Returns what happened and the daemon that runs on (the restart, or `daemon`)."""
    happened = DiskFull()
    if not await daemon.wait_for("daemon.ready", READY_BOUND_S):
        return happened, daemon
    happened.was_ready = True
    started = trio.current_time()
    with contextlib.suppress(ProcessLookupError):  # exited meanwhile: its status says how
        resource.prlimit(daemon.process.pid, resource.RLIMIT_FSIZE, FULL_DISK)
    with trio.move_on_after(HALT_BOUND_S):
        await daemon.process.wait()
    happened.exit_code = daemon.process.poll()
    if happened.exit_code is None:
        daemon.process.kill()
    await daemon.finish()
    deaths.append(time.time())
    happened.halt_s = trio.current_time() - started
    happened.store_failed = daemon.seen("store.failed")
    happened.halt_tracebacks = "\n".join(daemon.stderr).count(TRACEBACK)
    await trio.sleep(RESTART_DELAY_S)
    # Restarted as systemd would, while the disk is still full: it must wait, not exit.
    restarted = await restart()
    await restarted.wait_for("store.unwritable", READY_BOUND_S)
    with trio.move_on_after(FULL_HOLD_S):
        await restarted.process.wait()
    happened.waited = len(restarted.seen("store.unwritable"))
    happened.exited_while_full = restarted.process.poll()
    if happened.exited_while_full is not None:
        await restarted.finish()
        return happened, restarted
    freed = trio.current_time()
    with contextlib.suppress(ProcessLookupError):
        resource.prlimit(restarted.process.pid, resource.RLIMIT_FSIZE, DISK_FREED)
    if await restarted.wait_for("daemon.ready", READY_BOUND_S):
        happened.ready_after_s = trio.current_time() - freed
        happened.traded = await restarted.wait_for("order.placed", TRADE_BOUND_S)
    return happened, restarted


# --- the plan and the faults that come and go -----------------------------------------------------


async def _set_faults(client: httpx.AsyncClient, **changes: Any) -> None:
    (await client.post("/sandbox/faults", json=changes)).raise_for_status()


async def bursts(client: httpx.AsyncClient, rng: random.Random) -> None:
    """Faults that come and go: 429 storms, half-open links, answers that never come."""
    kinds = (
        ({"rest_429_rate": 0.6}, {"rest_429_rate": 0.0}),
        ({"ws_no_pong": True, "ws_drop_every": 0}, {"ws_no_pong": False, "ws_drop_every": 10}),
        ({"ambiguous_mode": "hang"}, {"ambiguous_mode": "504"}),
    )
    while True:
        await trio.sleep(rng.uniform(3, 12))
        on, off = rng.choice(kinds)
        await _set_faults(client, **on)
        try:
            await trio.sleep(rng.uniform(4, 12))
        finally:
            with trio.CancelScope(shield=True):
                await _set_faults(client, **off)


def kill_moments(settings: ChaosSettings, rng: random.Random) -> list[float]:
    """`kills` random moments in the run (seconds from its start), at least 1.5 s apart, so
    that some fall into start-up and some into trading."""
    span = settings.duration_s / settings.kills
    return [i * span + rng.uniform(min(1.5, span / 2), span) for i in range(settings.kills)]


def event_plan(
    settings: ChaosSettings, moments: list[float], rng: random.Random
) -> dict[int, tuple[str, float]]:
    """Which runs (by index) meet an event, which, and when (seconds from the run's start, before
    its kill): each event in a run of its own."""
    kinds = ["two_daemons"] * settings.two_daemons + ["disk_full"] * settings.disk_full
    span = settings.duration_s / settings.kills
    plan = {}
    for i, kind in zip(rng.sample(range(settings.kills), len(kinds)), kinds, strict=True):
        plan[i] = (kind, i * span + rng.uniform(0.2, 0.8) * (moments[i] - i * span))
    return plan


@attrs.define
class Timeline:
    deaths: list[float] = attrs.Factory(list)  # wall times of the kills and the halts
    stopped: float = 0.0  # the final SIGTERM (or the last run's own end)
    last_start: float = 0.0  # the last run's start, wall clock
    last_start_market: datetime | None = None  # and in market time
    metering_before: int = 0  # the sandbox's accepted metering submissions before it
    last: Daemon | None = None
    daemons: list[Daemon] = attrs.Factory(list)  # every run but the second daemons
    halted: list[Daemon] = attrs.Factory(list)  # the runs the full disk halted
