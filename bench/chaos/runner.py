"""A chaos run from start to end: the sandbox up, the daemon started, killed and restarted with
the events in between, the last run until it has proved itself, then the referee."""

from __future__ import annotations

import random
import signal
import time
from functools import partial
from pathlib import Path

import httpx
import trio

from bench.chaos.events import Timeline, bursts, disk_full, event_plan, kill_moments, two_daemons
from bench.chaos.processes import Daemon, Sandbox, sandbox, start_daemon, write_config
from bench.chaos.referee import (
    created_since,
    due_contract_orders,
    market_state,
    metering_submitted,
    metering_total,
    referee,
)
from bench.chaos.report import Report, keep_final_state
from bench.chaos.settings import RESTART_DELAY_S, STOP_BOUND_S, ChaosSettings


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
        now, orders, stats = await market_state(client)
        timeline.last_start_market = now
        timeline.metering_before = metering_total(orders, stats)
        timeline.last_start = time.time()
        daemon = timeline.last = await start()
        with trio.move_on_after(settings.settle_bound_s):
            while True:
                await trio.sleep(1.0)
                if daemon.process.poll() is not None:
                    break
                now, orders, stats = await market_state(client)
                due = due_contract_orders(orders, now)
                accepted = stats["verification_submissions"]
                settled = len(due) >= settings.min_due and all(
                    accepted.get(o, {}).get("metering") for o in due
                )
                placed = created_since(orders, timeline.last_start_market)
                metered = metering_total(orders, stats) - timeline.metering_before
                submitted = metering_submitted(daemon)
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
