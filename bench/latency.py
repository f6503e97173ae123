"""Tick → order latency: from an order book leaving the sandbox to the reacting order arriving.

A probe market (the sandbox's market, hub and HTTP app, served by hypercorn in its own process)
repeats one event: user `bob` places a sell at a price never seen before, which broadcasts a new
book on `/api/v1/ws/orderbook`; the subject, a client in another process, sees the new best ask and
posts a buy (at half its price, so nothing trades) to `/api/v1/order`. Both ends are stamped in the
probe process on one clock: t0 right after the book is queued for sending, t1 when the POST's
headers reach the app (an ASGI middleware around the sandbox's app, before the body is read). The
probe then cancels both orders, waits `--gap`, and goes on. A POST that does not come within
`--timeout` is a miss; one with another price (a late answer to an earlier book) is one too.

Three subjects, each against a fresh probe market, in the same run on the same machine:

- `floor`: a minimal trio program with no framework (this file, `--floor`): one OAuth token, one
  WebSocket (trio-websocket), orjson, and `httpx.AsyncClient` with keep-alive, the libraries flexbot
  itself uses. For information: it does less than the job;
- `journalled`: the same program with the duty flexbot has, an order never lost: before each POST
  it inserts the order into a SQLite file (WAL, `synchronous=FULL`: an fsync) on the same disk as
  flexbot's store, inline (nothing else runs). The fair floor: the targets are judged against it;
- `flexbot`: the real daemon, `flexbot run`, with the strategy `bench/strategies/latency_probe.py`,
  no risk limits, logging at `--flexbot-log-level` (warning: no line per event). Its path includes
  what the floor leaves out: the book decoded into model objects, the strategy's inbox and
  callback, validation and risk checks, and the order journalled in SQLite (an fsync) before it is
  sent.

Prints p50, p99, max and misses of each (after `--warmup` events that are not counted), the
ratios of flexbot to each floor and whether they meet the targets (p50 ≤ 1.2×, p99 ≤ 2× the
journalled floor), and the
p50 of the first and last tenth of the run (latency that grows with the orders a run has made).
Information only: the exit status does not depend on the figures. A subject whose events take
longer than `--budget` seconds in all (300 by default; 0 for none) stops short, and the report
says how many it made: a run stays within minutes even when a subject's latency grows with every
order it holds. The store lives in a temporary directory on the machine's disk (its fsync counts).

    .venv/bin/python bench/latency.py [--events 10000] [--budget 300]
        [--subjects floor,journalled,flexbot]

Also: `--save FILE` writes every latency in event order (JSON), `--profile FILE` runs flexbot under
cProfile. `--probe` and `--floor URL` are the two child processes' modes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import trio
import yaml
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from trio_websocket import open_websocket_url

from flexbot import logs, model
from flexbot.sandbox import server
from flexbot.sandbox.launch import child_env, stop
from flexbot.sandbox.market import MarketSettings, SandboxMarket
from flexbot.sandbox.matching import OrderFinal, OrderNotFound
from flexbot.sandbox.server import ServerSettings
from flexbot.sandbox.streams import Channel, StreamHub
from flexbot.strategy import Window, flat_baseline

ROOT = Path(__file__).resolve().parents[1]
SUBJECT, SUBJECT_PASSWORD = "trader", "trader-pw"
USERS = {"bob": "bob-pw", SUBJECT: SUBJECT_PASSWORD}
ORDER_PATH = "/api/v1/order"
FIRST_PRICE, PRICE_STEP = Decimal("0.10000"), Decimal("0.00001")  # a new best ask each event
READY_S = 60.0  # a subject has this long to connect and answer a first book
STOP_S = 10.0  # a child process has this long to stop on SIGTERM before it is killed
TARGETS = {"p50": 1.2, "p99": 2.0}


# --- the probe market (child process: --probe) ---------------------------------------------------


class Probe:
    """What the stamping middleware tells the probe loop."""

    def __init__(self) -> None:
        self.expecting = False
        self.arrived_at: float | None = None
        self.answer: Any = None
        self.arrived = trio.Event()
        self.answered = trio.Event()
        self.placed: list[str] = []  # the subject's order ids not cancelled yet

    def expect(self) -> None:
        self.arrived_at, self.answer = None, None
        self.arrived, self.answered = trio.Event(), trio.Event()
        self.expecting = True

    def on_arrival(self, at: float) -> bool:
        """True when this request is the one expected (the first after the book)."""
        if not self.expecting or self.arrived_at is not None:
            return False
        self.arrived_at = at
        self.arrived.set()
        return True

    def on_answer(self, body: bytes, expected: bool) -> None:
        try:
            order = orjson.loads(body)
        except orjson.JSONDecodeError:
            order = None
        if isinstance(order, dict) and isinstance(order.get("order_id"), str):
            self.placed.append(order["order_id"])
        if expected:
            self.answer = order
            self.answered.set()


class Stamp:
    """ASGI middleware: stamps each `POST /api/v1/order` as soon as its headers are in, before the
    app reads the body, and hands the answer (the order) to the probe."""

    def __init__(self, app: ASGIApp, probe: Probe) -> None:
        self.app = app
        self.probe = probe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].rstrip("/") == ORDER_PATH
        ):
            await self.app(scope, receive, send)
            return
        expected = self.probe.on_arrival(time.perf_counter())
        chunks: list[bytes] = []

        async def keep_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, keep_body)
        finally:
            self.probe.on_answer(b"".join(chunks), expected)


async def serve_probe(
    market: SandboxMarket,
    probe: Probe,
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[tuple[str, StreamHub]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`flexbot.sandbox.server.serve` (no simulated traders, no faults) with `Stamp` as the
    outermost layer of the app."""
    settings = ServerSettings(port=0, ws_ping_interval_s=None, ws_queue_size=1024)
    serving = partial(
        server.serve, market, settings, shutdown=shutdown, wrap_app=partial(Stamp, probe=probe)
    )
    async with trio.open_nursery() as nursery:
        running: server.Running = await nursery.start(serving)
        task_status.started((running.base_url, running.hub))


