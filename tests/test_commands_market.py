"""`flexbot orders …` and `flexbot watch …` as an operator runs them: real subprocesses against a
sandbox subprocess on a free loopback port (market time = wall time at --time-scale 1).

Readiness is polled (the banner on stderr, the port accepting connections, the first line of a
watch) under bounded deadlines; nothing sleeps a fixed time to synchronise.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from tests.processes import (
    ADMIN_HEADERS,
    READY_S,
    ROOT,
    Market,
    child_env,
    default_sigint,
    sandbox_process,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

RUN_S = 20
UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
DEAD_URL = "http://127.0.0.1:9"  # for commands that must fail before connecting anywhere
PLACE = ["--side", "buy", "--power", "1000", "--price", "0.2", "--location-id", "meter-1"]


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    """One sandbox subprocess for the module, with alice and bob and no rate limit."""
    with sandbox_process(tmp_path_factory.mktemp("sandbox"), "--rate-limit", "off") as running:
        yield running


@attrs.frozen
class Result:
    status: int
    stdout: str
    stderr: str

    def lines(self) -> list[str]:
        """stdout without the log lines (JSON objects with an `event`) that share it."""
        return [line for line in self.stdout.splitlines() if line.strip() and not _is_log(line)]


def _is_log(line: str) -> bool:
    try:
        data = json.loads(line)
    except ValueError:
        return False
    return isinstance(data, dict) and "event" in data


async def flexbot(*args: str, **env: str) -> Result:
    with trio.fail_after(RUN_S):
        done = await trio.run_process(
            [sys.executable, "-m", "flexbot.cli", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=child_env(**env),
            cwd=ROOT,
        )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


async def as_alice(market: Market, *args: str) -> Result:
    return await flexbot(*args, "--url", market.url, "--user", "alice", FLEXBOT_PASSWORD="alice-pw")


def one_line_error(result: Result, prefix: str) -> str:
    """The error a user reads: one line on stderr, no traceback (argparse's usage lines aside)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    message = [line for line in lines if not line.startswith(("usage:", " "))]
    assert len(message) == 1, result.stderr
    assert message[0].startswith(prefix), result.stderr
    return message[0]


def sandbox_orders(market: Market) -> dict[str, dict[str, Any]]:
    orders = httpx.get(f"{market.url}/sandbox/orders", timeout=5).json()
    return {o["order_id"]: o for o in orders}


# --- orders ---------------------------------------------------------------------------------------


async def test_orders_place_list_show_cancel_and_cancel_all_round_trip(market: Market) -> None:
    placed = []
    for price in ("0.2", "0.21"):
        args = [*PLACE[:4], "--price", price, *PLACE[6:]]
        result = await as_alice(
            market, "orders", "place", *args, "--start", "+2h", "--duration", "1h"
        )
        assert result.status == 0, result.stderr
        [line] = result.lines()
        assert "matching_active" in line
        match = UUID.search(line)
        assert match is not None, line
        placed.append(match[0])
    truth = sandbox_orders(market)
    assert [truth[i]["owner"] for i in placed] == ["alice", "alice"]
    first = truth[placed[0]]
    start = first["delivery_start"]
    assert start.endswith(("00:00Z", "15:00Z", "30:00Z", "45:00Z"))  # rounded up to the grid
    assert first["power"] == 1000
    assert first["location"] == {"location_id": ["meter-1"], "country_code": ""}

    listed = await as_alice(market, "orders", "list")
    assert listed.status == 0, listed.stderr
    header, *lines = listed.lines()
    assert header.endswith("open orders (the journal and the market's listing)")
    rows = {m[0]: line for line in lines if (m := UUID.search(line))}
    assert len(rows) == len(lines)  # one order a line
    assert set(placed) <= set(rows)  # (other tests may have left orders of alice's too)
    assert all("matching_active" in rows[i] for i in placed)

    shown = await as_alice(market, "orders", "show", placed[0])
    assert shown.status == 0, shown.stderr
    body = json.loads("\n".join(shown.lines()))
    assert body["order_id"] == placed[0]
    assert body["status"] == "matching_active"
    assert body["delivery_start"] == start

    cancelled = await as_alice(market, "orders", "cancel", placed[0])
    assert cancelled.status == 0, cancelled.stderr
    assert cancelled.lines() == [f"{placed[0]} cancelled"]

    again = await as_alice(market, "orders", "cancel", placed[0])
    assert again.status == 1
    assert "not cancelled" in again.stderr
    assert "final" in again.stderr
    assert "Traceback" not in again.stderr

    everything = await as_alice(market, "orders", "cancel-all")
    assert everything.status == 0, everything.stderr
    assert f"{placed[1]} cancelled" in everything.lines()
    assert f"{placed[0]} cancelled" not in everything.lines()  # only open orders are cancelled
    truth = sandbox_orders(market)
    assert {truth[i]["status"] for i in placed} == {"cancelled"}


@pytest.fixture(scope="module")
def real_like(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    """A sandbox answering GET /api/v1/order/ with 405, as the real market documents no listing."""
    logs = tmp_path_factory.mktemp("no-listing")
    with sandbox_process(logs, "--rate-limit", "off", "--no-listing") as running:
        yield running


async def test_list_and_cancel_all_work_from_the_journal_where_the_market_lists_nothing(
    real_like: Market, tmp_path: Path
) -> None:
    settings = {
        "market": {"url": real_like.url, "username": "alice", "password": "${FLEXBOT_PASSWORD}"},
        "store": {"path": "flexbot.db"},
    }
    config = tmp_path / "flexbot.yaml"
    config.write_text(json.dumps(settings))  # JSON is YAML
    env = {"FLEXBOT_PASSWORD": "alice-pw"}
    placed = []
    for price in ("0.2", "0.21"):
        args = [*PLACE[:4], "--price", price, *PLACE[6:], "--start", "+2h"]
        result = await flexbot("orders", "place", *args, "--config", str(config), **env)
        assert result.status == 0, result.stderr
        match = UUID.search(result.lines()[0])
        assert match is not None
        placed.append(match[0])
    # Without the journal there is nothing to name them: said, not a traceback.
    blind = await flexbot("orders", "list", "--url", real_like.url, "--user", "alice", **env)
    assert blind.status == 2
    assert "the market lists no orders" in blind.stderr
    assert "Traceback" not in blind.stderr
    listed = await flexbot("orders", "list", "--config", str(config), **env)
    assert listed.status == 0, listed.stderr
    header, *lines = listed.lines()
    assert header == "2 open orders (the journal)"
    assert {m[0] for line in lines if (m := UUID.search(line))} == set(placed)
    everything = await flexbot("orders", "cancel-all", "--config", str(config), **env)
    assert everything.status == 0, everything.stderr
    assert sorted(everything.lines()) == sorted(f"{i} cancelled" for i in placed)
    truth = sandbox_orders(real_like)
    assert {truth[i]["status"] for i in placed} == {"cancelled"}
    empty = await flexbot("orders", "list", "--config", str(config), **env)
    assert empty.lines() == ["no open orders (the journal)"]


async def test_orders_show_of_an_unknown_order_says_what_the_market_said(market: Market) -> None:
    result = await as_alice(market, "orders", "show", "no-such-order")
    assert result.status == 1
    line = one_line_error(result, "flexbot orders show: the market said: ")
    assert "not found" in line


async def test_orders_place_with_a_lost_answer_says_the_order_may_exist(market: Market) -> None:
    async def faults(**changes: Any) -> None:
        async with httpx.AsyncClient(base_url=market.url, timeout=5) as http:
            r = await http.post("/sandbox/faults", json=changes, headers=ADMIN_HEADERS)
            assert r.status_code == 200, r.text

    before = len(sandbox_orders(market))
    await faults(ambiguous_rate=1.0, ambiguous_mode="504")
    try:
        result = await as_alice(market, "orders", "place", *PLACE, "--start", "+3h")
    finally:
        await faults(ambiguous_rate=0.0)
    assert result.status == 1
    # Without a config there is no daemon's journal to note the order in: it says so first.
    note, rest = result.stderr.split("\n", 1)
    assert "not journalled" in note
    line = one_line_error(attrs.evolve(result, stderr=rest), "flexbot orders place: ")
    assert "outcome is unknown" in line
    assert "flexbot orders list" in line  # look before placing it again
    assert result.lines() == []
    assert len(sandbox_orders(market)) == before + 1  # placed once, never resent


async def test_orders_with_a_wrong_password_is_a_one_line_error(market: Market) -> None:
    result = await flexbot(
        *("orders", "list", "--url", market.url, "--user", "alice"), FLEXBOT_PASSWORD="wrong"
    )
    assert result.status == 2
    line = one_line_error(result, "flexbot orders: ")
    assert "credentials" in line
    assert "wrong" not in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--start", "2030-01-07T10:07:00Z"], "$.delivery_start: must be on the 15-minute grid"),
        (["--start", "+2h", "--duration", "7m"], "--duration '7m': must be a positive multiple"),
        (["--start", "+2h", "--duration", "an hour"], "--duration 'an hour': expected e.g. 15m"),
        (["--start", "tomorrow"], "--start: "),
        (["--start", "+2h", "--expiry", "+3h"], "$.expiry_time: must be before delivery_start"),
        (["--start", "+2h", "--price", "cheap"], "--price 'cheap': not a number"),
        (["--start", "+2h", "--power", "-5"], "$.power: must be greater than 0"),
        (["--start", "+2h", "--country", "XX"], "$.location.country_code: must be one of"),
    ],
    ids=["off-grid", "duration-7m", "duration-words", "start", "expiry", "price", "power", "cc"],
)
async def test_orders_place_with_bad_input_is_a_one_line_error_and_exit_2(
    args: list[str], expected: str
) -> None:
    base = dict(zip(PLACE[::2], PLACE[1::2], strict=True))
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = [item for pair in base.items() for item in pair]
    result = await flexbot(
        *("orders", "place", *argv, "--url", DEAD_URL, "--user", "alice"),
        FLEXBOT_PASSWORD="alice-pw",
    )
    assert result.status == 2
    line = one_line_error(result, "flexbot orders: ")
    assert expected in line
    assert result.stdout == ""  # nothing was sent, not even a login


