"""`flexbot run` as a real subprocess against a sandbox subprocess: it trades, logs JSON, reloads
its config on SIGHUP (keeping the old one when the new one is invalid), stops cleanly on SIGTERM,
and never logs the password."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from flexbot import model, wire
from flexbot.strategy import Window, flat_baseline
from tests.processes import (
    ADMIN_HEADERS,
    READY_S,
    ROOT,
    Market,
    child_env,
    free_port,
    logged_in,
    sandbox_process,
)

pytestmark = pytest.mark.slow

STOP_S = 20.0


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    with sandbox_process(tmp_path_factory.mktemp("sandbox"), "--rate-limit", "off") as running:
        yield running


def write_config(
    root: Path, market: Market, limit_price: float, metrics_port: int | None = None
) -> Path:
    (root / "strategies").mkdir(exist_ok=True)
    config = {
        "market": {
            "url": market.url,
            "username": "alice",
            "password": "${FLEXBOT_PASSWORD}",
            "clock": "sandbox",
        },
        "store": {"path": "state/flexbot.db"},
        "strategies": {"config_dir": "strategies", "code_dir": str(ROOT / "strategies")},
        "engine": {"resolve_interval_s": 0.5},
        "logging": {"format": "json"},
    }
    if metrics_port is not None:
        config["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
    (root / "flexbot.yaml").write_text(yaml.safe_dump(config))
    write_buyer(root, {"limit_price": limit_price, "power_w": 10000, "lead_s": 0})
    return root / "flexbot.yaml"


def write_buyer(root: Path, params: dict[str, Any]) -> None:
    buyer = {
        "module": "buyer",
        "class": "FlexBuyer",
        "location": {"location_id": ["site-1"], "country_code": "DE"},
        "params": params,
    }
    (root / "strategies" / "buyer.yaml").write_text(yaml.safe_dump(buyer))


class Bob:
    """The counterparty, over plain HTTP."""

    def __init__(self, market: Market) -> None:
        self.http = logged_in(market, "bob")

    def window(self, index: int) -> Window:
        now = wire.parse_datetime(self.http.get("/sandbox/clock").json()["now"])
        return Window.upcoming(now, index + 1, lead_s=300)[index]

    def sell(self, power_w: int, price: float, window: Window) -> str:
        now = wire.parse_datetime(self.http.get("/sandbox/clock").json()["now"])
        request = model.OrderRequest(
            side=model.Side.SELL,
            power=Decimal(power_w),
            price=Decimal(str(price)),
            delivery_start=window.start,
            delivery_end=window.end,
            expiry_time=window.start - (window.end - window.start),
            location=model.Location(location_id=("bob-site",), country_code="DE"),
            baseline=flat_baseline(window, Decimal(20000), created_at=now),
        )
        response = self.http.post("/api/v1/order/", json=wire.unstructure(request))
        response.raise_for_status()
        order_id: str = response.json()["order_id"]
        return order_id

    def status(self, order_id: str) -> str:
        status: str = self.http.get(f"/api/v1/order/{order_id}").json()["status"]
        return status


class Daemon:
    def __init__(self, config: Path, out: Path) -> None:
        self.out = out
        with out.open("wb") as stdout:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flexbot.cli", "run", "--config", str(config)],
                stdout=stdout,
                stderr=subprocess.STDOUT,
                env=child_env(FLEXBOT_PASSWORD="alice-pw"),
                cwd=ROOT,
            )

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def wait_for(self, what: Callable[[dict[str, Any]], bool], bound: float = READY_S) -> None:
        deadline = time.monotonic() + bound
        while not any(what(e) for e in self.events()):
            if self.process.poll() is not None:
                code = self.process.returncode
                pytest.fail(f"flexbot run exited {code}:\n{self.out.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"not seen within {bound} s:\n{self.out.read_text()[-3000:]}")
            time.sleep(0.05)

    def wait_event(self, name: str, **fields: Any) -> None:
        self.wait_for(lambda e: e.get("event") == name and fields.items() <= e.items())


def until(condition: Callable[[], bool], bound: float = READY_S) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_the_daemon_trades_reloads_on_sighup_and_stops_on_sigterm(
    market: Market, tmp_path: Path
) -> None:
    config = write_config(tmp_path, market, limit_price=0.30)
    daemon = Daemon(config, tmp_path / "run.log")
    bob = Bob(market)
    try:
        daemon.wait_event("daemon.ready")
        first = bob.sell(2000, 0.25, bob.window(1))
        until(lambda: bob.status(first) == "filled")
        daemon.wait_event("order.filled", strategy="buyer")

        # A valid change applies at once: the limit drops to 0.20.
        write_buyer(tmp_path, {"limit_price": 0.20, "power_w": 10000, "lead_s": 0})
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_event("config.reloaded", strategy="buyer")
        window = bob.window(2)
        dear = bob.sell(1000, 0.25, window)
        cheap = bob.sell(1000, 0.18, window)
        until(lambda: bob.status(cheap) == "filled")
        assert bob.status(dear) == "matching_active"

        # An invalid change is reported, and the running config stays.
        write_buyer(tmp_path, {"limit_price": "cheap"})
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_event("config.reload_failed")
        assert daemon.process.poll() is None

        daemon.process.send_signal(signal.SIGTERM)
        status = daemon.process.wait(timeout=STOP_S)
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
    assert status == 0
    events = daemon.events()  # every line is JSON (this parses each)
    names = [e["event"] for e in events]
    assert names.index("daemon.stopping") < names.index("engine.cancelled_on_shutdown")
    assert names[-1] == "daemon.stopped"
    failed = next(e for e in events if e["event"] == "config.reload_failed")
    assert any("$.params.limit_price" in line for line in failed["problems"])
    text = daemon.out.read_text()
    assert "alice-pw" not in text
    assert "Bearer " not in text  # no Authorization header, no token, ever
    assert not any("token" in key for e in events for key in e if key != "event")
    # `flexbot status` reads what happened from the store (the buyer's valid config back first).
    write_buyer(tmp_path, {"limit_price": 0.20, "power_w": 10000, "lead_s": 0})
    shown = subprocess.run(
        [sys.executable, "-m", "flexbot.cli", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        env=child_env(FLEXBOT_PASSWORD="alice-pw"),
        cwd=ROOT,
        timeout=READY_S,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "buyer            FlexBuyer v1, live" in shown.stdout
    assert "recent fills (2 in all)" in shown.stdout
    assert "kill switch: not engaged" in shown.stdout


def test_signals_during_start_up_stop_cleanly_and_keep_the_kill_switch(
    market: Market, tmp_path: Path
) -> None:
    """Found by bench/startup.py: signals were handled only from READY on, so a SIGTERM while
    starting killed the process by the default action. Now, while it still cannot log in, a
    SIGUSR1 latches the kill switch in the store and a SIGTERM abandons the start-up, exit 0;
    the next run starts with the kill switch engaged."""
    config = write_config(tmp_path, market, limit_price=0.30)
    faults = f"{market.url}/sandbox/faults"
    httpx.post(
        faults, json={"token_fail_for": 60}, headers=ADMIN_HEADERS, timeout=5
    ).raise_for_status()
    try:
        daemon = Daemon(config, tmp_path / "first.log")
        try:
            daemon.wait_event("auth.token_failed")  # still logging in
            daemon.process.send_signal(signal.SIGUSR1)
            daemon.process.send_signal(signal.SIGTERM)  # at once: the latch must still be set
            status = daemon.process.wait(timeout=STOP_S)
        finally:
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait()
        assert status == 0
        names = [e["event"] for e in daemon.events()]
        assert "killswitch.latched" in names
        assert daemon.events()[-1]["event"] == "daemon.stopped"
        assert daemon.events()[-1]["during"] == "start-up"
    finally:
        httpx.post(
            faults, json={"token_fail_for": 0}, headers=ADMIN_HEADERS, timeout=5
        ).raise_for_status()
    again = Daemon(config, tmp_path / "second.log")
    try:
        again.wait_event("daemon.ready")
        names = [e["event"] for e in again.events()]
        assert names.index("killswitch.engaged") < names.index("daemon.ready")
        again.process.send_signal(signal.SIGTERM)
        assert again.process.wait(timeout=STOP_S) == 0
    finally:
        if again.process.poll() is None:
            again.process.kill()
            again.process.wait()


def test_the_daemon_speaks_the_systemd_notify_protocol(market: Market, tmp_path: Path) -> None:
    """Under a (fake) systemd: READY once up, WATCHDOG pings while it runs, STOPPING on SIGTERM,
    in that order, over an abstract socket name. Its Prometheus endpoint answers meanwhile."""
    name = f"flexbot-test-{tmp_path.name}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(READY_S)
        port = free_port()
        config = write_config(tmp_path, market, limit_price=0.10, metrics_port=port)
        out = tmp_path / "run.log"
        with out.open("wb") as stdout:
            process = subprocess.Popen(
                [sys.executable, "-m", "flexbot.cli", "run", "--config", str(config)],
                stdout=stdout,
                stderr=subprocess.STDOUT,
                env=child_env(
                    FLEXBOT_PASSWORD="alice-pw", NOTIFY_SOCKET=f"@{name}", WATCHDOG_USEC="200000"
                ),
                cwd=ROOT,
            )
        try:
            messages: list[str] = []
            while sum(m == "WATCHDOG=1" for m in messages) < 3:
                messages.append(sock.recv(4096).decode())
            scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            process.send_signal(signal.SIGTERM)
            while "STOPPING=1" not in messages:
                messages.append(sock.recv(4096).decode())
            assert process.wait(timeout=STOP_S) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    kinds = [m.split("=")[0] for m in messages if not m.startswith("STATUS=")]
    assert kinds[0] == "READY"
    assert "STATUS=" in messages[0]  # READY carries the first status line
    assert kinds.index("STOPPING") > max(i for i, k in enumerate(kinds) if k == "WATCHDOG") - 1
    assert kinds.count("READY") == 1
    for family in (
        'flexbot_orders{state="open",strategy="buyer"}',
        "flexbot_order_events_total",
        'flexbot_ws_connected{endpoint="trade"} 1.0',
        "flexbot_token_grants_total",
        "flexbot_outbox_pending",
        "# TYPE flexbot_rest_request_seconds histogram",
        'flexbot_alarms{alarm="stream_silent"} 0.0',
    ):
        assert family in scraped, family