@attrs.define
class Outcome:
    latencies: list[float] = attrs.field(factory=list)  # seconds, measured events only
    misses: int = 0  # no POST within the timeout
    stale: int = 0  # a POST with another price than this event's book asked for
    planned: int = 0  # events asked for; fewer were made when the time budget ran out


class ProbeLoop:
    def __init__(self, market: SandboxMarket, probe: Probe, timeout_s: float, gap_s: float) -> None:
        self.market = market
        self.probe = probe
        self.timeout_s = timeout_s
        self.gap_s = gap_s
        self.seq = 0
        now = market.clock.now()
        window = Window.upcoming(now, 1, lead_s=3 * 3600)[0]  # hours ahead: never due in a run
        self.sell = model.OrderRequest(
            side=model.Side.SELL,
            power=Decimal(1000),
            price=FIRST_PRICE,
            delivery_start=window.start,
            delivery_end=window.end,
            expiry_time=window.start - timedelta(seconds=60),
            location=model.Location(location_id=("bob-site",), country_code="DE"),
            baseline=flat_baseline(window, Decimal(5000), created_at=now),
        )

    async def event(self, outcome: Outcome | None) -> bool:
        """One book, one reaction. Counted in `outcome` unless None (readiness, warm-up)."""
        price = FIRST_PRICE + self.seq * PRICE_STEP
        self.seq += 1
        probe = self.probe
        probe.expect()
        ask = self.market.place("bob", attrs.evolve(self.sell, price=price))
        t0 = time.perf_counter()
        try:
            with trio.move_on_after(self.timeout_s):
                await probe.arrived.wait()
            with trio.move_on_after(self.timeout_s):
                await probe.answered.wait()
        finally:
            probe.expecting = False
        ok = probe.arrived_at is not None and probe.answered.is_set()
        if ok:
            answer = probe.answer
            bought = answer.get("price") if isinstance(answer, dict) else None
            ok = isinstance(bought, float) and abs(bought - float(price) / 2) < 1e-9
            if not ok and outcome is not None:
                outcome.stale += 1
        elif outcome is not None:
            outcome.misses += 1
        if ok and outcome is not None:
            assert probe.arrived_at is not None
            outcome.latencies.append(probe.arrived_at - t0)
        if not ok:
            await trio.sleep(0.5)  # let a late answer come in, so it is cancelled below
        self._cancel("bob", [ask.order_id])
        self._cancel(SUBJECT, probe.placed)
        probe.placed.clear()
        await trio.sleep(self.gap_s)
        return ok

    def _cancel(self, user: str, order_ids: Sequence[str]) -> None:
        for order_id in order_ids:
            with contextlib.suppress(OrderFinal, OrderNotFound):  # already final: fine
                self.market.cancel_order(user, order_id)

    async def run(
        self, hub_connected: trio.Event, events: int, warmup: int, budget_s: float
    ) -> Outcome:
        await hub_connected.wait()
        deadline = trio.current_time() + READY_S
        while not await self.event(None):  # until the subject answers a book at all
            if trio.current_time() > deadline:
                raise RuntimeError(f"the subject answered no book within {READY_S} s")
        for _ in range(warmup):
            await self.event(None)
        outcome = Outcome(planned=events)
        end = trio.current_time() + (budget_s or float("inf"))
        for _ in range(events):
            await self.event(outcome)
            if trio.current_time() > end:
                break
        return outcome


