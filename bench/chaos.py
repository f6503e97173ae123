"""The chaos run: `flexbot run` under every fault the sandbox has, killed at random moments.

A sandbox subprocess (simulated traders, market time 60x the wall clock) injects, all at once:
WebSocket connections dropped every 10 s, access tokens expiring every 5 s, 10% of REST calls
answered 5xx, ambiguous order answers (the order exists, the answer is lost), and in bursts 429s,
half-open connections (pings unanswered; the drops pause meanwhile, as a half-open link hears no
close) and hanging order answers. The daemon trades with the
example strategies (seller, buyer, market maker) and two synthetic meters, and is killed with
SIGKILL at random moments, restarted each time as systemd would. Then the killing stops, the
daemon runs until every metering that is due has been accepted, and stops on SIGTERM.

The sandbox's introspection is the referee; the run checks and prints:

- intents journalled vs orders placed, and duplicates: market orders of ours that no journalled
  intent owns (a resent order), or one order claimed by two intents: must be 0;
- contracts of ours whose metering is due vs accepted metering submissions: 0 missing,
  0 duplicated (identical resends, which the market recognises, are counted apart);
- unhandled exceptions (tracebacks, `exception` fields) and non-JSON lines in the daemon's log: 0;
- secrets in the daemon's log (the password, a token, a Bearer credential): 0;
- how long the daemon had no live link to the market (any stream down, or the process dead).

    .venv/bin/python bench/chaos.py [--duration 900] [--kills 20] [--seed 1] [--keep DIR]

Exit status 0 when every check passes, 1 otherwise. `tests/test_chaos.py` runs a short form.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
import yaml

from flexbot import wire
from flexbot.sandbox.launch import child_env, launched_sandbox
from flexbot.store import Store

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "alice-pw"  # the secret the log must never show
TIME_SCALE = 60
SETTLE_S = 30  # verification.settle_delay_s, market seconds
DUE_MARGIN_S = SETTLE_S + 150  # market seconds after delivery end: settle, scan, send, retries
START_BOUND_S = 20.0  # the sandbox's start on a busy machine
STOP_BOUND_S = 30.0  # SIGTERM to exit: the daemon's 20 s graceful bound plus a margin
RESTART_DELAY_S = 0.5  # systemd's RestartSec in deploy/flexbot.service is longer; this is harsher
CONSTANT_FAULTS = {
    "ws_drop_every": 10,
    "token_ttl": 5,
    "rest_error_rate": 0.1,
    "ambiguous_rate": 0.1,
}
TOKEN = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")  # token_urlsafe(32)
BEARER = re.compile(r"Bearer\s+(?!\*)\S", re.IGNORECASE)


@attrs.frozen
class ChaosSettings:
    duration_s: float = 900.0  # wall seconds of killing and faults
    kills: int = 20
    seed: int = 1
    min_due: int = 3  # contracts whose metering must fall due before the run ends
    settle_bound_s: float = 180.0  # wall seconds to wait, after the chaos, for due metering


@attrs.define
class Report:
    duration_s: float = 0.0  # from the first start to the final SIGTERM
    chaos_s: float = 0.0  # of which with kills and fault bursts
    kills: int = 0
    runs: int = 0
    final_exit: int | None = None
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
    tracebacks: int = 0
    non_json_lines: list[str] = attrs.Factory(list)
    secrets: list[str] = attrs.Factory(list)
    disconnected_s: float = 0.0
    restarting_s: float = 0.0
    disconnected_by_endpoint: dict[str, float] = attrs.Factory(dict)
    reconnects: int = 0
    half_open_found: int = 0  # links the daemon declared dead for unanswered pings
    events: Counter[str] = attrs.Factory(Counter)
    injected: dict[str, int] = attrs.Factory(dict)
    sandbox_tracebacks: int = 0

    def problems(self) -> list[str]:
        found = []
        if self.kills < 1:
            found.append("the daemon was never killed")
        if self.final_exit != 0:
            found.append(f"the last run exited with {self.final_exit}, expected 0 after SIGTERM")
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
        if self.tracebacks:
            found.append(f"{self.tracebacks} unhandled exceptions in the daemon's log")
        if self.non_json_lines:
            found.append(f"non-JSON lines in the daemon's log: {self.non_json_lines[:3]}")
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
        )
        lines = [
            f"chaos run: {self.duration_s:.0f} s wall ({self.chaos_s:.0f} s of kills and bursts),"
            f" {self.kills} SIGKILLs, {self.runs} daemon runs, last exit {self.final_exit}",
            f"faults injected by the sandbox: {_fmt_counts(self.injected)}",
            f"orders: {self.intents} intents journalled, {self.placed} placed, "
            f"{self.market_orders} market orders of ours, duplicates {len(self.duplicates)}",
            f"  intents by state: {_fmt_counts(self.intents_by_state)}",
            f"metering: {self.contracts_due} contracts due, {self.metering_accepted} accepted, "
            f"missing {len(self.metering_missing)}, duplicated {len(self.metering_duplicated)}; "
            f"identical resends recognised by the market {self.identical_resends}",
            f"log: unhandled exceptions {self.tracebacks}, non-JSON lines "
            f"{len(self.non_json_lines)}, secrets {len(self.secrets)}; sandbox tracebacks "
            f"{self.sandbox_tracebacks}",
            f"disconnected {self.disconnected_s:.1f} s in total ({share:.0%} of the run; any stream"
            f" down or the process dead), {self.restarting_s:.1f} s of it from a kill until every"
            f" stream was up again; by endpoint: {per_endpoint}; reconnects {self.reconnects},"
            f" half-open links found {self.half_open_found}",
            "events: " + _fmt_counts({k: self.events[k] for k in notable if self.events[k]}),
        ]
        problems = self.problems()
        lines.append("PASS" if not problems else "FAIL: " + "; ".join(problems))
        return "\n".join(lines)


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


# --- processes ----------------------------------------------------------------------------------


@contextmanager
def sandbox(workdir: Path, seed: int) -> Iterator[str]:
    """The sandbox as a user starts it, on a port it picks; yields its base URL."""
    args = [
        *(f"--user=alice:{PASSWORD}", "--user=bob:bob-pw", "--rate-limit", "off"),
        *("--time-scale", str(TIME_SCALE), "--seed", str(seed), "--settlement-delay", "60"),
        *("--counterparties", "6", "--counterparty-interval", "0.2", "--log-format", "json"),
        *(f"--fault={name}={value}" for name, value in CONSTANT_FAULTS.items()),
    ]
    with launched_sandbox(*args, logs=workdir, ready_s=START_BOUND_S, cwd=ROOT) as running:
        yield running.url


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


async def start_daemon(config: Path, log: Path) -> trio.Process:
    with log.open("ab") as out:
        return await trio.lowlevel.open_process(
            [sys.executable, "-m", "flexbot.cli", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(FLEXBOT_PASSWORD=PASSWORD),
            cwd=ROOT,
        )


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


async def _chaos(workdir: Path, url: str, settings: ChaosSettings, report: Report) -> list[float]:
    """Run, kill and restart the daemon; returns the wall times (epoch s) of the kills, and the
    final SIGTERM as the last entry."""
    rng = random.Random(settings.seed)
    config = write_config(workdir, url)
    log = workdir / "daemon.log"
    marks: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bursts, client, rng)
            for moment in kill_moments(settings, rng):
                daemon = await start_daemon(config, log)
                report.runs += 1
                await trio.sleep_until(started + moment)
                daemon.send_signal(signal.SIGKILL)
                marks.append(time.time())
                await daemon.wait()
                report.kills += 1
                await trio.sleep(RESTART_DELAY_S)
            nursery.cancel_scope.cancel()
        report.chaos_s = trio.current_time() - started
        # No more kills: the last run stays until every metering that is due has been accepted.
        daemon = await start_daemon(config, log)
        report.runs += 1
        with trio.move_on_after(settings.settle_bound_s):
            while True:
                await trio.sleep(1.0)
                due, accepted = await _due_and_accepted(client)
                enough = len(due) >= settings.min_due
                if enough and all(accepted.get(o, {}).get("metering") for o in due):
                    break
                if daemon.poll() is not None:
                    break
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            marks.append(time.time())
            with trio.move_on_after(STOP_BOUND_S):
                await daemon.wait()
            report.final_exit = daemon.poll()
            if report.final_exit is None:
                daemon.kill()
                await daemon.wait()
        else:
            marks.append(time.time())
            report.final_exit = daemon.returncode
        report.injected = (await client.get("/sandbox/faults")).json()["injected"]
    return marks


async def _due_and_accepted(client: httpx.AsyncClient) -> tuple[list[str], dict[str, Any]]:
    orders = (await client.get("/sandbox/orders")).json()
    stats = (await client.get("/sandbox/stats")).json()
    now = wire.parse_datetime((await client.get("/sandbox/clock")).json()["now"])
    return due_contract_orders(orders, now), stats["verification_submissions"]


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


def referee(workdir: Path, url: str, marks: list[float], started: float, report: Report) -> None:
    orders = httpx.get(f"{url}/sandbox/orders", timeout=5).json()
    stats = httpx.get(f"{url}/sandbox/stats", timeout=5).json()
    now = wire.parse_datetime(httpx.get(f"{url}/sandbox/clock", timeout=5).json()["now"])

    store = Store.open(workdir / "flexbot.db")
    try:
        rows = list(store.orders())
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

    text = (workdir / "daemon.log").read_text(errors="replace")
    read_log(text, report)
    measure_disconnection(text, marks, started, report)
    report.duration_s = marks[-1] - started
    sandbox_text = (workdir / "sandbox.log").read_text(errors="replace")
    sandbox_text += (workdir / "sandbox.stderr.log").read_text(errors="replace")
    report.sandbox_tracebacks = sandbox_text.count("Traceback")


def read_log(text: str, report: Report) -> None:
    """Unhandled exceptions, stray output and secrets in the daemon's log."""
    report.tracebacks = text.count("Traceback (most recent call last)")
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
    for pattern in (re.escape(PASSWORD), TOKEN.pattern, BEARER.pattern):
        report.secrets += [m.group(0)[:12] + "…" for m in re.finditer(pattern, text)]


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


