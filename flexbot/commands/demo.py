"""`flexbot demo [--duration S] [--time-scale X]`: the whole cycle in one process, in a minute.

An embedded sandbox with simulated traders, a simulated fleet (two sites, each with a battery and a
load, announcing their state through the asset protocol on an in-process bus), a synthetic meter a
site and the example strategies (the seller, offering what the fleet can deliver with baselines
built from the pool's meters, and the buyer), at an accelerated clock: flexbot places orders, gets
fills, submits baselines and metering, and sees contracts verified and settled. It writes its
config into a temporary directory and loads it exactly as `flexbot run` does, prints a progress
line every few seconds and a summary at the end, and exits 0. Ctrl-C ends it early, with the
summary.
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
from flexbot.assets.link import LocalBus
from flexbot.clock import MarketClock
from flexbot.commands import UsageError, add_log_format
from flexbot.ledger import Ledger, Standing
from flexbot.parts import Parts
from flexbot.sandbox.fleet import SimulatedFleet, demo_fleet
from flexbot.sandbox.lifecycle import LifecycleRules
from flexbot.sandbox.market import MarketSettings, SandboxMarket
from flexbot.sandbox.server import ServerSettings, serve
from flexbot.trading import Window

STRATEGIES = Path(__file__).resolve().parents[2] / "strategies"
USER = ("demo", "demo-password")
POOL = ("site-1", "site-2")  # the seller's pool: the simulated fleet's sites
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
                "id": f"{site}-main",
                "location_id": site,
                "source": {
                    "type": "synthetic",
                    "seed": seed,
                    "base_w": base_w,
                    "noise_w": 50,
                    "history_days": 6,
                },
                "baseline": {"method": "mean_of_days", "days": 5},
            }
            for site, seed, base_w in (("site-1", 2, 10000), ("site-2", 3, 8000))
        ],
        "assets": {"staleness_s": 120},
        "verification": {"settle_delay_s": 60, "max_wait_s": 600},
    }
    (root / "password").write_text(USER[1])
    (root / "flexbot.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    seller = {
        "module": "seller",
        "class": "FlexSeller",
        "location": {"location_id": list(POOL)},
        "params": {
            "floor_price": 0.10,
            "ask_price": 0.26,
            "capacity_w": 2000,  # at most, of what the fleet can deliver: offers the bids meet
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
    bus = LocalBus()
    fleet = SimulatedFleet(demo_fleet(), clock, bus.publish, seed=seed)
    with tempfile.TemporaryDirectory(prefix="flexbot-demo-") as tmp:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(
                partial(serve, market, ServerSettings(port=0), shutdown=sandbox_down)
            )
            loaded = config.load(write_config(Path(tmp), running.base_url), environ={})
            await nursery.start(fleet.run)
            print(
                f"flexbot demo: a sandbox market at {running.base_url}, time x{scale:g}, "
                f"6 simulated traders; a fleet of {len(fleet.assets)} assets at "
                f"{len(POOL)} sites; strategies seller and buyer; running {duration:g} s",
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
                        assets_bus=bus,
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
            await sandbox_down.wait()
            nursery.cancel_scope.cancel()  # the fleet goes on for ever
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
    ledger = Ledger.of(parts.tracker.fills())
    statuses = Counter(str(c.status) for c in contracts.values())
    return {
        "placed": parts.engine.counts.get("placed", 0),
        "fills": parts.engine.counts.get("fills", 0),
        "cancelled": cancelled,
        "ledger": ledger,
        "baselines": acked["baseline"],
        "meterings": acked["metering"],
        "contracts": len(contracts),
        "verified": statuses["verification_completed_success"]
        + statuses["settlement_initiated"]
        + statuses["settlement_completed_success"],
        "verification_failed": statuses["verification_completed_failed"],
        "settled": statuses["settlement_completed_success"],
        "reconnects": sum(max(c.stats.connects - 1, 0) for c in parts.feed.consumers.values()),
        **portfolio(parts),
    }


def portfolio(parts: Parts) -> dict[str, Any]:
    """The fleet, and the pool's next two hours: what it can deliver, what is committed (offered
    or sold), what is left; energies in kWh (W × the quarter hour)."""
    if parts.fleet is None:
        return {}
    now = parts.clock.now()
    windows = Window.upcoming(now, 8)
    told = parts.engine.desk.deliverable(POOL, windows, dry_run=False) or []
    quarter = Decimal("0.25") / 1000
    sells = [i for i in parts.tracker if i.request.side is model.Side.SELL]
    return {
        "assets": len(parts.fleet.rooms(POOL, now)),
        "sites": len(parts.fleet.by_site),
        "capacity_kwh": sum((d.capacity_w for d in told), Decimal(0)) * quarter,
        "committed_kwh": sum((d.committed_w for d in told), Decimal(0)) * quarter,
        "available_kwh": sum((d.available_w for d in told), Decimal(0)) * quarter,
        "offered_kwh": sum((i.request.power for i in sells), Decimal(0)) * quarter,
        "sold_kwh": sum((i.order.filled_power for i in sells if i.order is not None), Decimal(0))
        * quarter,
        "refused_availability": parts.engine.counts.get("risk_rejected:availability", 0),
    }


def _money(ledger: Ledger, contracts: int) -> list[str]:
    sold, bought = ledger.total("sell"), ledger.total("buy")
    settled = ledger.total("sell", Standing.SETTLED).eur - ledger.total("buy", Standing.SETTLED).eur
    lost = ledger.total("sell", Standing.FAILED).eur
    return [
        f"  traded       {sold.energy_kwh + bought.energy_kwh:.2f} kWh of flexibility in "
        f"{contracts} contracts: sold {sold.energy_kwh:.2f} kWh for €{sold.eur:.2f}, "
        f"bought {bought.energy_kwh:.2f} kWh for €{bought.eur:.2f}",
        f"  money        net €{ledger.net_eur():.2f}; settled €{settled:.2f}, the rest pending; "
        f"€{lost:.2f} lost to failed verification or settlement",
    ]


async def summary(parts: Parts) -> list[str]:
    f = await gather(parts)
    return [
        "",
        "flexbot demo: summary",
        f"  orders       {f['placed']} placed, {f['fills']} fills, {f['cancelled']} cancelled",
        *_money(f["ledger"], f["contracts"]),
        f"  submissions  {f['baselines']} baselines and {f['meterings']} meterings acknowledged",
        f"  contracts    {f['verified']} verified, {f['verification_failed']} failed "
        f"verification, {f['settled']} settled",
        f"  streams      {f['reconnects']} reconnects",
        f"  fleet        {f['assets']} assets at {f['sites']} sites; next 2 h: "
        f"{f['capacity_kwh']:.2f} kWh deliverable, {f['committed_kwh']:.2f} kWh offered or sold, "
        f"{f['available_kwh']:.2f} kWh free",
        f"  offers       {f['offered_kwh']:.2f} kWh offered in all, {f['sold_kwh']:.2f} kWh sold; "
        f"{f['refused_availability']} refused as beyond what the fleet could deliver",
    ]