async def test_orders_without_a_user_is_a_one_line_error_and_exit_2() -> None:
    result = await flexbot(
        *("orders", "place", *PLACE, "--start", "+2h", "--url", DEAD_URL),
        FLEXBOT_PASSWORD="alice-pw",
    )
    assert result.status == 2
    assert "--user" in one_line_error(result, "flexbot orders: ")


async def test_orders_with_an_unreadable_password_file_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file"
    result = await flexbot(
        *("orders", "list", "--url", DEAD_URL, "--user", "alice", "--password-file", str(missing)),
    )
    assert result.status == 2
    assert str(missing) in one_line_error(result, "flexbot orders: ")


# --- watch ----------------------------------------------------------------------------------------


async def test_watch_orderbook_prints_the_book_and_stops_cleanly_on_sigint(
    market: Market, tmp_path: Path
) -> None:
    form = {
        "client_id": "glocalflexmarket_public_api",
        "grant_type": "password",
        "username": "bob",
        "password": "bob-pw",
    }
    async with httpx.AsyncClient(base_url=market.url, timeout=5) as http:
        token = (await http.post("/auth/oauth/v2/token", data=form)).json()["access_token"]
        now = time.time()
        start = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(now + 3 * 3600))
        end = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(now + 4 * 3600))
        expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 3600))
        order = {
            "side": "buy",
            "power": 1500.0,
            "price": 0.33,
            "delivery_start": start,
            "delivery_end": end,
            "expiry_time": expiry,
            "location": {"location_id": ["m"], "country_code": "FI"},
        }
        r = await http.post(
            "/api/v1/order", json=order, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200, r.text

    out, err = tmp_path / "stdout", tmp_path / "stderr"
    argv = [sys.executable, "-m", "flexbot.cli", "watch", "orderbook", "--url", market.url]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            argv, stdout=stdout, stderr=stderr, env=child_env(), cwd=ROOT, preexec_fn=default_sigint
        )
    try:
        with trio.fail_after(READY_S):
            # The whole book has been printed: its window line and its bid.
            while "1500 W @ 0.33" not in out.read_text():
                assert process.poll() is None, err.read_text()
                await trio.sleep(0.02)
        process.send_signal(signal.SIGINT)
        with trio.fail_after(5):
            status = await process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            await process.wait()
    assert status in (0, 130)
    assert "Traceback" not in err.read_text()
    assert "Traceback" not in out.read_text()
    text = "\n".join(line for line in out.read_text().splitlines() if not _is_log(line))
    # Other tests share this sandbox: look for bob's order, whatever else the book holds.
    assert re.search(r"^-- book: \d+ delivery windows --$", text, re.MULTILINE), text
    assert re.search(r"^ +1500 W @ 0\.33 +FI +\|", text, re.MULTILINE), text


