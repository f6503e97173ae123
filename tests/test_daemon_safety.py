"""`flexbot run` under what operators and machines do, each seen to go wrong once, as real
subprocesses against a sandbox subprocess:

- a second daemon on a running daemon's store exits 2 at once and touches nothing, while
  `status` and `kill-switch` keep working beside it without the market password;
- an operator's order placed by hand, identical to an order of the daemon's whose outcome is
  unknown, is never adopted (and so never cancelled by the kill switch);
- a stop during start-up still cancels the orders restored from the journal;
- a store that cannot be written mid-run (a real file-size limit on the process: writes fail as
  on a full disk) halts trading, cancels the open orders, exits 1 with one clear event; a restart
  waits until the store takes writes, then trades; a damaged store exits 2 with what to do.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from flexbot import wire
from flexbot.store import lock
from flexbot.strategy import Window
from tests.processes import (
    ADMIN_HEADERS,
    READY_S,
    ROOT,
    Market,
    child_env,
    logged_in,
    sandbox_process,
)
from tests.test_store_safety import damage_the_middle

pytestmark = pytest.mark.slow

STOP_S = 25.0
# A file-size limit of one byte: no file of the process may grow, as on a full disk (Python ignores
# SIGXFSZ, so a write fails with EFBIG instead). The hard limit stays, so anyone may lift it again.
FULL = (1, resource.RLIM_INFINITY)
FREED = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)

STRATEGY = '''
from datetime import datetime, timedelta
from decimal import Decimal

import attrs

from flexbot import model
from flexbot.strategy import Context, Strategy, Window


@attrs.frozen
class Params:
    windows: int = 1
    power_w: Decimal = Decimal(1000)
    price: Decimal = Decimal("0.2")
    start: str = ""  # the first window's start (ISO); else the third window from now


class PlaceSome(Strategy[Params]):
    """One buy in each of `windows` windows, unless it has one there."""

    Params = Params

    async def on_start(self, ctx: Context) -> None:
        if self.params.start:
            start, step = datetime.fromisoformat(self.params.start), timedelta(minutes=15)
            count = self.params.windows
            windows = [Window(start + i * step, start + (i + 1) * step) for i in range(count)]
        else:
            windows = Window.upcoming(ctx.now, 2 + self.params.windows)[2:]
        for window in windows:
            position = ctx.position(window)
            if position.open_buy_w + position.bought_w == 0:
                expiry = window.start - timedelta(minutes=5)
                await ctx.place(
                    model.Side.BUY,
                    window,
                    power_w=self.params.power_w,
                    price=self.params.price,
                    expiry=expiry,
                )
'''


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    with sandbox_process(tmp_path_factory.mktemp("sandbox"), "--rate-limit", "off") as running:
        yield running


def write_config(
    root: Path,
    market: Market,
    *,
    price: str,
    windows: int = 2,
    start: str = "",
    meter: dict[str, Any] | None = None,
) -> Path:
    """Each test its own `price`: the tests share alice's account, and an identical order of an
    earlier test (even a cancelled one) is not one a new daemon should have to think about."""
    (root / "strategies").mkdir(exist_ok=True)
    (root / "code").mkdir(exist_ok=True)
    (root / "code" / "place_some.py").write_text(STRATEGY)
    config: dict[str, Any] = {
        "market": {
            "url": market.url,
            "username": "alice",
            "password": "${FLEXBOT_PASSWORD}",
            "clock": "sandbox",
        },
        "store": {"path": "state/flexbot.db"},
        "strategies": {"config_dir": "strategies", "code_dir": "code"},
        "engine": {"resolve_interval_s": 0.5},
        "logging": {"format": "json"},
    }
    if meter is not None:
        source = {"type": "synthetic", "seed": 1, **meter}
        config["meters"] = [{"id": "site-1-main", "location_id": "site-1", "source": source}]
    (root / "flexbot.yaml").write_text(yaml.safe_dump(config))
    strategy = {
        "module": "place_some",
        "class": "PlaceSome",
        "location": {"location_id": ["site-1"], "country_code": "DE"},
        "params": {"windows": windows, "price": float(price), "start": start},
    }
    (root / "strategies" / "place_some.yaml").write_text(yaml.safe_dump(strategy))
    return root / "flexbot.yaml"


class Daemon:
    """`flexbot run`; its output goes through a pipe (a file-size limit on the daemon must not
    stop its log) into a file the test reads."""

    def __init__(
        self, config: Path, out: Path, *, preexec_fn: Callable[[], None] | None = None
    ) -> None:
        self.out = out
        with out.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flexbot.cli", "run", "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=child_env(FLEXBOT_PASSWORD="alice-pw"),
                cwd=ROOT,
                preexec_fn=preexec_fn,
            )
            self.copier = subprocess.Popen(["cat"], stdin=self.process.stdout, stdout=sink)
        assert self.process.stdout is not None
        self.process.stdout.close()  # the copier's now

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines (stderr shares the file: its one-line messages are not events)."""
        lines = self.out.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_for(self, what: Callable[[dict[str, Any]], bool], bound: float = READY_S) -> None:
        deadline = time.monotonic() + bound
        while not any(what(e) for e in self.events()):
            if self.process.poll() is not None:
                self.copier.wait(timeout=5)
                if any(what(e) for e in self.events()):
                    return
                code = self.process.returncode
                pytest.fail(f"flexbot run exited {code}:\n{self.out.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"not seen within {bound} s:\n{self.out.read_text()[-3000:]}")
            time.sleep(0.05)

    def wait_event(self, name: str, bound: float = READY_S, **fields: Any) -> dict[str, Any]:
        self.wait_for(lambda e: e.get("event") == name and fields.items() <= e.items(), bound)
        return next(
            e for e in self.events() if e.get("event") == name and fields.items() <= e.items()
        )

    def wait(self, timeout: float = STOP_S) -> int:
        status = self.process.wait(timeout=timeout)
        self.copier.wait(timeout=5)
        return status

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.copier.wait(timeout=5)


class Account:
    """alice's orders as the market holds them (the referee), over plain HTTP."""

    def __init__(self, market: Market) -> None:
        self.market = market
        self.http = logged_in(market, "alice")

    def open_orders(self) -> dict[str, str]:
        listed = self.http.get("/api/v1/order/").json()
        finals = ("cancelled", "expired", "filled", "rejected")
        return {o["order_id"]: o["status"] for o in listed if o["status"] not in finals}

    def status(self, order_id: str) -> str:
        status: str = self.http.get(f"/api/v1/order/{order_id}").json()["status"]
        return status

    def cancel_all(self) -> None:
        for order_id in self.open_orders():
            self.http.delete(f"/api/v1/order/{order_id}")

    def faults(self, **changes: Any) -> None:
        response = httpx.post(
            f"{self.market.url}/sandbox/faults", json=changes, headers=ADMIN_HEADERS, timeout=5
        )
        response.raise_for_status()


@pytest.fixture
def alice(market: Market) -> Iterator[Account]:
    account = Account(market)
    account.cancel_all()  # each test starts from no open order of alice's
    yield account
    account.cancel_all()
    account.faults(rest_error_rate=0, token_fail_for=0)


def until(condition: Callable[[], bool], bound: float = READY_S) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def flexbot(*args: str, password: bool = True) -> subprocess.CompletedProcess[str]:
    env = child_env(FLEXBOT_PASSWORD="alice-pw")
    if not password:  # as an operator without the market password (none inherited either)
        del env["FLEXBOT_PASSWORD"]
    return subprocess.run(
        [sys.executable, "-m", "flexbot.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=STOP_S,
        check=False,
    )


def count(daemon: Daemon, event: str) -> int:
    return sum(e["event"] == event for e in daemon.events())


def trading(config: Path, out: Path, alice: Account, orders: int = 2) -> Daemon:
    """`flexbot run`, READY with its `orders` open on the market and their ids journalled."""
    daemon = Daemon(config, out)
    try:
        daemon.wait_event("daemon.ready")
        daemon.wait_for(lambda _: count(daemon, "order.placed") >= orders)
        until(lambda: len(alice.open_orders()) == orders)
    except BaseException:
        daemon.close()
        raise
    return daemon


# --- one daemon per store ------------------------------------------------------------------------


def test_a_second_daemon_on_a_running_daemons_store_exits_2_and_touches_nothing(
    market: Market, alice: Account, tmp_path: Path
) -> None:
    config = write_config(tmp_path, market, price="0.21", windows=2)
    first = trading(config, tmp_path / "first.log", alice)
    try:
        before = alice.open_orders()

        started = time.monotonic()
        second = flexbot("run", "--config", str(config))
        took = time.monotonic() - started
        assert second.returncode == 2, second.stderr
        assert took < READY_S
        assert f"pid {first.process.pid}" in second.stderr
        assert str(tmp_path / "state" / "flexbot.db") in second.stderr
        assert "Traceback" not in second.stderr + second.stdout
        assert alice.open_orders() == before  # nothing adopted, nothing cancelled

        # Beside it, without the market password: status and the kill switch.
        shown = flexbot("status", "--config", str(config), password=False)
        assert shown.returncode == 0, shown.stderr
        assert f"daemon: running (pid {first.process.pid}" in shown.stdout
        assert "open orders: 2 (2 open)" in shown.stdout
        engaged = flexbot("kill-switch", "engage", "--config", str(config), password=False)
        assert engaged.returncode == 0, engaged.stderr
        assert f"the daemon (pid {first.process.pid})" in engaged.stdout
        until(lambda: alice.open_orders() == {})  # the running daemon obeyed it

        first.process.send_signal(signal.SIGTERM)
        assert first.wait() == 0
        released = flexbot("kill-switch", "release", "--config", str(config), password=False)
        assert released.returncode == 0, released.stderr
        shown = flexbot("status", "--config", str(config), password=False)
        assert "daemon: not running, last started" in shown.stdout
    finally:
        first.close()


# --- an operator's order is never adopted --------------------------------------------------------


def place_by_hand(config: Path, window_start: str, price: str) -> subprocess.CompletedProcess[str]:
    """`flexbot orders place`, the order PlaceSome places (1000 W, expiry start - 5 min)."""
    return flexbot(
        "orders",
        "place",
        "--config",
        str(config),
        "--side",
        "buy",
        "--power",
        "1000",
        "--price",
        price,
        "--start",
        window_start,
        "--location-id",
        "site-1",
        "--country",
        "DE",
    )


def test_an_operator_order_identical_to_an_unknown_intent_is_never_adopted(
    market: Market, alice: Account, tmp_path: Path
) -> None:
    """Seen: the daemon's submission had an unknown outcome (it had not reached the market), an
    identical order placed by hand was on the market, the daemon resolved its unknown intent to
    the operator's order, and the kill switch then cancelled the operator's order."""
    now = wire.parse_datetime(alice.http.get("/sandbox/clock").json()["now"])
    window = Window.upcoming(now, 3)[2]
    start = wire.format_datetime(window.start)
    config = write_config(tmp_path, market, price="0.22", windows=1, start=start)
    by_hand = place_by_hand(config, start, "0.22")
    assert by_hand.returncode == 0, by_hand.stderr
    operators = by_hand.stdout.split()[0]

    alice.faults(rest_error_rate=1.0)  # the daemon's order is answered 5xx: outcome unknown
    daemon = Daemon(config, tmp_path / "run.log")
    try:
        intent = daemon.wait_event("order.unknown")
        assert intent["delivery_start"] == wire.format_datetime(window.start)
        # Meanwhile a second identical order by hand is refused: nobody could tell them apart.
        twin = place_by_hand(config, intent["delivery_start"], "0.22")
        assert twin.returncode == 2
        assert "an identical order (daemon place_some" in twin.stderr
        alice.faults(rest_error_rate=0)

        # The daemon lists the market: the operator's order is there, identical, and not its own.
        daemon.wait_event("order.not_placed", bound=30, client_id=intent["client_id"])
        engaged = flexbot("kill-switch", "engage", "--config", str(config))
        assert engaged.returncode == 0, engaged.stderr
        daemon.wait_event("killswitch.engaged")
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.close()
    assert [e for e in daemon.events() if e["event"] == "order.resolved"] == []
    assert alice.status(operators) == "matching_active"  # the operator's order lives on
    shown = flexbot("status", "--config", str(config), password=False)
    assert "operator orders journalled: 1 (0 without a market id)" in shown.stdout
    flexbot("kill-switch", "release", "--config", str(config), password=False)


# --- a stop during start-up ----------------------------------------------------------------------


def test_a_stop_during_start_up_cancels_the_orders_restored_from_the_journal(
    market: Market, alice: Account, tmp_path: Path
) -> None:
    config = write_config(tmp_path, market, price="0.23", windows=2)
    first = trading(config, tmp_path / "first.log", alice)
    try:
        first.process.send_signal(signal.SIGKILL)  # the orders stay live, the journal says so
        first.wait()
    finally:
        first.close()
    alice.faults(token_fail_for=600)  # the next start is stuck in its login
    again = Daemon(config, tmp_path / "again.log")
    try:
        again.wait_event("auth.token_failed")
        again.process.send_signal(signal.SIGTERM)
        alice.faults(token_fail_for=0)  # the cancels log in again (within the stop's bound)
        assert again.wait() == 0
    finally:
        again.close()
    events = again.events()
    assert "daemon.ready" not in [e["event"] for e in events]
    cancelled = next(e for e in events if e["event"] == "daemon.cancelled_on_shutdown")
    assert cancelled["open"] == 2
    assert cancelled["cancelled"] == 2
    assert events[-1]["event"] == "daemon.stopped"
    assert alice.open_orders() == {}


# --- the store fails -----------------------------------------------------------------------------


def test_a_store_that_cannot_be_written_halts_trading_and_a_restart_recovers(
    market: Market, alice: Account, tmp_path: Path
) -> None:
    config = write_config(tmp_path, market, price="0.24", windows=2, meter={"interval_s": 1})
    daemon = trading(config, tmp_path / "full.log", alice)
    try:
        # From now on no file of the daemon's may grow: writes fail as on a full disk.
        resource.prlimit(daemon.process.pid, resource.RLIMIT_FSIZE, FULL)
        assert daemon.wait() == 1  # a retry may fix it: systemd restarts (not 2)
    finally:
        daemon.close()
    events = daemon.events()
    failed = [e for e in events if e["event"] == "store.failed"]
    assert len(failed) == 1
    assert failed[0]["retry_may_fix"] is True
    assert failed[0]["cancelled"] == 2
    text = daemon.out.read_text()
    assert "Traceback" not in text
    assert not any("exception" in e for e in events)
    assert "free disk space" in text.splitlines()[-1]  # what to do, on stderr
    assert alice.open_orders() == {}  # halted: nothing of ours left live

    # The restart meets the full disk still: it waits in start-up, then trades once it is freed.
    def full_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, FULL)

    restarted = Daemon(config, tmp_path / "restarted.log", preexec_fn=full_disk)
    try:
        waiting = restarted.wait_event("store.unwritable")
        assert waiting["retry_in_s"] == 1.0
        assert "free disk space" in waiting["reason"]
        resource.prlimit(restarted.process.pid, resource.RLIMIT_FSIZE, FREED)  # the disk is freed
        restarted.wait_event("daemon.ready", bound=2 * READY_S)
        # Its pid is in the lock file now, though the full disk kept it out at first.
        assert lock.holder(tmp_path / "state" / "flexbot.db").pid == restarted.process.pid
        # The orders the halt cancelled (which the failed store could not record) are reconciled
        # and journalled now.
        restarted.wait_for(
            lambda _: sum(e.get("status") == "cancelled" for e in restarted.events()) >= 2
        )
        restarted.process.send_signal(signal.SIGTERM)
        assert restarted.wait() == 0
    finally:
        restarted.close()
    shown = flexbot("status", "--config", str(config), password=False)
    assert "open orders: 0" in shown.stdout
    assert "    meter  site-1-main      last reading 20" in shown.stdout


def test_a_damaged_store_exits_2_with_what_to_do_and_no_traceback(
    market: Market, alice: Account, tmp_path: Path
) -> None:
    # Two days of readings: a store of many pages, whose middle ones are then damaged.
    meter = {"interval_s": 60, "history_days": 2}
    config = write_config(tmp_path, market, price="0.25", windows=2, meter=meter)
    daemon = trading(config, tmp_path / "run.log", alice)
    try:
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.close()
    store = tmp_path / "state" / "flexbot.db"
    damage_the_middle(store)  # the daemon's last close left everything in the file
    again = flexbot("run", "--config", str(config))
    assert again.returncode == 2, again.stdout[-2000:] + again.stderr
    assert "Traceback" not in again.stdout + again.stderr
    assert "the store is damaged" in again.stderr
    assert f"sqlite3 {store} .recover" in again.stderr
