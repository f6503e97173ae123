"""`flexbot status [--config PATH]`: what the daemon is doing, read from its store.

The store is SQLite in WAL mode, so this reads it safely while the daemon runs (or after it
stopped). It shows the strategies of the config, the kill switch, open and unknown orders, recent
fills, contracts waiting for metering or verification, the outbox backlog and each meter's last
reading.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections import Counter
from datetime import UTC, datetime

from flexbot import config, model, wire
from flexbot.commands import add_config_option, add_log_format, load_config
from flexbot.engine import killswitch
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

NOT_RUNNING = lock.Holder(held=False)

RECENT_FILLS = 10


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
        out.append(f"daemon: running (pid {daemon.pid or '?'}, started {started or '?'})")
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
            f"@ {contract.price:<7} {contract.status}"
        )
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
    if loaded.meters:
        out += ["", "meters"]
        for meter in loaded.meters:
            seen = store.last_reading_at(meter.id)
            out.append(f"  {meter.id:<16} {meter.location_id:<12} last reading {seen or 'none'}")
    return out


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
