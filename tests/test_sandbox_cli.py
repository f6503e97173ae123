"""`flexbot sandbox` as a user runs it: a real subprocess, real sockets, real signals.

Readiness is polled (the banner on stderr and the port accepting connections) under a bounded
deadline; nothing here sleeps a fixed time to synchronise.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from tests.processes import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CLIENT_ID = "glocalflexmarket_public_api"
USERS = {"alice": "alice-pw", "bob": "bob-pw"}
READY_S = 15  # generous: the interpreter and its imports start on a shared CI machine
STOP_S = 5


def sandbox_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "flexbot.cli", "sandbox", *args]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@attrs.define
class Child:
    process: trio.Process
    port: int
    stdout: Path
    stderr: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def out(self) -> str:
        return self.stdout.read_text()

    def err(self) -> str:
        return self.stderr.read_text()

    async def stop(self) -> int:
        """SIGTERM, then the exit status (failing if it takes more than a few seconds)."""
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(STOP_S):
            return await self.process.wait()


async def poll_until(condition: Callable[[], bool], timeout_s: float = READY_S) -> None:
    """Re-check `condition` every few ms until it holds; fail after `timeout_s`."""
    with trio.fail_after(timeout_s):
        while True:
            if condition():
                return
            await trio.sleep(0.02)


async def _wait_ready(child: Child) -> None:
    """Until the banner is on stderr and the port accepts connections, or fail."""
    with trio.move_on_after(READY_S):
        while True:
            if child.process.poll() is not None:
                pytest.fail(f"sandbox exited with {child.process.returncode}: {child.err()}")
            if "listening on" in child.err():
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", child.port)
                except OSError:
                    pass
                else:
                    await stream.aclose()
                    return
            await trio.sleep(0.02)
    pytest.fail(f"sandbox not ready after {READY_S} s: {child.err()}")


@asynccontextmanager
async def running_sandbox(tmp_path: Path, *args: str) -> AsyncIterator[Child]:
    port = free_port()
    users = [f"--user={name}:{password}" for name, password in USERS.items()]
    argv = sandbox_argv("--port", str(port), *users, "--log-format", "json", *args)
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            argv, stdout=stdout, stderr=stderr, env=child_env(), cwd=Path(__file__).parents[1]
        )
    child = Child(process=process, port=port, stdout=out, stderr=err)
    try:
        await _wait_ready(child)
        yield child
    finally:
        if process.poll() is None:
            process.kill()
            with trio.move_on_after(STOP_S):
                await process.wait()


async def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(READY_S):
        return await trio.run_process(
            sandbox_argv(*args),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=child_env(),
        )


def assert_one_line_error(stderr: str) -> str:
    """The error a user reads: one line, no traceback. argparse may put its usage synopsis
    (a `usage:` line and indented continuations) before it."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    message = [line for line in lines if not line.startswith(("usage:", " "))]
    assert len(message) == 1, stderr
    assert message[0].startswith("flexbot sandbox: "), stderr
    return message[0]


# --- helpers for the quick start ------------------------------------------------------------------


