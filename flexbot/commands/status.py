"""`flexbot status [--config PATH]`: what the daemon is doing, read from its store.

The store is SQLite in WAL mode, so this reads it safely while the daemon runs (or after it
stopped). It shows the strategies of the config, the kill switch, open and unknown orders, recent
fills, contracts waiting for metering or verification, the outbox backlog, and per site: its
meters (last reading), its assets (what they last said, and how long ago: the daemon keeps it in
the store) and, with a portfolio (`assets`), what the site can deliver in the next windows against
what is committed there.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

from flexbot import config, model, wire
from flexbot.assets import Asset, Fleet
from flexbot.commands import add_config_option, add_log_format, load_config
from flexbot.engine import killswitch
from flexbot.engine.deliverable import site_rooms
from flexbot.engine.orders import Intent
from flexbot.ledger import Ledger, amount_eur, energy_kwh
from flexbot.problems import Invalid
from flexbot.store import (
    DAEMON,
    OPERATOR,
    JournalRow,
    Store,
    StoreError,
    failure,
    is_store_fault,
    lock,
)
from flexbot.trading import Window

NOT_RUNNING = lock.Holder(held=False)

RECENT_FILLS = 10
STATUS_WINDOWS = 4  # upcoming windows shown per site
METERS_LISTED = 5  # a site with more meters is summed up in one line
SAVED_AT = "assets.saved_at"  # the market time at which the daemon last saved its fleet


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("status", help="what the daemon is doing, from its store")
    add_config_option(parser)
    add_log_format(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # The store only: works beside a running daemon, without the market password.
    loaded = load_config(args.config, secrets=False)
    if loaded is None:
        return 2
    if not loaded.store_path.exists():
        print(f"no store at {loaded.store_path}: the daemon has not run with this config yet")
        return 0
    try:
        store = Store.open(loaded.store_path)
    except StoreError as exc:
        print(f"flexbot status: {exc}", file=sys.stderr)
        return 1
    try:
        print("\n".join(report(loaded, store, lock.holder(loaded.store_path))))
    except sqlite3.Error as exc:
        if not is_store_fault(exc):
            raise
        print(f"flexbot status: {failure(exc, loaded.store_path)}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def report(
    loaded: config.LoadedConfig, store: Store, daemon: lock.Holder = NOT_RUNNING
) -> list[str]:
    out = [f"store {loaded.store_path} (schema {store.schema_version})"]
    started = store.flag(lock.STARTED_FLAG)
    if daemon.held:
        out.append(f"daemon: running (pid {daemon.pid or '?'}, {_life(store, started)})")
    elif daemon.held is None:
        out.append(f"daemon: cannot tell whether it runs ({daemon.why})")
    else:
        last = f", last started {started}" if started else ""
        out.append(f"daemon: not running{last}")
    out += ["", "strategies"]
    for spec in loaded.strategies:
        mode = "disabled" if not spec.enabled else "dry run" if spec.dry_run else "live"
        if mode == "live" and daemon.held is False:
            mode = "live when the daemon runs"
        out.append(f"  {spec.name:<16} {spec.cls.__name__} v{spec.version}, {mode}")
    latch = killswitch.latch_of(store)
    file = loaded.kill_switch_file
    reasons = [
        why
        for why, on in (
            (f"latch ({latch})", latch is not None),
            ("config", loaded.config.kill_switch.engaged),
            (f"file {file}", file is not None and file.exists()),
        )
        if on
    ]
    out.append(f"kill switch: {'ENGAGED: ' + ', '.join(reasons) if reasons else 'not engaged'}")
    rows = store.orders()
    orders = [(row, _order(row)) for row in rows if row.origin == DAEMON]
    live = [
        (row, order, _state(row, daemon.held is not False))
        for row, order in orders
        if row.state in ("pending", "open", "unknown")
    ]
    states = Counter(state for _, _, state in live)
    out += ["", f"open orders: {len(live)} ({_counts(states)})"]
    for row, order, state in live:
        request = wire.decode(row.request, model.OrderRequest)
        status = str(order.status) if order else "-"
        out.append(
            f"  {row.strategy:<12} {request.side:<4} {request.delivery_start:%m-%d %H:%M} "
            f"{request.power:>7} W @ {request.price:<7} {state:<8} {status:<22} "
            f"{row.order_id or row.client_id}"
        )
    by_hand = [row for row in rows if row.origin == OPERATOR]
    if by_hand:
        in_flight = sum(1 for row in by_hand if row.order_id is None and row.state != "rejected")
        out.append(
            f"operator orders journalled: {len(by_hand)} ({in_flight} without a market id); "
            "`flexbot orders list` shows their state"
        )
    fills = sorted(
        (
            (contract, row)
            for row, order in orders
            if order is not None
            for contract in order.contracts
        ),
        key=lambda pair: pair[0].created_at or datetime.min.replace(tzinfo=UTC),
        reverse=True,
    )
    out += ["", f"recent fills ({len(fills)} in all)"]
    for contract, row in fills[:RECENT_FILLS]:
        out.append(
            f"  {row.strategy:<12} {contract.delivery_start:%m-%d %H:%M} {contract.power:>7} W "
            f"{energy_kwh(contract):>8.3f} kWh @ {contract.price:.4f} €/kWh = "
            f"€{amount_eur(contract):.2f}  {contract.status}"
        )
    ledger = Ledger.of(
        (row.strategy, str(order.side), contract)
        for row, order in orders
        if order is not None and not row.dry_run  # paper fills are no money
        for contract in order.contracts
    )
    out += ["", "money and energy (contracts by where they stand)", *ledger.lines()]
    outbox = {(r.order_id, r.measurement_type): r for r in store.outbox()}
    waiting_metering = [
        c
        for c, row in fills
        if row.order_id and (row.order_id, "metering") not in outbox and _is_sell(row)
    ]
    waiting_verification = [
        c for c, _ in fills if c.status == model.ContractStatus.VERIFICATION_INITIATED
    ]
    out += [
        "",
        f"contracts awaiting metering: {len(waiting_metering)}; "
        f"awaiting verification: {len(waiting_verification)}",
    ]
    pending, oldest = store.outbox_backlog()
    by_state = Counter(r.state for r in outbox.values())
    age = f", oldest {time.time() - oldest:.0f} s" if oldest is not None else ""
    out.append(f"outbox: {pending} pending{age} ({_counts(by_state) or 'empty'})")
    now = datetime.now(UTC)
    saved_at = store.flag(SAVED_AT)
    if loaded.config.market.clock == "sandbox" and saved_at is not None:
        now = wire.parse_datetime(saved_at)  # the sandbox's market time, not the wall's
    out += sites(loaded, store, [Intent.from_row(row) for row, _ in orders], now=now)
    return out


def sites(
    loaded: config.LoadedConfig, store: Store, intents: Sequence[Intent], *, now: datetime
) -> list[str]:
    """Per site: its meters (last reading, age), its assets (state age, power, energy) and, with
    a portfolio, what it can deliver in the next windows against what is committed there."""
    settings = loaded.config.assets
    fleet = None
    if settings is not None:
        fleet = Fleet(settings, loaded.fixed_assets)
        for site, name, state, availability, _ in store.assets():
            fleet.restore(site, name, state, availability)
    by_site: dict[str, list[str]] = {}
    meters: dict[str, list[tuple[str, str | None]]] = {}
    for meter in loaded.meters:
        meters.setdefault(meter.location_id, []).append((meter.id, store.last_reading_at(meter.id)))
    for site, seen in meters.items():
        lines = by_site.setdefault(site, [])
        if len(seen) > METERS_LISTED:  # a site of many meters: how many, and the stalest
            silent = sum(1 for _, at in seen if at is None)
            read = [at for _, at in seen if at is not None]
            oldest = min(read) if read else None
            age = f" ({_age(now, wire.parse_datetime(oldest))})" if oldest else ""
            lines.append(
                f"    meters {len(seen)}, {silent} without a reading; "
                f"oldest last reading {oldest or 'none'}{age}"
            )
            continue
        for meter_id, at in seen:
            age = f" ({_age(now, wire.parse_datetime(at))})" if at else ""
            lines.append(f"    meter  {meter_id:<16} last reading {at or 'none'}{age}")
    if fleet is not None:
        for asset in fleet.assets():
            by_site.setdefault(asset.site, []).append(_asset_line(fleet, asset, now))
    if not by_site:
        return []
    out = ["", "sites"]
    windows = Window.upcoming(now, STATUS_WINDOWS)
    rooms_of = (
        site_rooms(fleet, intents, by_site, windows, now=now, dry_run=False)
        if fleet is not None
        else {}
    )
    for site in sorted(by_site):
        out.append(f"  {site}")
        out += by_site[site]
        if fleet is not None:
            rooms = rooms_of[site]
            for window in windows:
                risk, room, _ = rooms[window]
                out.append(
                    f"    {window.start:%H:%M}  {room.capacity_w / 1000:>7.2f} kW deliverable, "
                    f"{risk.committed_w / 1000:>7.2f} kW committed, "
                    f"{room.free_w / 1000:>7.2f} kW free"
                )
    return out


def _life(store: Store, started: str | None) -> str:
    """A running daemon's life: since when, ready or still starting, its last heartbeat."""
    now = datetime.now(UTC)
    if started is None:
        return "started ?"
    began = wire.parse_datetime(started)
    parts = [f"started {started}, up {_span((now - began).total_seconds())}"]
    ready = store.flag(lock.READY_FLAG)
    if ready is None or wire.parse_datetime(ready) < began:
        parts.append("starting (not ready yet)")
    else:
        parts.append("ready")
    beat = store.flag(lock.HEARTBEAT_FLAG)
    if beat is not None and wire.parse_datetime(beat) >= began:
        age = (now - wire.parse_datetime(beat)).total_seconds()
        late = age > 3 * lock.HEARTBEAT_S
        parts.append(f"{'NOT ANSWERING: ' if late else ''}last heartbeat {_span(age)} ago")
    return ", ".join(parts)


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _asset_line(fleet: Fleet, asset: Asset, now: datetime) -> str:
    if asset.fixed is not None:
        return f"    asset  {asset.name:<16} fixed     {asset.fixed.power_w:>8.0f} W of reduction"
    state = asset.state
    if state is None:
        return f"    asset  {asset.name:<16} no readable state"
    energy = f", {state.energy_wh:.0f} Wh" if state.energy_wh is not None else ""
    fresh = "" if fleet.fresh(asset, now) else ", STALE: offers nothing"
    return (
        f"    asset  {asset.name:<16} {state.kind:<9} {state.power_w:>8.0f} W{energy}, "
        f"state {_age(now, state.ts)}{fresh}"
    )


def _age(now: datetime, then: datetime) -> str:
    seconds = (now - then).total_seconds()
    if abs(seconds) < 120:
        return f"{seconds:.0f} s ago"
    if abs(seconds) < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _state(row: JournalRow, running: bool) -> str:
    """A pending row of a daemon that is not running was cut off on its way: it may or may not
    have reached the market, which is what `unknown` says (the next run resolves it)."""
    return "unknown" if row.state == "pending" and not running else row.state


def _order(row: JournalRow) -> model.Order | None:
    if row.last_order is None:
        return None
    try:
        return wire.decode(row.last_order, model.Order)
    except Invalid:
        return None


def _is_sell(row: JournalRow) -> bool:
    return wire.decode(row.request, model.OrderRequest).side is model.Side.SELL


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{n} {name}" for name, n in sorted(counter.items()))
