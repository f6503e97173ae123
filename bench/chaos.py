"""The chaos run: `flexbot run` under every fault the sandbox has, killed at random moments.

A sandbox subprocess (simulated traders, market time 60x the wall clock) injects, all at once:
WebSocket connections dropped every 10 s, access tokens expiring every 5 s, 10% of REST calls
answered 5xx, ambiguous order answers (the order exists, the answer is lost), and in bursts 429s,
half-open connections (pings unanswered; the drops pause meanwhile, as a half-open link hears no
close) and hanging order answers. The daemon trades with the
example strategies (seller, buyer, market maker) and two synthetic meters, and is killed with
SIGKILL at random moments, restarted each time as systemd would. At other random moments:

- *two daemons on one store*: a second `flexbot run` on the same config starts beside the
  running one; it must exit 2 within seconds, naming the first's pid, having done nothing else
  (its only log event `daemon.store_unusable`), and the first runs on;
- *disk full*: no file of the running daemon may grow any more (a file-size limit of one byte on
  the process: writes fail as on a full disk); it must halt (cancel its open orders), log one
  `store.failed` and exit 1 without a traceback; it is restarted still under the limit, must wait
  in start-up (`store.unwritable`) without exiting, and once the limit is lifted must reach
  `daemon.ready` and place orders again.

Then the killing stops, and the last run trades until every metering that is due has been
accepted and it has itself placed an order and had a metering accepted; it stops on SIGTERM.

The sandbox's introspection is the referee; the run checks and prints:

- intents journalled vs orders placed, and duplicates: market orders of ours that no journalled
  intent owns (a resent order), or one order claimed by two intents: must be 0;
- contracts of ours whose metering is due vs accepted metering submissions: 0 missing,
  0 duplicated (identical resends, which the market recognises, are counted apart);
- what the last run did after the last restart: orders placed (the sandbox's orders created
  since) and metering accepted (the journal's outbox, the sandbox's count): at least 1 each;
- the two-daemon and disk-full events, each as described above;
- unhandled exceptions (tracebacks, `exception` fields), non-JSON lines in the daemon's log and
  anything on its stderr but a halt's last words: 0;
- secrets in the daemon's log (the password, a token, a Bearer credential): 0;
- how long the daemon had no live link to the market (any stream down, or the process dead).

    .venv/bin/python bench/chaos.py [--duration 900] [--kills 20] [--seed 1] [--keep DIR]
                                    [--two-daemons 3] [--disk-full 2]

`--keep DIR` runs in DIR and leaves there the logs, the config, the store, and what a third party
needs to recount: the sandbox's orders and statistics at the end (JSON), a copy of the journal
taken after the daemon's last stop, and `RECOUNT.txt`, which says how.

Exit status 0 when every check passes, 1 otherwise. `tests/test_chaos.py` runs a short form.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import re
import resource
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
import yaml

from flexbot import wire
from flexbot.sandbox.app import ADMIN_HEADER
from flexbot.sandbox.launch import child_env, launched_sandbox
from flexbot.sandbox.market import ADMIN_TOKEN_ENV
from flexbot.store import Store, lock

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "alice-pw"  # the secret the log must never show
TIME_SCALE = 60
SETTLE_S = 30  # verification.settle_delay_s, market seconds
DUE_MARGIN_S = SETTLE_S + 150  # market seconds after delivery end: settle, scan, send, retries
START_BOUND_S = 20.0  # the sandbox's start on a busy machine
STOP_BOUND_S = 30.0  # SIGTERM to exit: the daemon's 20 s graceful bound plus a margin
RESTART_DELAY_S = 0.5  # systemd's RestartSec in deploy/flexbot.service is longer; this is harsher
READY_BOUND_S = 45.0  # a start to `daemon.ready` (or to `store.unwritable`) under every fault
SECOND_BOUND_S = 10.0  # a second daemon on the store: its exit 2 ("at once": imports, 1 s patience)
HALT_BOUND_S = (
    45.0  # a full disk to exit 1: the next write (a reading every 1 s) and 20 s of cancels
)
FULL_HOLD_S = 3.0  # the restart kept waiting under the full disk, before the disk is freed
TRADE_BOUND_S = 30.0  # after the disk is freed, until the restart has placed an order
# A file-size limit of one byte: no file of the daemon's may grow, as on a full disk (Python
# ignores SIGXFSZ, so a write fails with EFBIG, which SQLite reports as a disk I/O error). The hard
# limit stays, so it can be lifted again.
FULL_DISK = (1, resource.RLIM_INFINITY)
DISK_FREED = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
CONSTANT_FAULTS = {
    "ws_drop_every": 10,
    "token_ttl": 5,
    "rest_error_rate": 0.1,
    "ambiguous_rate": 0.1,
}
TOKEN = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")  # token_urlsafe(32)
BEARER = re.compile(r"Bearer\s+(?!\*)\S", re.IGNORECASE)
TRACEBACK = "Traceback (most recent call last)"


@attrs.frozen
class ChaosSettings:
    duration_s: float = 900.0  # wall seconds of killing and faults (the events add their own)
    kills: int = 20
    seed: int = 1
    min_due: int = 3  # contracts whose metering must fall due before the run ends
    settle_bound_s: float = 180.0  # wall seconds to wait, after the chaos, for due metering
    two_daemons: int = 3  # a second daemon started on the running one's store
    disk_full: int = 2  # the running daemon's disk filled, its restart waiting, the disk freed


# --- what happened ------------------------------------------------------------------------------


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


@attrs.define
class Report:
    duration_s: float = 0.0  # from the first start to the final SIGTERM
    chaos_s: float = 0.0  # of which with kills, events and fault bursts
    kills: int = 0
    runs: int = 0
    final_exit: int | None = None
    unexpected_exits: list[int] = attrs.Factory(list)  # runs that ended by themselves
    intents: int = 0
    placed: int = 0
    intents_by_state: dict[str, int] = attrs.Factory(dict)
    market_orders: int = 0
    duplicates: list[str] = attrs.Factory(list)
    contracts_due: int = 0
    metering_accepted: int = 0
    metering_missing: list[str] = attrs.Factory(list)
    metering_duplicated: list[str] = attrs.Factory(list)
    baseline_duplicated: list[str] = attrs.Factory(list)
    identical_resends: int = 0
    # The last run, from its start (after the last kill) to its SIGTERM:
    last_run_s: float = 0.0
    last_run_orders: int = 0  # the sandbox's orders of ours created since its start
    last_run_orders_logged: int = 0  # its `order.placed` events
    last_run_metering: int = 0  # the journal's metering submissions acknowledged since its start
    last_run_metering_market: int = 0  # the sandbox's count of accepted metering, the increase
    last_run_metering_logged: int = 0  # its `verification.submitted` events for metering
    planned_two_daemons: int = 0
    planned_disk_full: int = 0
    two_daemons: list[SecondDaemon] = attrs.Factory(list)
    disk_full: list[DiskFull] = attrs.Factory(list)
    tracebacks: int = 0
    non_json_lines: list[str] = attrs.Factory(list)
    stray_stderr: list[str] = attrs.Factory(list)  # the daemon's stderr, but for a halt's words
    secrets: list[str] = attrs.Factory(list)
    disconnected_s: float = 0.0
    restarting_s: float = 0.0
    disconnected_by_endpoint: dict[str, float] = attrs.Factory(dict)
    reconnects: int = 0
    half_open_found: int = 0  # links the daemon declared dead for unanswered pings
    events: Counter[str] = attrs.Factory(Counter)
    injected: dict[str, int] = attrs.Factory(dict)
    sandbox_tracebacks: int = 0
    recount: str = ""  # with `--keep`: how a third party recounts from the files kept

    def problems(self) -> list[str]:
        found = []
        if self.kills < 1:
            found.append("the daemon was never killed")
        if self.final_exit != 0:
            found.append(f"the last run exited with {self.final_exit}, expected 0 after SIGTERM")
        if self.unexpected_exits:
            found.append(f"runs that ended by themselves, with {self.unexpected_exits}")
        if self.duplicates:
            found.append(f"duplicate market orders: {self.duplicates[:10]}")
        if self.contracts_due == 0:
            found.append("no contract's metering fell due: the run proves nothing about metering")
        if self.final_exit is None:
            found.append("the last run did not stop within its bound after SIGTERM")
        if self.metering_missing:
            found.append(f"metering missing for {self.metering_missing[:10]}")
        if self.metering_duplicated or self.baseline_duplicated:
            both = self.metering_duplicated + self.baseline_duplicated
            found.append(f"verification accepted twice for {both[:10]}")
        if self.last_run_orders < 1:
            found.append("the last run placed no order after the last restart")
        if self.last_run_metering < 1 or self.last_run_metering_market < 1:
            found.append("the last run had no metering accepted after the last restart")
        if len(self.two_daemons) != self.planned_two_daemons:
            found.append(
                f"{len(self.two_daemons)} two-daemon events of {self.planned_two_daemons} planned"
            )
        for i, second in enumerate(self.two_daemons, start=1):
            found += [f"two daemons #{i}: {p}" for p in second.problems()]
        if len(self.disk_full) != self.planned_disk_full:
            found.append(f"{len(self.disk_full)} disk-full events of {self.planned_disk_full}")
        for i, full in enumerate(self.disk_full, start=1):
            found += [f"disk full #{i}: {p}" for p in full.problems()]
        if self.tracebacks:
            found.append(f"{self.tracebacks} unhandled exceptions in the daemon's log")
        if self.non_json_lines:
            found.append(f"non-JSON lines in the daemon's log: {self.non_json_lines[:3]}")
        if self.stray_stderr:
            found.append(f"output on the daemon's stderr: {self.stray_stderr[:3]}")
        if self.secrets:
            found.append(f"secrets in the daemon's log: {self.secrets[:3]}")
        if self.sandbox_tracebacks:
            found.append(f"{self.sandbox_tracebacks} tracebacks in the sandbox's log")
        return found

    def render(self) -> str:
        share = self.disconnected_s / self.duration_s if self.duration_s else 0.0
        per_endpoint = ", ".join(f"{k} {v:.1f} s" for k, v in self.disconnected_by_endpoint.items())
        notable = (
            "order.unknown",
            "order.resolved",
            "order.lapsed",
            "order.not_placed",
            "order.rejected",
            "verification.retry",
            "auth.token_failed",
            "store.failed",
            "store.unwritable",
            "daemon.store_unusable",
        )
        lines = [
            f"chaos run: {self.duration_s:.0f} s wall ({self.chaos_s:.0f} s of kills, events and"
            f" bursts), {self.kills} SIGKILLs, {self.runs} daemon runs, last exit"
            f" {self.final_exit}",
            f"faults injected by the sandbox: {_fmt_counts(self.injected)}",
            f"orders: {self.intents} intents journalled, {self.placed} placed, "
            f"{self.market_orders} market orders of ours, duplicates {len(self.duplicates)}",
            f"  intents by state: {_fmt_counts(self.intents_by_state)}",
            f"metering: {self.contracts_due} contracts due, {self.metering_accepted} accepted, "
            f"missing {len(self.metering_missing)}, duplicated {len(self.metering_duplicated)}; "
            f"identical resends recognised by the market {self.identical_resends}",
            f"after the last restart ({self.last_run_s:.0f} s to its SIGTERM): orders placed"
            f" {self.last_run_orders} (sandbox; order.placed logged {self.last_run_orders_logged}),"
            f" metering accepted {self.last_run_metering} (journal outbox; sandbox"
            f" +{self.last_run_metering_market}; verification.submitted logged"
            f" {self.last_run_metering_logged})",
            self._render_two_daemons(),
            self._render_disk_full(),
            f"log: unhandled exceptions {self.tracebacks}, non-JSON lines "
            f"{len(self.non_json_lines)}, stray stderr lines {len(self.stray_stderr)}, secrets"
            f" {len(self.secrets)}; sandbox tracebacks {self.sandbox_tracebacks}",
            f"disconnected {self.disconnected_s:.1f} s in total ({share:.0%} of the run; any stream"
            f" down or the process dead), {self.restarting_s:.1f} s of it from a kill or a halt"
            f" until every stream was up again; by endpoint: {per_endpoint}; reconnects"
            f" {self.reconnects}, half-open links found {self.half_open_found}",
            "events: " + _fmt_counts({k: self.events[k] for k in notable if self.events[k]}),
        ]
        problems = self.problems()
        lines.append("PASS" if not problems else "FAIL: " + "; ".join(problems))
        return "\n".join(lines)

    def _render_two_daemons(self) -> str:
        seconds = self.two_daemons
        n = len(seconds)
        took = max((s.took_s for s in seconds), default=0.0)
        return (
            f"two daemons on one store: {n} events; the second exited 2 in"
            f" {sum(s.exit_code == 2 for s in seconds)}/{n} (max {took:.1f} s), named the first's"
            f" pid in {sum(s.named_first for s in seconds)}/{n}, did nothing else in"
            f" {sum(s.did == ['daemon.store_unusable'] for s in seconds)}/{n}, the first ran on"
            f" in {sum(s.first_ran_on for s in seconds)}/{n}"
        )

    def _render_disk_full(self) -> str:
        fulls = self.disk_full
        n = len(fulls)
        halted = sum(f.exit_code == 1 and len(f.store_failed) == 1 for f in fulls)
        failed = [e for f in fulls for e in f.store_failed]
        ready = [f.ready_after_s for f in fulls if f.ready_after_s is not None]
        return (
            f"disk full: {n} events; exit 1 with one store.failed in {halted}/{n} (halt in max"
            f" {max((f.halt_s for f in fulls), default=0.0):.1f} s; open orders"
            f" {sum(int(e.get('open_orders', 0)) for e in failed)}, cancelled"
            f" {sum(int(e.get('cancelled', 0)) for e in failed)}); the restart waited under the"
            f" full disk in {sum(f.waited > 0 and f.exited_while_full is None for f in fulls)}/{n}"
            f" (store.unwritable {sum(f.waited for f in fulls)}), ready after the disk was freed"
            f" in {len(ready)}/{n} (max {max(ready, default=0.0):.1f} s), placed orders again in"
            f" {sum(f.traded for f in fulls)}/{n}"
        )


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


# --- processes ----------------------------------------------------------------------------------


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


def _run_argv(config: Path) -> list[str]:
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
        _run_argv(config),
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


# --- the events ---------------------------------------------------------------------------------


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
            _run_argv(config),
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


# --- the run ------------------------------------------------------------------------------------


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


async def _chaos(
    workdir: Path, market: Sandbox, settings: ChaosSettings, report: Report
) -> Timeline:
    """Run, kill and restart the daemon, with the events in between; then the last run."""
    rng = random.Random(settings.seed)
    config = write_config(workdir, market.url)
    timeline = Timeline()
    moments = kill_moments(settings, rng)
    plan = event_plan(settings, moments, rng)
    report.planned_two_daemons, report.planned_disk_full = settings.two_daemons, settings.disk_full
    async with (
        httpx.AsyncClient(base_url=market.url, headers=market.admin, timeout=5) as client,
        trio.open_nursery() as outputs,
    ):

        async def start(*, full_disk: bool = False) -> Daemon:
            daemon = await start_daemon(outputs, config, workdir, full_disk=full_disk)
            timeline.daemons.append(daemon)
            report.runs += 1
            return daemon

        started = trio.current_time()
        shift = 0.0  # the events' time: the kills after an event keep their spacing
        async with trio.open_nursery() as chaos:
            chaos.start_soon(bursts, client, rng)
            for i, moment in enumerate(moments):
                daemon = await start()
                if i in plan:
                    kind, at = plan[i]
                    await trio.sleep_until(started + shift + at)
                    began = trio.current_time()
                    if kind == "two_daemons":
                        report.two_daemons.append(await two_daemons(config, workdir, daemon))
                    else:
                        filled = daemon
                        full, daemon = await disk_full(
                            filled, partial(start, full_disk=True), timeline.deaths
                        )
                        report.disk_full.append(full)
                        if full.was_ready:
                            timeline.halted.append(filled)
                    shift += trio.current_time() - began
                await trio.sleep_until(started + shift + moment)
                if daemon.process.poll() is None:
                    daemon.process.send_signal(signal.SIGKILL)
                    report.kills += 1
                else:
                    report.unexpected_exits.append(daemon.process.poll() or 0)
                timeline.deaths.append(time.time())
                await daemon.finish()
                await trio.sleep(RESTART_DELAY_S)
            chaos.cancel_scope.cancel()
        report.chaos_s = trio.current_time() - started
        # No more kills: the last run stays until every metering that is due has been accepted,
        # and until it has itself placed an order and had a metering accepted.
        now, orders, stats = await _market_state(client)
        timeline.last_start_market = now
        timeline.metering_before = _metering_total(orders, stats)
        timeline.last_start = time.time()
        daemon = timeline.last = await start()
        with trio.move_on_after(settings.settle_bound_s):
            while True:
                await trio.sleep(1.0)
                if daemon.process.poll() is not None:
                    break
                now, orders, stats = await _market_state(client)
                due = due_contract_orders(orders, now)
                accepted = stats["verification_submissions"]
                settled = len(due) >= settings.min_due and all(
                    accepted.get(o, {}).get("metering") for o in due
                )
                placed = created_since(orders, timeline.last_start_market)
                metered = _metering_total(orders, stats) - timeline.metering_before
                submitted = _metering_submitted(daemon)
                if settled and placed and metered and submitted:
                    break
        if daemon.process.poll() is None:
            daemon.process.send_signal(signal.SIGTERM)
            timeline.stopped = time.time()
            with trio.move_on_after(STOP_BOUND_S):
                await daemon.process.wait()
            report.final_exit = daemon.process.poll()
            if report.final_exit is None:
                daemon.process.kill()
        else:
            timeline.stopped = time.time()
            report.final_exit = daemon.process.returncode
        await daemon.finish()
        report.injected = (await client.get("/sandbox/faults")).json()["injected"]
    return timeline


async def _market_state(
    client: httpx.AsyncClient,
) -> tuple[datetime, list[dict[str, Any]], dict[str, Any]]:
    now = wire.parse_datetime((await client.get("/sandbox/clock")).json()["now"])
    orders = (await client.get("/sandbox/orders")).json()
    stats = (await client.get("/sandbox/stats")).json()
    return now, orders, stats


def _metering_total(orders: list[dict[str, Any]], stats: dict[str, Any]) -> int:
    """The metering submissions the sandbox accepted for orders of ours (not the simulated
    traders')."""
    ours = {o["order_id"] for o in orders if o["owner"] == "alice"}
    accepted = stats["verification_submissions"]
    return sum(c.get("metering", 0) for o, c in accepted.items() if o in ours)


def _metering_submitted(daemon: Daemon) -> int:
    return sum(
        e.get("measurement_type") == "metering" for e in daemon.seen("verification.submitted")
    )


def created_since(orders: list[dict[str, Any]], since: datetime) -> int:
    """Our orders the market created at or after `since` (market time)."""
    return sum(
        o["owner"] == "alice"
        and o.get("created_at") is not None
        and wire.parse_datetime(o["created_at"]) >= since
        for o in orders
    )


def due_contract_orders(orders: list[dict[str, Any]], now: datetime) -> list[str]:
    """Our sell orders with a contract whose delivery ended long enough ago that its metering
    must have been accepted by now."""
    return [
        o["order_id"]
        for o in orders
        if o["owner"] == "alice"
        and o["side"] == "sell"
        and o["contracts"]
        and (now - wire.parse_datetime(o["delivery_end"])).total_seconds() > DUE_MARGIN_S
    ]


# --- the referee --------------------------------------------------------------------------------


@attrs.frozen
class FinalState:
    """The sandbox's at the end, as the referee read it (and `--keep` writes it)."""

    now: datetime
    orders: list[dict[str, Any]]
    stats: dict[str, Any]


def referee(
    workdir: Path, url: str, timeline: Timeline, started: float, report: Report
) -> FinalState:
    now = wire.parse_datetime(httpx.get(f"{url}/sandbox/clock", timeout=5).json()["now"])
    orders = httpx.get(f"{url}/sandbox/orders", timeout=5).json()
    stats = httpx.get(f"{url}/sandbox/stats", timeout=5).json()

    store = Store.open(workdir / "flexbot.db")
    try:
        rows = list(store.orders())
        outbox = store.outbox()
    finally:
        store.close()
    report.intents = len(rows)
    journalled = [row.order_id for row in rows if row.order_id is not None and not row.dry_run]
    report.placed = len(journalled)
    report.intents_by_state = dict(Counter(str(row.state) for row in rows))
    ours = [o["order_id"] for o in orders if o["owner"] == "alice"]
    report.market_orders = len(ours)
    claimed = Counter(journalled)
    report.duplicates = sorted(
        {o for o in ours if o not in claimed} | {o for o, n in claimed.items() if n > 1}
    )

    due = due_contract_orders(orders, now)
    accepted = stats["verification_submissions"]
    report.contracts_due = len(due)
    report.metering_accepted = sum(accepted.get(o, {}).get("metering", 0) for o in due)
    report.metering_missing = [o for o in due if not accepted.get(o, {}).get("metering")]
    report.metering_duplicated = sorted(o for o, c in accepted.items() if c.get("metering", 0) > 1)
    report.baseline_duplicated = sorted(o for o, c in accepted.items() if c.get("baseline", 0) > 1)
    resent = stats["verification_duplicates"]
    report.identical_resends = sum(sum(c.values()) for c in resent.values())

    last = timeline.last
    assert last is not None
    assert timeline.last_start_market is not None
    report.last_run_s = timeline.stopped - timeline.last_start
    report.last_run_orders = created_since(orders, timeline.last_start_market)
    report.last_run_orders_logged = len(last.seen("order.placed"))
    report.last_run_metering = sum(
        row.measurement_type == "metering"
        and row.state == "acked"
        and row.done_at is not None
        and row.done_at >= timeline.last_start
        for row in outbox
    )
    report.last_run_metering_market = _metering_total(orders, stats) - timeline.metering_before
    report.last_run_metering_logged = _metering_submitted(last)

    text = (workdir / "daemon.log").read_text(errors="replace")
    read_log(text, report)
    read_stderr(timeline, report)
    seconds = workdir / "second-daemons.log"
    if seconds.exists():
        report.secrets += find_secrets(seconds.read_text(errors="replace"))
    measure_disconnection(text, timeline.deaths, started, timeline.stopped, report)
    report.duration_s = timeline.stopped - started
    sandbox_text = (workdir / "sandbox.log").read_text(errors="replace")
    sandbox_text += (workdir / "sandbox.stderr.log").read_text(errors="replace")
    report.sandbox_tracebacks = sandbox_text.count("Traceback")
    return FinalState(now, orders, stats)


def read_log(text: str, report: Report) -> None:
    """Unhandled exceptions, stray output and secrets in the daemon's log."""
    report.tracebacks = text.count(TRACEBACK)
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            # A JSON line cut short by SIGKILL is the kill's doing, not a stray print.
            if line.strip() and not line.startswith("{"):
                report.non_json_lines.append(line[:200])
            continue
        if not isinstance(event, dict):
            report.non_json_lines.append(line[:200])
            continue
        report.events[str(event.get("event"))] += 1
        if "exception" in event or "exc_info" in event:
            report.tracebacks += 1
    report.secrets += find_secrets(text)


def find_secrets(text: str) -> list[str]:
    """The password, tokens and Bearer credentials in `text`, cut short."""
    found = []
    for pattern in (re.escape(PASSWORD), TOKEN.pattern, BEARER.pattern):
        found += [m.group(0)[:12] + "…" for m in re.finditer(pattern, text)]
    return found


def read_stderr(timeline: Timeline, report: Report) -> None:
    """The daemon's stderr holds nothing but, from a run the full disk halted, its last words
    (`flexbot run: …`, what to do). A traceback would land there too."""
    for daemon in timeline.daemons:
        text = "\n".join(daemon.stderr)
        report.tracebacks += text.count(TRACEBACK)
        for line in daemon.stderr:
            if not line.strip():
                continue
            if daemon in timeline.halted and line.startswith("flexbot run: "):
                continue
            report.stray_stderr.append(line[:200])
        report.secrets += find_secrets(text)


ENDPOINTS = ("trade", "ticker", "orderbook")


@attrs.frozen
class Downtime:
    any_down_s: float  # some stream down, or the process dead
    restarting_s: float  # of which from a start or a kill until every stream was up
    by_endpoint: dict[str, float]


def downtime(timeline: list[tuple[float, str, str]], started: float, end: float) -> Downtime:
    """Sweep `(at, kind, endpoint)` events, `kind` one of `kill`, `ws.connected` and
    `ws.disconnected`, from `started` (nothing up yet) to `end`. A kill takes every stream down."""
    up = dict.fromkeys(ENDPOINTS, False)
    down_since = dict.fromkeys(ENDPOINTS, started)
    by_endpoint = dict.fromkeys(ENDPOINTS, 0.0)
    any_down_since: float | None = started
    restarting_since: float | None = started
    any_down = restarting = 0.0
    for at, kind, endpoint in sorted(timeline):
        at = min(max(at, started), end)
        for ep in [endpoint] if endpoint in up else ENDPOINTS:
            now_up = kind == "ws.connected"
            if up[ep] and not now_up:
                down_since[ep] = at
            elif not up[ep] and now_up:
                by_endpoint[ep] += at - down_since[ep]
            up[ep] = now_up
        if kind == "kill" and restarting_since is None:
            restarting_since = at
        if all(up.values()):
            if any_down_since is not None:
                any_down += at - any_down_since
            if restarting_since is not None:
                restarting += at - restarting_since
            any_down_since = restarting_since = None
        elif any_down_since is None:
            any_down_since = at
    for ep in ENDPOINTS:
        if not up[ep]:
            by_endpoint[ep] += end - down_since[ep]
    if any_down_since is not None:
        any_down += end - any_down_since
    if restarting_since is not None:
        restarting += end - restarting_since
    return Downtime(any_down, restarting, by_endpoint)


def measure_disconnection(
    text: str, deaths: list[float], started: float, end: float, report: Report
) -> None:
    """Downtime from the first start to the final SIGTERM, from the deaths (kills and halts) and
    the log."""
    timeline: list[tuple[float, str, str]] = [(d, "kill", "") for d in deaths]
    for line in text.splitlines():
        if '"ws.' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        name = event.get("event")
        if name in ("ws.connected", "ws.disconnected"):
            at = datetime.fromisoformat(event["timestamp"]).timestamp()
            timeline.append((at, name, str(event.get("endpoint"))))
            report.reconnects += name == "ws.connected"
            report.half_open_found += "pings unanswered" in str(event.get("reason"))
    measured = downtime(timeline, started, end)
    report.disconnected_s = measured.any_down_s
    report.restarting_s = measured.restarting_s
    report.disconnected_by_endpoint = {k: round(v, 1) for k, v in measured.by_endpoint.items()}


# --- what a third party recounts ----------------------------------------------------------------

RECOUNT = """\
To recount, from the files in {dir}:
  sandbox-orders.json  GET /sandbox/orders at the end: every order the sandbox holds (owner,
                       order_id, side, created_at in market time, delivery_end, contracts);
  sandbox-stats.json   GET /sandbox/stats: verification_submissions, the accepted first sends per
                       order id and measurement type (identical resends: verification_duplicates);
  journal.db           the daemon's store (SQLite) after its last stop: tables orders, outbox;
  chaos-summary.json   the sandbox's clock at the end (now), the last restart (last_start_market,
                       market time; last_start_wall, epoch seconds) and the figures printed.
Orders: the order ids of alice's orders in sandbox-orders.json must be exactly the journal's
orders.order_id (dry_run = 0), each once: an order of alice's that no journal row owns is a
resend, a duplicate. Metering, per contract: each sell order of alice's with contracts whose
delivery_end is more than {margin} market seconds before `now` must count metering exactly once in
verification_submissions, and have an outbox row (order_id, 'metering') in state 'acked'. After the
last restart: alice's orders created at or after last_start_market, and the outbox's metering rows
acked (done_at) at or after last_start_wall. For instance:
  cd {dir}
  jq -r '.[] | select(.owner == "alice") | .order_id' sandbox-orders.json | sort > market.txt
  sqlite3 journal.db 'SELECT order_id FROM orders WHERE order_id NOT NULL AND NOT dry_run' \\
    | sort > journal.txt
  comm -3 market.txt journal.txt   # nothing: each order of alice's journalled, and only those
  jq '[.verification_submissions[] | select(.metering > 1)] | length' sandbox-stats.json  # 0
"""


def keep_final_state(
    keep: Path, workdir: Path, final: FinalState, timeline: Timeline, report: Report
) -> str:
    """Write what a third party needs to recount into `keep`; returns how to recount."""
    keep.mkdir(parents=True, exist_ok=True)
    (keep / "sandbox-orders.json").write_text(json.dumps(final.orders, indent=1))
    (keep / "sandbox-stats.json").write_text(json.dumps(final.stats, indent=1))
    # The journal as one file (the daemon has stopped; a backup also folds in any WAL).
    copy = keep / "journal.db"
    copy.unlink(missing_ok=True)
    with (
        closing(sqlite3.connect(f"file:{workdir / 'flexbot.db'}?mode=ro", uri=True)) as source,
        closing(sqlite3.connect(copy)) as target,
    ):
        source.backup(target)
    assert timeline.last_start_market is not None
    summary = {
        "now": wire.format_datetime(final.now),
        "last_start_market": wire.format_datetime(timeline.last_start_market),
        "last_start_wall": timeline.last_start,
        "report": attrs.asdict(report, value_serializer=_jsonable),
        "problems": report.problems(),
    }
    (keep / "chaos-summary.json").write_text(json.dumps(summary, indent=1))
    text = RECOUNT.format(dir=keep, margin=DUE_MARGIN_S)
    (keep / "RECOUNT.txt").write_text(text)
    return text


def _jsonable(_: Any, __: Any, value: Any) -> Any:
    if isinstance(value, datetime):
        return wire.format_datetime(value)
    return value


def run(workdir: Path, settings: ChaosSettings, keep: Path | None = None) -> Report:
    """The whole chaos run in `workdir` (logs, config and store stay there); with `keep`, the
    sandbox's final state and a copy of the journal are written there too (`keep_final_state`)."""
    report = Report()
    with sandbox(workdir, settings.seed) as market:
        started = time.time()
        timeline = trio.run(_chaos, workdir, market, settings, report)
        final = referee(workdir, market.url, timeline, started, report)
    if keep is not None:
        report.recount = keep_final_state(keep, workdir, final, timeline, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=900.0, help="wall seconds of chaos")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs in that time (>= 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--two-daemons", type=int, default=3, help="second daemons on the store")
    parser.add_argument("--disk-full", type=int, default=2, help="disks filled, then freed")
    parser.add_argument(
        "--keep", type=Path, help="a directory for the logs, config, store and the final state"
    )
    args = parser.parse_args(argv)
    if args.kills < 1 or not math.isfinite(args.duration) or args.duration < 2 * args.kills:
        parser.error("--kills must be >= 1 and --duration at least 2 s per kill")
    if min(args.two_daemons, args.disk_full) < 0 or args.two_daemons + args.disk_full > args.kills:
        parser.error("--two-daemons and --disk-full: >= 0, together at most --kills")
    settings = ChaosSettings(
        duration_s=args.duration,
        kills=args.kills,
        seed=args.seed,
        two_daemons=args.two_daemons,
        disk_full=args.disk_full,
    )
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = run(args.keep, settings, keep=args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="flexbot-chaos-") as workdir:
            report = run(Path(workdir), settings)
    print(report.render())
    if report.recount:
        print("\n" + report.recount, end="")
    return 0 if not report.problems() else 1


if __name__ == "__main__":
    sys.exit(main())