def fmt(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ceil_quarter(dt: datetime) -> datetime:
    floor = dt.replace(minute=dt.minute - dt.minute % 15, second=0, microsecond=0)
    return floor if floor == dt else floor + timedelta(minutes=15)


async def token(http: httpx.AsyncClient, user: str) -> dict[str, Any]:
    form = f"client_id={CLIENT_ID}&grant_type=password&username={user}&password={USERS[user]}"
    r = await http.post(
        "/auth/oauth/v2/token",
        content=form.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def meter_reading(
    start: datetime, end: datetime, kwh: float = 0.25, metering_id: str = "m-1"
) -> dict[str, Any]:
    steps = int((end - start) / timedelta(minutes=15))
    return {
        "metering_id": metering_id,
        "created_at": fmt(start - timedelta(hours=1)),
        "reading_start": fmt(start),
        "reading_end": fmt(end),
        "resolution": 900,
        "unit_measured": "kWh",
        "data_points": [
            {"timestamp": fmt(start + timedelta(minutes=15 * (i + 1))), "value": kwh}
            for i in range(steps)
        ],
    }


# --- the quick start against a real process -------------------------------------------------------

# The quick start runs a trade through to its settlement. Market time runs 3600 times as fast as the
# wall clock, so one market hour is one wall second: the orders expire 1.5 market hours ahead (1.5 s
# of wall time for the requests before it, far more than they need), and the quarter-hour delivery
# window after that has ended about 2 s after the start. Metering is taken for 10 market hours after
# the delivery end (10 s of wall time) and settlement follows 60 market seconds after verification.
TIME_SCALE = 3600
EXPIRY_AHEAD = timedelta(hours=1, minutes=30)
METERING_DEADLINE_S = 36_000
SETTLEMENT_DELAY_S = 60


async def market_now(http: httpx.AsyncClient) -> datetime:
    r = await http.get("/sandbox/clock")
    assert r.status_code == 200, r.text
    return parse_ts(r.json()["now"])


async def test_quick_start_against_the_cli_sandbox_then_sigterm_exits_cleanly(
    tmp_path: Path,
) -> None:
    args = [
        "--rate-limit",
        "50/1",
        "--time-scale",
        str(TIME_SCALE),
        "--metering-deadline",
        str(METERING_DEADLINE_S),
        "--settlement-delay",
        str(SETTLEMENT_DELAY_S),
    ]
    async with running_sandbox(tmp_path, *args) as child:
        tokens: list[str] = []
        sent: list[httpx.Request] = []

        async def count(request: httpx.Request) -> None:
            sent.append(request)

        hooks = {"request": [count]}
        async with httpx.AsyncClient(
            base_url=child.base_url, timeout=10, event_hooks=hooks
        ) as http:
            # Every time comes from the sandbox's market clock, never from ours.
            now = await market_now(http)
            expiry = now + EXPIRY_AHEAD
            start = ceil_quarter(expiry + timedelta(minutes=1))
            end = start + timedelta(minutes=15)

            def order(side: str, power: float, price: float) -> dict[str, Any]:
                return {
                    "side": side,
                    "power": power,
                    "price": price,
                    "delivery_start": fmt(start),
                    "delivery_end": fmt(end),
                    "expiry_time": fmt(expiry),
                    "location": {"location_id": [None], "country_code": "DE"},
                }

            auth = {}
            for user in USERS:
                issued = await token(http, user)
                tokens += [issued["access_token"], issued["refresh_token"]]
                auth[user] = {"Authorization": f"Bearer {issued['access_token']}"}
            alice, bob = auth["alice"], auth["bob"]

            sell_body = order("sell", 1000.0, 0.30) | {"baseline": meter_reading(start, end)}
            r = await http.post("/api/v1/order/", json=sell_body, headers=alice)
            assert r.status_code == 200, r.text
            sell = r.json()
            assert sell["status"] == "matching_active"

            r = await http.post("/api/v1/order/", json=order("buy", 2000.0, 0.40), headers=bob)
            assert r.status_code == 200, r.text
            buy = r.json()
            assert buy["status"] == "partial_filled"
            (contract,) = buy["contracts"]
            assert contract["sell_order_id"] == sell["order_id"]
            assert contract["price"] == 0.30
            assert contract["energy"] == 250.0  # 1000 W for a quarter hour, in Wh
            assert contract["status"] == "created"

            r = await http.get(f"/api/v1/order/{buy['order_id']}", headers=bob)
            assert r.status_code == 200
            assert r.json() == buy

            r = await http.delete(f"/api/v1/order/{buy['order_id']}", headers=bob)
            assert r.status_code == 200
            assert r.json()["status"] == "cancelled"

            r = await http.post("/api/v1/order", json=order("sell", 500.0, 0.35), headers=alice)
            waiting = r.json()
            assert waiting["status"] == "awaiting_baseline_data"
            baseline = {
                "order_id": waiting["order_id"],
                "measurement_type": "baseline",
                "metering_data": meter_reading(start, end),
            }
            r = await http.post("/api/v1/verification/metering", json=baseline, headers=alice)
            assert r.status_code == 200, r.text
            r = await http.get(f"/api/v1/order/{waiting['order_id']}", headers=alice)
            assert r.json()["status"] == "matching_active"

            # The seller meters the delivery: the whole promised kilowatt was shed.
            metering = {
                "order_id": sell["order_id"],
                "measurement_type": "metering",
                "metering_data": meter_reading(start, end, kwh=0.0, metering_id="m-2"),
            }
            # Too early while the delivery is still ahead: 422 at measurement_type.
            r = await http.post("/api/v1/verification/metering", json=metering, headers=alice)
            assert r.status_code == 422, r.text
            assert r.json()["detail"][0]["loc"] == ["body", "measurement_type"]
            with trio.fail_after(READY_S):
                while True:
                    if await market_now(http) >= end:
                        break
                    await trio.sleep(0.02)
            r = await http.post("/api/v1/verification/metering", json=metering, headers=alice)
            assert r.status_code == 200, r.text
            assert r.json() == {
                "order_id": sell["order_id"],
                "measurement_type": "metering",
                "status": "received",
            }
            # Verified at once; paid after the settlement delay: price x delivered energy.
            with trio.fail_after(READY_S):
                while True:
                    r = await http.get(f"/api/v1/order/{sell['order_id']}", headers=alice)
                    assert r.status_code == 200, r.text
                    (settled,) = r.json()["contracts"]
                    if settled["status"] != "settlement_initiated":
                        break
                    await trio.sleep(0.05)
            assert settled["status"] == "settlement_completed_success", settled
            assert settled["verification_result"]["status"] == "completed_success"
            assert settled["verification_result"]["result"]["delivered"] == 0.25
            assert settled["settlement"]["amount_eur"] == pytest.approx(0.075)

            r = await http.get("/api/v1/order", headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
        # Every request's log line is written after its response: wait for the last one.
        await poll_until(lambda: '"status":401' in child.out())

        assert await child.stop() == 0

    stdout, stderr = child.out(), child.err()
    events = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    names = [e["event"] for e in events]
    assert "sandbox.started" in names
    assert names.index("sandbox.started") < names.index("http.request")
    assert names[-2:] == ["sandbox.stopping", "sandbox.stopped"]
    assert events[-2]["signal"] == "SIGTERM"
    requests = [e for e in events if e["event"] == "http.request"]
    assert len(requests) == len(sent)
    for e in requests:
        assert {"method", "path", "status", "user", "ms", "timestamp", "level"} <= set(e)
        assert isinstance(e["ms"], int | float)
    seen = [(e["method"], e["path"], e["status"], e["user"]) for e in requests]
    assert ("POST", "/auth/oauth/v2/token", 200, "alice") in seen
    assert ("POST", "/api/v1/order/", 200, "bob") in seen
    assert ("DELETE", f"/api/v1/order/{buy['order_id']}", 200, "bob") in seen
    assert ("POST", "/api/v1/verification/metering", 422, "alice") in seen
    assert ("POST", "/api/v1/verification/metering", 200, "alice") in seen
    assert ("GET", "/api/v1/order", 401, None) in seen
    assert "Traceback" not in stdout + stderr
    for secret in [*USERS.values(), "Bearer wrong", *tokens]:
        assert secret not in stdout
        assert secret not in stderr


async def test_tls_banner_names_the_ca_and_a_client_trusting_it_succeeds(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    async with running_sandbox(tmp_path, "--tls", "--tls-dir", str(tls_dir)) as child:
        match = re.search(r"TLS: trust (\S+)", child.err())
        assert match, child.err()
        ca = Path(match.group(1))
        assert ca == tls_dir / "ca.pem"
        assert await trio.Path(ca).is_file()
        assert f"https://127.0.0.1:{child.port}" in child.err()

        context = ssl.create_default_context(cafile=str(ca))
        base = f"https://127.0.0.1:{child.port}"
        async with httpx.AsyncClient(base_url=base, verify=context, timeout=10) as https:
            issued = await token(https, "alice")
            r = await https.get(
                "/api/v1/order/", headers={"Authorization": f"Bearer {issued['access_token']}"}
            )
            assert r.status_code == 200
            assert r.json() == []
        async with httpx.AsyncClient(base_url=base, timeout=10) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get("/sandbox/clock")

        assert await child.stop() == 0


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--user", "nocolon"], "NAME:PASSWORD"),
        (["--user", ":pw"], "NAME:PASSWORD"),
        (["--rate-limit", "abc"], "rate"),
        (["--rate-limit", "10/0"], "rate"),
        (["--time-scale", "0"], "greater than 0"),
        (["--token-ttl", "soon"], "whole number"),
        (["--port", "http"], "--port"),
        (["--cert", "x"], "--cert and --key"),
        (["--tls", "--key", "k.pem"], "--cert and --key"),
        (["--tls", "--cert", "missing.pem", "--key", "missing.key"], "no such file"),
        (["--cert", "c.pem", "--key", "k.pem"], "need --tls"),
        (["--gate-closure", "-5"], "--gate-closure"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
async def test_bad_cli_input_is_a_one_line_error_with_status_2(
    args: list[str], needle: str
) -> None:
    done = await run_cli(*args)

    assert done.returncode == 2
    message = assert_one_line_error(done.stderr.decode())
    assert needle in message
    assert done.stdout == b""


async def test_a_taken_port_exits_nonzero_without_a_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = await run_cli("--port", str(taken.getsockname()[1]))

    assert done.returncode not in (0, None)
    assert_one_line_error(done.stderr.decode())
    assert "Traceback" not in done.stdout.decode()


async def test_a_taken_port_error_says_the_address_is_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = await run_cli("--port", str(port))

    message = assert_one_line_error(done.stderr.decode())
    assert "address already in use" in message.lower(), message


# --- time scale -----------------------------------------------------------------------------------


async def test_time_scale_makes_market_time_run_faster_than_wall_time(tmp_path: Path) -> None:
    async with running_sandbox(tmp_path, "--time-scale", "60") as child:
        async with httpx.AsyncClient(base_url=child.base_url, timeout=10) as http:
            before_first = time.monotonic()
            first = (await http.get("/sandbox/clock")).json()
            after_first = time.monotonic()
            assert first["time_scale"] == 60
            market0 = parse_ts(first["now"])
            # Poll (bounded) until a market minute has gone by: about one wall second at x60.
            with trio.fail_after(READY_S):
                while True:
                    before_last = time.monotonic()
                    market = parse_ts((await http.get("/sandbox/clock")).json()["now"])
                    after_last = time.monotonic()
                    if market - market0 >= timedelta(minutes=1):
                        break
                    await trio.sleep(0.05)
        # The server read its clock twice, somewhere between our send and receive of each
        # request: the wall time between its readings lies within [inner, outer] whatever the
        # latency, so market time ran 60 times as fast when market_s / 60 lies within it too.
        market_s = (market - market0).total_seconds()
        inner, outer = before_last - after_first, after_last - before_first
        assert inner * 0.95 <= market_s / 60 <= outer * 1.05, (market_s, inner, outer)
        # Market time started at the real time and has since run ahead of it.
        assert market > datetime.now(market.tzinfo) + timedelta(seconds=30)
        assert await child.stop() == 0
