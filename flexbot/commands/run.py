"""`flexbot run` (the daemon) and `flexbot kill-switch engage|release|status`."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from datetime import UTC, datetime

import trio

from flexbot import daemon, logs, wire
from flexbot.commands import add_config_option, add_log_format, first_leaf, load_config
from flexbot.config import LoadedConfig
from flexbot.engine import killswitch
from flexbot.market import AuthFailed
from flexbot.store import Store, StoreError, StoreLocked, failure, is_store_fault, lock

log = logs.get_logger("flexbot.daemon")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run_parser = sub.add_parser("run", help="run the trading daemon")
    add_config_option(run_parser)
    add_log_format(run_parser)
    run_parser.set_defaults(run=run)

    kill = sub.add_parser("kill-switch", help="engage, release or show the kill switch latch")
    kill.add_argument("action", choices=["engage", "release", "status"])
    add_config_option(kill)
    add_log_format(kill)
    kill.set_defaults(run=run_kill_switch)


def run(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    if loaded is None:
        return 2
    # The config's logging applies now (a --log-format on the command line wins).
    settings = loaded.config.logging
    chosen = getattr(args, "log_format", None)
    fmt = chosen or (None if settings.format == "auto" else settings.format)
    logs.configure(json=None if fmt is None else fmt == "json", level=settings.level)
    # Exit 2 for what a restart cannot fix (systemd's RestartPreventExitStatus=2): wrong
    # credentials, a store from a newer flexbot, a damaged store, another daemon on the store.
    # Exit 1 for what may pass (a full disk): systemd restarts the daemon, which then waits in
    # start-up until the store takes writes again.
    status = 2
    try:
        status = trio.run(daemon.run, loaded)
    except* AuthFailed as group:
        log.error("daemon.auth_failed", reason=str(first_leaf(group)))
        print(f"flexbot run: the market refused the login: {first_leaf(group)}", file=sys.stderr)
    except* StoreError as group:
        error = first_leaf(group)
        assert isinstance(error, StoreError)
        status = 1 if error.retry_may_fix else 2
        if not error.reported:  # a failure while trading logged `store.failed` already
            log.error(
                "daemon.store_unusable",
                reason=str(error),
                retry_may_fix=error.retry_may_fix,
                locked_by=error.holder if isinstance(error, StoreLocked) else None,
            )
        print(f"flexbot run: {error}", file=sys.stderr)
    return status


def run_kill_switch(args: argparse.Namespace) -> int:
    # The store only: works beside a running daemon, without the market password.
    loaded = load_config(args.config, secrets=False)
    if loaded is None:
        return 2
    try:
        store = Store.open(loaded.store_path)
    except StoreError as exc:
        print(f"flexbot kill-switch: {exc}", file=sys.stderr)
        return 1
    try:
        return _kill_switch(args.action, loaded, store)
    except sqlite3.Error as exc:
        if not is_store_fault(exc):
            raise
        print(f"flexbot kill-switch: {failure(exc, loaded.store_path)}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _kill_switch(action: str, loaded: LoadedConfig, store: Store) -> int:
    if action == "engage":
        at = wire.format_datetime(datetime.now(UTC))
        killswitch.engage_latch(store, "flexbot kill-switch engage", at)
        running = lock.holder(loaded.store_path)
        if running.held:
            print(
                f"kill switch engaged: the daemon (pid {running.pid}) cancels every order "
                "within a second"
            )
        elif running.held is None:
            print(f"kill switch engaged: a running daemon cancels every order ({running.why})")
        else:
            print("kill switch engaged: no daemon runs on this store now; it starts halted")
    elif action == "release":
        was = killswitch.release_latch(store)
        print("kill switch latch released" if was else "the latch was not set")
    latch = killswitch.latch_of(store)
    others = [
        why
        for why, on in (
            ("config kill_switch.engaged", loaded.config.kill_switch.engaged),
            (
                f"file {loaded.kill_switch_file}",
                loaded.kill_switch_file is not None and loaded.kill_switch_file.exists(),
            ),
        )
        if on
    ]
    if action == "status" or others:
        reasons = ([f"latch ({latch})"] if latch else []) + others
        print("engaged: " + ", ".join(reasons) if reasons else "not engaged")
    return 0