async def probe_main(args: argparse.Namespace) -> None:
    market = SandboxMarket(
        MarketSettings(users=USERS, rate_limit=None, token_ttl_s=24 * 3600, seed=1)
    )
    probe = Probe()
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        url, hub = await nursery.start(partial(serve_probe, market, probe, shutdown=shutdown))
        _write_json(args.ready, {"url": url})
        connected = trio.Event()

        async def watch_connections() -> None:
            while not hub.connections(Channel.ORDERBOOK):  # noqa: ASYNC110 - the hub has no event
                await trio.sleep(0.01)
            connected.set()

        nursery.start_soon(watch_connections)
        loop = ProbeLoop(market, probe, args.timeout, args.gap)
        outcome = await loop.run(connected, args.events, args.warmup, args.budget)
        _write_json(args.out, attrs.asdict(outcome))
        await trio.sleep_forever()  # serve on: the subject stops first, cleanly (SIGTERM ends us)


def _write_json(path: Path, data: Any) -> None:
    partial_path = path.with_suffix(".part")
    partial_path.write_bytes(orjson.dumps(data))
    partial_path.replace(path)


# --- the floor (child process: --floor URL) ------------------------------------------------------


def open_journal(path: Path) -> sqlite3.Connection:
    """The journalled floor's store: one table, WAL, an fsync a commit (as flexbot's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    return db


async def floor_main(url: str, username: str, password: str, journal: Path | None = None) -> None:
    """A new best ask → a buy at half its price: the job of the strategy, with no framework (and,
    with `journal`, each order committed to SQLite before it is sent)."""
    db = open_journal(journal) if journal is not None else None
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        form = {
            "client_id": "glocalflexmarket_public_api",
            "grant_type": "password",
            "username": username,
            "password": password,
        }
        token = (await http.post("/auth/oauth/v2/token", data=form)).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        ws_url = "ws" + url.removeprefix("http") + "/api/v1/ws/orderbook"
        last_ask: float | None = None
        async with open_websocket_url(ws_url) as ws:
            while True:
                message = orjson.loads(await ws.get_message())
                if message.get("type") != "orderbook_update":
                    continue
                asks = [e for group in message["data"]["asks"].values() for e in group]
                if not asks:
                    continue
                best = min(asks, key=lambda e: e["price"])
                if best["price"] == last_ask:
                    continue
                last_ask = best["price"]
                start = datetime.fromisoformat(best["delivery_start"])
                order = {
                    "side": "buy",
                    "power": best["power"],
                    "price": best["price"] / 2,
                    "delivery_start": best["delivery_start"],
                    "delivery_end": best["delivery_end"],
                    "expiry_time": (start - timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "location": {"location_id": ["floor-site"], "country_code": "DE"},
                }
                body = orjson.dumps(order)
                if db is not None:
                    db.execute("INSERT INTO orders (body) VALUES (?)", (body,))  # commits: fsync
                response = await http.post("/api/v1/order/", content=body, headers=headers)
                response.raise_for_status()


# --- the parent: one probe market per subject ----------------------------------------------------


def flexbot_config(tmp: Path, url: str, log_level: str, store_dir: Path) -> Path:
    strategies = tmp / "strategies"
    strategies.mkdir()
    probe = {
        "module": "latency_probe",
        "class": "LatencyProbe",
        "location": {"location_id": ["flexbot-site"], "country_code": "DE"},
        "params": {"price_factor": 0.5},
    }
    (strategies / "probe.yaml").write_text(yaml.safe_dump(probe))
    config = {
        "market": {
            "url": url,
            "username": SUBJECT,
            "password": "${FLEXBOT_PASSWORD}",
            "clock": "sandbox",
        },
        "store": {"path": str(store_dir / "flexbot.db")},
        "strategies": {
            "config_dir": str(strategies),
            "code_dir": str(ROOT / "bench" / "strategies"),
        },
        "logging": {"format": "json", "level": log_level},
    }
    path = tmp / "flexbot.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def subject_argv(name: str, tmp: Path, url: str, args: argparse.Namespace) -> list[str]:
    store_dir = tmp / "state" if args.store_dir is None else args.store_dir / tmp.name
    if name == "floor":
        return [sys.executable, __file__, "--floor", url]
    if name == "journalled":
        return [sys.executable, __file__, "--floor", url, "--journal", str(store_dir / "floor.db")]
    config = flexbot_config(tmp, url, args.flexbot_log_level, store_dir)
    run = ["-m", "flexbot.cli", "run", "--config", str(config)]
    if args.profile:
        return [sys.executable, "-m", "cProfile", "-o", str(args.profile), *run]
    return [sys.executable, *run]


def wait_for_file(path: Path, deadline: float, *watched: subprocess.Popen[bytes]) -> Any:
    while not path.exists():
        for process in watched:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path.name} not written in time")
        time.sleep(0.05)
    return orjson.loads(path.read_bytes())


def measure(name: str, args: argparse.Namespace) -> Outcome:
    """One subject against a fresh probe market, each in its own process."""
    with tempfile.TemporaryDirectory(prefix=f"flexbot-latency-{name}-") as tmp_name:
        tmp = Path(tmp_name)
        ready, out = tmp / "ready.json", tmp / "outcome.json"
        probe_argv = [
            *(sys.executable, __file__, "--probe", "--ready", str(ready), "--out", str(out)),
            *("--events", str(args.events), "--warmup", str(args.warmup)),
            *("--timeout", str(args.timeout), "--gap", str(args.gap)),
            *("--budget", str(args.budget)),
        ]
        processes: list[subprocess.Popen[bytes]] = []
        log_paths = {"probe": tmp / "probe.log", name: tmp / f"{name}.log"}
        try:
            with log_paths["probe"].open("wb") as log:
                probe = subprocess.Popen(
                    probe_argv, stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT
                )
            processes.append(probe)
            url = wait_for_file(ready, time.monotonic() + READY_S, probe)["url"]
            with log_paths[name].open("wb") as log:
                subject = subprocess.Popen(
                    subject_argv(name, tmp, url, args),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=child_env(FLEXBOT_PASSWORD=SUBJECT_PASSWORD),
                    cwd=ROOT,
                )
            processes.insert(0, subject)  # stopped first, while its market still answers
            # Only a guard against a hang: every event ends by itself (its timeout).
            per_event = 2 * args.timeout + 0.5 + args.gap
            bound = READY_S + args.warmup * per_event + 60
            bound += min(args.budget or float("inf"), args.events * per_event)
            data = wait_for_file(out, time.monotonic() + bound, probe, subject)
            return Outcome(**data)
        except RuntimeError:
            for path in log_paths.values():
                tail = path.read_text(errors="replace")[-3000:] if path.exists() else ""
                print(f"--- {path.name} (last 3000 characters) ---\n{tail}", file=sys.stderr)
            raise
        finally:
            for process in processes:
                stop(process, STOP_S)
            if args.store_dir is not None:
                shutil.rmtree(args.store_dir / tmp.name, ignore_errors=True)
            if args.keep_logs is not None:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for path in log_paths.values():
                    if path.exists():
                        shutil.copy(path, args.keep_logs / f"{name}-{path.name}")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of all values at or below it."""
    rank = max(1, -(-len(sorted_values) * q // 1))
    return sorted_values[int(rank) - 1]


def summary(outcome: Outcome) -> dict[str, float]:
    values = sorted(outcome.latencies)
    if not values:
        return {}
    tenth = max(1, len(outcome.latencies) // 10)
    return {
        "p50": percentile(values, 0.50),
        "p99": percentile(values, 0.99),
        "max": values[-1],
        "first_p50": percentile(sorted(outcome.latencies[:tenth]), 0.50),
        "last_p50": percentile(sorted(outcome.latencies[-tenth:]), 0.50),
    }


def report(results: dict[str, Outcome], args: argparse.Namespace, elapsed: float) -> None:
    cpus = os.cpu_count()
    python = platform.python_version()
    budget = f"budget {args.budget:g} s" if args.budget else "no time budget"
    print(
        f"tick → order latency: {args.events:,} events per subject after {args.warmup} warm-up, "
        f"gap {args.gap * 1000:g} ms, timeout {args.timeout:g} s, {budget}"
    )
    print(f"machine: {cpus} CPUs, {platform.machine()}, {platform.system()}, Python {python}")
    print(
        f"{'':>10} {'events':>7} {'p50':>9} {'p99':>9} {'max':>9} {'misses':>7}"
        "  p50 first/last tenth"
    )
    stats = {name: summary(outcome) for name, outcome in results.items()}
    for name, outcome in results.items():
        s = stats[name]
        made = len(outcome.latencies) + outcome.misses + outcome.stale
        misses = outcome.misses + outcome.stale
        if not s:
            print(f"{name:>10} {made:>7} {'-':>9} {'-':>9} {'-':>9} {misses:>7}")
            continue
        ms = {k: f"{v * 1000:.3f}" for k, v in s.items()}
        print(
            f"{name:>10} {made:>7} {ms['p50']:>6} ms {ms['p99']:>6} ms {ms['max']:>6} ms"
            f" {misses:>7}  {ms['first_p50']} / {ms['last_p50']} ms"
        )
    for floor, judged in (("journalled", True), ("floor", False)):
        if not (stats.get(floor) and stats.get("flexbot")):
            continue
        parts = []
        for key, target in TARGETS.items():
            ratio = stats["flexbot"][key] / stats[floor][key]
            met = "met" if ratio <= target else "not met"
            parts.append(
                f"{key} {ratio:.2f}" + (f" (target ≤ {target:g}: {met})" if judged else "")
            )
        ratio_max = stats["flexbot"]["max"] / stats[floor]["max"]
        what = "the targets' floor" if judged else "information: it journals nothing"
        print(f"ratio flexbot/{floor}: {', '.join(parts)}, max {ratio_max:.2f}   ({what})")
    for name, outcome in results.items():
        made = len(outcome.latencies) + outcome.misses + outcome.stale
        if made < outcome.planned:
            print(
                f"note: {name} made {made:,} of {outcome.planned:,} events within the budget;"
                " its figures cover those only (--budget 0 runs them all)"
            )
    print(f"total run time: {elapsed:.1f} s")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="measured events per subject")
    parser.add_argument("--warmup", type=int, default=200, help="events before, not counted")
    parser.add_argument("--timeout", type=float, default=2.0, help="s until an event is a miss")
    parser.add_argument("--gap", type=float, default=0.002, help="s of quiet between events")
    parser.add_argument(
        "--budget",
        type=float,
        default=300.0,
        help="s a subject's measured events may take; then it stops short (0: no limit)",
    )
    parser.add_argument(
        "--subjects", default="floor,journalled,flexbot", help="comma-separated, in order"
    )
    parser.add_argument("--keep-logs", type=Path, help="copy the processes' logs into this dir")
    parser.add_argument(
        "--store-dir",
        type=Path,
        help="where flexbot's store goes (e.g. /dev/shm: what the journal's fsync costs)",
    )
    parser.add_argument(
        "--flexbot-log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--profile", type=Path, help="run flexbot under cProfile, writing its stats here"
    )
    parser.add_argument(
        "--save", type=Path, help="write every latency (s, in event order) as JSON to this file"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    mode.add_argument("--floor", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--journal", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ready", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    subjects = [s for s in args.subjects.split(",") if s]
    unknown = set(subjects) - {"floor", "journalled", "flexbot"}
    if unknown or not subjects:
        parser.error(f"--subjects: choose from floor, journalled, flexbot (got {args.subjects!r})")
    if min(args.events - 1, args.warmup, args.gap, args.budget) < 0 or args.timeout <= 0:
        parser.error("--events must be ≥ 1, --warmup, --gap and --budget ≥ 0, --timeout > 0")
    args.subject_list = subjects
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.probe:
        logs.configure(json=True, level="warning")
        trio.run(probe_main, args)
        return
    if args.floor:
        trio.run(floor_main, args.floor, SUBJECT, SUBJECT_PASSWORD, args.journal)
        return
    started = time.perf_counter()
    results: dict[str, Outcome] = {}
    for name in args.subject_list:
        print(f"measuring {name}…", file=sys.stderr, flush=True)
        results[name] = measure(name, args)
    report(results, args, time.perf_counter() - started)
    if args.save:
        args.save.write_bytes(orjson.dumps({k: attrs.asdict(v) for k, v in results.items()}))
    if args.profile:
        print(f"flexbot's profile: {args.profile} (python -m pstats {args.profile})")


if __name__ == "__main__":
    main()