def measure_disconnection(text: str, marks: list[float], started: float, report: Report) -> None:
    """Downtime from the first start to the final SIGTERM, from the kills and the log."""
    timeline: list[tuple[float, str, str]] = [(m, "kill", "") for m in marks[:-1]]
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
    measured = downtime(timeline, started, marks[-1])
    report.disconnected_s = measured.any_down_s
    report.restarting_s = measured.restarting_s
    report.disconnected_by_endpoint = {k: round(v, 1) for k, v in measured.by_endpoint.items()}


def run(workdir: Path, settings: ChaosSettings) -> Report:
    """The whole chaos run in `workdir` (logs, config and store stay there)."""
    report = Report()
    with sandbox(workdir, settings.seed) as url:
        started = time.time()
        marks = trio.run(_chaos, workdir, url, settings, report)
        referee(workdir, url, marks, started, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=900.0, help="wall seconds of chaos")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs in that time (>= 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="a directory for the logs, config and store")
    args = parser.parse_args(argv)
    if args.kills < 1 or not math.isfinite(args.duration) or args.duration < 2 * args.kills:
        parser.error("--kills must be >= 1 and --duration at least 2 s per kill")
    settings = ChaosSettings(duration_s=args.duration, kills=args.kills, seed=args.seed)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = run(args.keep, settings)
    else:
        with tempfile.TemporaryDirectory(prefix="flexbot-chaos-") as workdir:
            report = run(Path(workdir), settings)
    print(report.render())
    return 0 if not report.problems() else 1


if __name__ == "__main__":
    sys.exit(main())
