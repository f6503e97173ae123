"""The referee of a chaos run: the sandbox's state read back, orders and metering recounted
against the journal, the daemon's logs read for tracebacks, stray output and secrets, and how
long it had no live link to the market."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import httpx

from bench.chaos.events import Timeline
from bench.chaos.processes import Daemon
from bench.chaos.report import FinalState, Report
from bench.chaos.settings import BEARER, DUE_MARGIN_S, PASSWORD, TOKEN, TRACEBACK
from flexbot import wire
from flexbot.store import Store

# --- the market's state ---------------------------------------------------------------------------


async def market_state(
    client: httpx.AsyncClient,
) -> tuple[datetime, list[dict[str, Any]], dict[str, Any]]:
    now = wire.parse_datetime((await client.get("/sandbox/clock")).json()["now"])
    orders = (await client.get("/sandbox/orders")).json()
    stats = (await client.get("/sandbox/stats")).json()
    return now, orders, stats


def metering_total(orders: list[dict[str, Any]], stats: dict[str, Any]) -> int:
    """The metering submissions the sandbox accepted for orders of ours (not the simulated
    traders')."""
    ours = {o["order_id"] for o in orders if o["owner"] == "alice"}
    accepted = stats["verification_submissions"]
    return sum(c.get("metering", 0) for o, c in accepted.items() if o in ours)


def metering_submitted(daemon: Daemon) -> int:
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


# --- the referee ----------------------------------------------------------------------------------


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
    report.last_run_metering_market = metering_total(orders, stats) - timeline.metering_before
    report.last_run_metering_logged = metering_submitted(last)

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
