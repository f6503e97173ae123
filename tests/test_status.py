"""`flexbot status` reads the store only: whether a daemon runs (from the store's lock), open orders
with an order cut off by a crash shown as unknown, the operator's orders apart; it needs no market
password. Through the real command (`flexbot.cli.main`) on a real SQLite file."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from flexbot import cli, model, wire
from flexbot.engine.orders import fingerprint_key
from flexbot.store import DAEMON, OPERATOR, JournalRow, Store, lock
from tests.test_config import GOOD, write
from tests.test_engine_orders import a_request

AT = "2026-11-23T08:00:00Z"


def journalled(request: model.OrderRequest, client_id: str, state: str, origin: str) -> JournalRow:
    return JournalRow(
        client_id=client_id,
        strategy="operator" if origin == OPERATOR else "seller",
        strategy_version="1",
        fingerprint=fingerprint_key(request),
        request=wire.dumps(request).decode(),
        state=state,
        created_at=AT,
        updated_at=AT,
        following=origin == DAEMON,
        origin=origin,
    )


def test_status_tells_a_running_daemon_and_an_order_cut_off_as_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLEXBOT_TEST_PW", raising=False)  # no market password here
    config = write(tmp_path, {**GOOD, "store": {"path": "flexbot.db"}})
    store = Store.open(tmp_path / "flexbot.db")
    try:
        store.journal(journalled(a_request(), "cut-off", "pending", DAEMON))
        store.journal(journalled(a_request(price=Decimal("0.3")), "by-hand", "pending", OPERATOR))
    finally:
        store.close()

    assert cli.main(["status", "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "daemon: not running" in shown
    assert "open orders: 1 (1 unknown)" in shown  # pending when the daemon died: unknown now
    assert "operator orders journalled: 1 (1 without a market id)" in shown

    with lock.hold(tmp_path / "flexbot.db"):
        assert cli.main(["status", "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert f"daemon: running (pid {os.getpid()}" in shown
    assert "open orders: 1 (1 pending)" in shown  # a running daemon may be sending it now


def test_status_tells_a_starting_a_ready_and_a_stuck_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLEXBOT_TEST_PW", raising=False)
    config = write(tmp_path, {**GOOD, "store": {"path": "flexbot.db"}})
    now = datetime.now(UTC)

    def at(seconds_ago: float) -> str:
        return wire.format_datetime(now - timedelta(seconds=seconds_ago))

    def shown(flags: dict[str, str]) -> str:
        store = Store.open(tmp_path / "flexbot.db")
        try:
            for name, value in flags.items():
                store.set_flag(name, value, value)
        finally:
            store.close()
        with lock.hold(tmp_path / "flexbot.db"):
            assert cli.main(["status", "--config", str(config)]) == 0
        return next(x for x in capsys.readouterr().out.splitlines() if x.startswith("daemon:"))

    # An earlier run's READY does not make this one ready.
    starting = shown({lock.READY_FLAG: at(7200), lock.STARTED_FLAG: at(5)})
    assert "up 5 s, starting (not ready yet)" in starting
    ready = shown({lock.READY_FLAG: at(3), lock.HEARTBEAT_FLAG: at(2)})
    assert "up 5 s, ready, last heartbeat 2 s ago" in ready
    stuck = shown({lock.STARTED_FLAG: at(3600), lock.HEARTBEAT_FLAG: at(600)})
    assert "up 60 min, ready, NOT ANSWERING: last heartbeat 10 min ago" in stuck
