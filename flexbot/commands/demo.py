"""`flexbot demo [--duration S] [--time-scale X]`: the whole cycle in one process, in a minute.

An embedded sandbox with simulated traders, a synthetic meter and the example strategies (the
seller, with baselines built from the meter, and the buyer), at an accelerated clock: flexbot
places orders, gets fills, submits baselines and metering, and sees contracts verified and
settled. It writes its config into a temporary directory and loads it exactly as `flexbot run`
does, prints a progress line every few seconds and a summary at the end, and exits 0. Ctrl-C ends
it early, with the summary.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from collections import Counter
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import trio
import yaml

from flexbot import config, daemon, model
from flexbot.clock import MarketClock
from flexbot.commands import UsageError, add_log_format
from flexbot.parts import Parts
from flexbot.sandbox.lifecycle import LifecycleRules
from flexbot.sandbox.market import MarketSettings, SandboxMarket
from flexbot.sandbox.server import ServerSettings, serve

STRATEGIES = Path(__file__).resolve().parents[2] / "strategies"
USER = ("demo", "demo-password")
PROGRESS_S = 5.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="watch flexbot trade, verify and settle, in a minute")
    demo.add_argument("--duration", type=float, default=60.0, help="wall seconds (default 60)")
    demo.add_argument(
        "--time-scale", type=float, default=120.0, help="market time speed-up (default 120)"
    )
    demo.add_argument("--seed", type=int, default=1, help="seed of the simulated market")
    add_log_format(demo)
    demo.set_defaults(run=run)


def write_config(root: Path, base_url: str) -> Path:
    """The demo's config, as a user would write it (validated by the same loader)."""
    (root / "strategies").mkdir()
    settings = {
        "market": {
            "url": base_url,
            "username": USER[0],
            "password": "file:password",
            "clock": "sandbox",
        },
        "store": {"path": "flexbot.db"},
        "strategies": {"config_dir": "strategies", "code_dir": str(STRATEGIES)},
        "engine": {"resolve_interval_s": 1},
        "meters": [
            {
                "id": "site-1-main",
                "location_id": "site-1",
                "source": {"type": "synthetic", "seed": 2, "noise_w": 50, "history_days": 6},
                "baseline": {"method": "mean_of_days", "days": 5},
            }
        ],
        "verification": {"settle_delay_s": 60, "max_wait_s": 600},
    }
    (root / "password").write_text(USER[1])
    (root / "flexbot.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    seller = {
        "module": "seller",
        "class": "FlexSeller",
        "location": {"location_id": ["site-1"]},
        "params": {
            "floor_price": 0.10,
            "ask_price": 0.26,
            "capacity_w": 1000,
            "baseline_w": None,
            "windows_ahead": 6,
            "lead_s": 900,
        },
    }
    buyer = {
        "module": "buyer",
        "class": "FlexBuyer",
        "location": {"location_id": ["grid-node-7"]},
        "params": {"limit_price": 0.24, "power_w": 2000, "windows_ahead": 6, "lead_s": 900},
    }
    for name, document in (("seller", seller), ("buyer", buyer)):
        (root / "strategies" / f"{name}.yaml").write_text(yaml.safe_dump(document))
    return root / "flexbot.yaml"


def run(args: argparse.Namespace) -> int:
    if args.duration <= 0 or args.time_scale <= 0:
        raise UsageError("--duration and --time-scale must be greater than 0")
    if not STRATEGIES.is_dir():
        raise UsageError(f"the example strategies are not at {STRATEGIES}: run from a checkout")
    return trio.run(_demo, args.duration, args.time_scale, args.seed, sys.stdout)