async def test_watch_trade_without_credentials_is_a_clear_error_and_exit_2() -> None:
    result = await flexbot("watch", "trade", "--url", DEAD_URL)
    assert result.status == 2
    line = one_line_error(result, "flexbot watch: ")
    assert "FLEXBOT_PASSWORD" in line  # says what is missing and where to put it
    assert result.stdout == ""  # gave up before connecting


async def test_watch_trade_with_a_wrong_password_is_a_clear_error_and_exit_2(
    market: Market,
) -> None:
    result = await flexbot(
        *("watch", "trade", "--url", market.url, "--user", "alice"), FLEXBOT_PASSWORD="wrong"
    )
    assert result.status == 2
    line = one_line_error(result, "flexbot watch: ")
    assert "refused the credentials" in line
    assert "wrong" not in line


async def test_a_sell_placed_with_a_baseline_is_matchable_and_a_buy_cannot_have_one(
    market: Market,
) -> None:
    sell = ["--side", "sell", "--power", "1000", "--price", "0.9", "--location-id", "meter-1"]
    bare = await as_alice(market, "orders", "place", *sell, "--start", "+3h")
    assert bare.status == 0, bare.stderr
    assert "awaiting_baseline_data" in bare.lines()[0]  # never matched as it is
    based = await as_alice(
        market, "orders", "place", *sell, "--start", "+3h", "--baseline-w", "5000"
    )
    assert based.status == 0, based.stderr
    assert "matching_active" in based.lines()[0]
    match = UUID.search(based.lines()[0])
    assert match is not None
    order = sandbox_orders(market)[match[0]]
    assert order["baseline"] is not None
    refused = await as_alice(
        market, "orders", "place", *PLACE, "--start", "+3h", "--baseline-w", "1"
    )
    assert refused.status == 2
    one_line_error(refused, "flexbot orders: --baseline-w: only a sell has a baseline")