async def _demo(duration: float, scale: float, seed: int, out: TextIO) -> int:
    clock = MarketClock(scale)
    market = SandboxMarket(
        MarketSettings(
            users=dict([USER]),
            time_scale=scale,
            seed=seed,
            counterparties=6,
            counterparty_interval_s=0.3,
            lifecycle=LifecycleRules(settlement_delay_s=120),
        ),
        clock=clock,
    )
    sandbox_down = trio.Event()
    stop = trio.Event()
    seen: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="flexbot-demo-") as tmp:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(
                partial(serve, market, ServerSettings(port=0), shutdown=sandbox_down)
            )
            loaded = config.load(write_config(Path(tmp), running.base_url), environ={})
            print(
                f"flexbot demo: a sandbox market at {running.base_url}, time x{scale:g}, "
                f"6 simulated traders; strategies seller and buyer; running {duration:g} s",
                file=out,
                flush=True,
            )

            def started(parts: Parts, daemon_nursery: trio.Nursery) -> None:
                seen["parts"] = parts
                daemon_nursery.start_soon(_progress, parts, out)

            async def finished(parts: Parts) -> None:
                seen["summary"] = await summary(parts)

            async def run_daemon() -> None:
                try:
                    await daemon.run(
                        loaded,
                        clock=clock,
                        stop=stop,
                        signals=False,
                        started=started,
                        finished=finished,
                    )
                finally:
                    sandbox_down.set()

            nursery.start_soon(run_daemon)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                with trio.move_on_after(duration):
                    async for _ in signals:
                        print("stopping early", file=out, flush=True)
                        break
            stop.set()
        if "summary" not in seen:
            print("flexbot demo: the daemon did not run to its end (see the log above)", file=out)
            return 1
        for line in seen["summary"]:
            print(line, file=out)
    return 0


async def _progress(parts: Parts, out: TextIO) -> None:
    while True:
        await trio.sleep(PROGRESS_S)
        now = parts.clock.now()
        facts = await gather(parts)
        print(
            f"[market {now:%H:%M}] orders {facts['placed']} placed, {facts['fills']} filled; "
            f"baselines {facts['baselines']}, meterings {facts['meterings']} acknowledged; "
            f"contracts {facts['contracts']}, {facts['settled']} settled",
            file=out,
            flush=True,
        )


async def gather(parts: Parts) -> dict[str, Any]:
    store = parts.store
    outbox = await store.run(store.sync.outbox)
    acked = Counter(row.measurement_type for row in outbox if row.state == "acked")
    contracts: dict[str, model.Contract] = {}
    cancelled = 0
    for intent in parts.tracker:
        order = intent.order
        if order is None:
            continue
        cancelled += order.status == model.OrderStatus.CANCELLED
        for contract in order.contracts:
            contracts[contract.contract_id] = contract
    traded = sum((c.power for c in contracts.values()), Decimal(0))
    statuses = Counter(str(c.status) for c in contracts.values())
    return {
        "placed": parts.engine.counts.get("placed", 0),
        "fills": parts.engine.counts.get("fills", 0),
        "cancelled": cancelled,
        "traded_kw": traded / 1000,
        "baselines": acked["baseline"],
        "meterings": acked["metering"],
        "contracts": len(contracts),
        "verified": statuses["verification_completed_success"]
        + statuses["settlement_initiated"]
        + statuses["settlement_completed_success"],
        "verification_failed": statuses["verification_completed_failed"],
        "settled": statuses["settlement_completed_success"],
        "reconnects": sum(max(c.stats.connects - 1, 0) for c in parts.feed.consumers.values()),
    }


async def summary(parts: Parts) -> list[str]:
    f = await gather(parts)
    return [
        "",
        "flexbot demo: summary",
        f"  orders       {f['placed']} placed, {f['fills']} fills, {f['cancelled']} cancelled",
        f"  traded       {f['traded_kw']:.1f} kW of flexibility in {f['contracts']} contracts",
        f"  submissions  {f['baselines']} baselines and {f['meterings']} meterings acknowledged",
        f"  contracts    {f['verified']} verified, {f['verification_failed']} failed "
        f"verification, {f['settled']} settled",
        f"  streams      {f['reconnects']} reconnects",
    ]
