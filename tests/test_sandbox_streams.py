"""The sandbox's WebSocket streams over real loopback connections (spec §4, §5, §6).

Every test runs the in-process sandbox of conftest.py and connects with trio-websocket (and, where
a client must misbehave at the protocol level, with a bare wsproto client). Market time is the
manual wall clock of the fixture; only WebSocket liveness (pings) and queue draining run on real
trio time, and every wait on them is bounded with `trio.fail_after` around the awaited event.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio
import wsproto
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

import flexbot.sandbox.streams as streams
from flexbot import model
from flexbot.sandbox.events import BookChanged
from flexbot.sandbox.market import MarketSettings
from flexbot.sandbox.server import ServerSettings
from flexbot.sandbox.streams import Channel
from tests.conftest import MARKET_START, USERS, Sandbox

pytestmark = pytest.mark.anyio

USERS3 = {**USERS, "carol": "carol-pw"}
TOKEN_PATH = "/auth/oauth/v2/token"
CLIENT_ID = "glocalflexmarket_public_api"
TIMEOUT = 5.0  # the bound on any single wait for a frame or a close

# One-hour delivery windows an hour and more ahead of the market start; expiry half an hour ahead.
START = "2026-11-23T11:00:00Z"
END = "2026-11-23T12:00:00Z"
START2 = "2026-11-23T13:00:00Z"
END2 = "2026-11-23T13:30:00Z"
EXPIRY = "2026-11-23T10:30:00Z"
CONTROL = {
    "type": "control",
    "status": "success",
    "data": {"message": "Connected to the WebSocket API"},
}


# --- settings -------------------------------------------------------------------------------------


@pytest.fixture
def market_settings() -> MarketSettings:
    # No rate limit: the manual wall clock never refills the buckets on its own.
    return MarketSettings(users=USERS3, seed=7, rate_limit=None)


@pytest.fixture
def server_settings(request: pytest.FixtureRequest) -> ServerSettings:
    """No server pings unless a test asks for them (parametrize indirectly with overrides)."""
    overrides: dict[str, Any] = getattr(request, "param", {})
    base: dict[str, Any] = {"port": 0, "graceful_timeout_s": 0.5, "ws_ping_interval_s": None}
    return ServerSettings(**(base | overrides))


def with_server(**overrides: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("server_settings", [overrides], indirect=True, ids=[""])


# --- helpers --------------------------------------------------------------------------------------


async def token(http: httpx.AsyncClient, user: str) -> str:
    form = {
        "client_id": CLIENT_ID,
        "grant_type": "password",
        "username": user,
        "password": USERS3[user],
    }
    r = await http.post(TOKEN_PATH, data=form)
    assert r.status_code == 200, r.text
    access: str = r.json()["access_token"]
    return access


async def bearer(http: httpx.AsyncClient, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {await token(http, user)}"}


def ws_url(sandbox: Sandbox, channel: str, slash: str = "") -> str:
    return f"{sandbox.running.ws_url}/api/v1/ws/{channel}{slash}"


@asynccontextmanager
async def connect(
    sandbox: Sandbox,
    channel: str,
    *,
    access_token: str | None = None,
    authorization: str | None = None,
    slash: str = "",
    **kwargs: Any,
) -> AsyncIterator[WebSocketConnection]:
    headers: list[tuple[str, str]] = []
    if access_token is not None:
        headers.append(("Authorization", f"Bearer {access_token}"))
    if authorization is not None:
        headers.append(("Authorization", authorization))
    async with open_websocket_url(
        ws_url(sandbox, channel, slash),
        extra_headers=headers,  # type: ignore[arg-type]  # wsproto takes str headers too
        **kwargs,
    ) as ws:
        yield ws


async def recv(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(TIMEOUT):
        message = await ws.get_message()
    data: dict[str, Any] = json.loads(message)
    return data


async def recv_until(
    ws: WebSocketConnection, done: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Every message up to and including the first for which `done` holds."""
    out: list[dict[str, Any]] = []
    with trio.fail_after(TIMEOUT):
        while True:
            out.append(json.loads(await ws.get_message()))
            if done(out[-1]):
                return out


async def connected(sandbox: Sandbox, channel: Channel, count: int) -> None:
    """Wait (bounded) until the hub has registered `count` connections on `channel`."""
    with trio.fail_after(TIMEOUT):
        # The hub exposes no event for this; poll it (each check is a checkpoint).
        while sandbox.running.hub.connections(channel) != count:  # noqa: ASYNC110
            await trio.sleep(0.005)


def meter_reading(start: str = START, end: str = END, kwh: float = 0.5) -> dict[str, Any]:
    """Quarter-hour points over the window, each stamped at the end of its interval (spec §7)."""
    t0, t1 = parse_ts(start), parse_ts(end)
    points = []
    t = t0
    while t < t1:
        t += timedelta(minutes=15)
        points.append({"timestamp": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": kwh})
    return {
        "metering_id": "meter-1",
        "created_at": "2026-11-23T10:00:00Z",
        "reading_start": start,
        "reading_end": end,
        "resolution": 900,
        "unit_measured": "kWh",
        "data_points": points,
    }


def order_body(
    side: str,
    power: float,
    price: float,
    *,
    start: str = START,
    end: str = END,
    expiry: str = EXPIRY,
    country: str = "DE",
    baseline: bool = True,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "side": side,
        "power": power,
        "price": price,
        "delivery_start": start,
        "delivery_end": end,
        "expiry_time": expiry,
        "location": {"location_id": ["loc-1"], "country_code": country},
    }
    if side == "sell" and baseline:
        body["baseline"] = meter_reading(start, end)
    return body


async def place(http: httpx.AsyncClient, auth: dict[str, str], body: Any) -> dict[str, Any]:
    r = await http.post("/api/v1/order/", json=body, headers=auth)
    assert r.status_code == 200, r.text
    order: dict[str, Any] = r.json()
    return order


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def is_order(order_id: str, name: str) -> Callable[[dict[str, Any]], bool]:
    def done(message: dict[str, Any]) -> bool:
        return bool(
            message["type"] == "order_status_update"
            and message["data"]["order_id"] == order_id
            and message["name"] == name
        )

    return done


def is_contract(name: str) -> Callable[[dict[str, Any]], bool]:
    def done(message: dict[str, Any]) -> bool:
        return bool(message["type"] == "contract_status_update" and message["name"] == name)

    return done


# --- the handshake and the first frames -----------------------------------------------------------


@pytest.mark.parametrize("slash", ["", "/"], ids=["no-slash", "slash"])
@pytest.mark.parametrize("channel", ["trade", "ticker", "orderbook"])
async def test_control_message_is_the_first_frame_and_orderbook_then_gets_a_snapshot(
    sandbox: Sandbox, http: httpx.AsyncClient, channel: str, slash: str
) -> None:
    alice = await bearer(http, "alice")
    resting = await place(http, alice, order_body("sell", 1000.0, 0.30))
    access = await token(http, "bob") if channel == "trade" else None

    async with connect(sandbox, channel, access_token=access, slash=slash) as ws:
        assert await recv(ws) == CONTROL
        if channel == "orderbook":
            snapshot = await recv(ws)
            assert snapshot["type"] == "orderbook_update"
            assert set(snapshot) == {"type", "created_at", "data"}
            assert snapshot["data"]["bids"] == {}
            [asks] = snapshot["data"]["asks"].values()
            assert [(a["side"], a["power"], a["price"]) for a in asks] == [("sell", 1000, 0.30)]
            assert asks[0]["delivery_start"] == resting["delivery_start"]
        # Nothing else was queued: the next frame is the one the next event causes (bob's buy
        # trades with alice's sell).
        await place(http, await bearer(http, "bob"), order_body("buy", 1000.0, 0.40))
        following = await recv(ws)
    assert (
        following["type"]
        == {
            "trade": "order_status_update",
            "ticker": "ticker_update",
            "orderbook": "orderbook_update",
        }[channel]
    )
    if channel == "trade":
        assert following["name"] == "accepted"
    if channel == "orderbook":
        assert following["data"] == {"bids": {}, "asks": {}}


@pytest.mark.parametrize("channel", ["ticker", "orderbook"])
@pytest.mark.parametrize(
    "authorization",
    [None, "valid", "Bearer not-a-token", "Basic YWxpY2U6YWxpY2UtcHc=", "Bearer"],
    ids=["none", "valid", "invalid", "basic", "empty-bearer"],
)
async def test_public_streams_accept_any_authorization_header_or_none(
    sandbox: Sandbox, http: httpx.AsyncClient, channel: str, authorization: str | None
) -> None:
    if authorization == "valid":
        authorization = f"Bearer {await token(http, 'alice')}"
    async with connect(sandbox, channel, authorization=authorization) as ws:
        assert await recv(ws) == CONTROL
        if channel == "orderbook":
            assert (await recv(ws))["type"] == "orderbook_update"
    assert sandbox.running.hub.stats["refused_unauthenticated"] == 0


@pytest.mark.parametrize("slash", ["", "/"], ids=["no-slash", "slash"])
@pytest.mark.parametrize(
    "credential", ["none", "invalid", "expired", "basic", "refresh-token"], ids=str
)
async def test_trade_refuses_a_missing_or_bad_token_at_the_handshake_with_401(
    sandbox: Sandbox, http: httpx.AsyncClient, credential: str, slash: str
) -> None:
    authorization: str | None
    if credential == "none":
        authorization = None
    elif credential == "invalid":
        authorization = "Bearer not-a-token"
    elif credential == "expired":
        authorization = f"Bearer {await token(http, 'alice')}"
        sandbox.advance(301)  # the access token lives 300 s
    elif credential == "basic":
        authorization = "Basic YWxpY2U6YWxpY2UtcHc="
    else:
        form = {"client_id": CLIENT_ID, "grant_type": "password"}
        r = await http.post(TOKEN_PATH, data=form | {"username": "alice", "password": "alice-pw"})
        authorization = f"Bearer {r.json()['refresh_token']}"

    with pytest.raises(ConnectionRejected) as rejected:
        async with connect(sandbox, "trade", authorization=authorization, slash=slash):
            pytest.fail("the handshake must not be accepted")  # pragma: no cover

    assert rejected.value.status_code == 401
    headers = {k.decode().lower(): v.decode() for k, v in rejected.value.headers}
    assert headers["www-authenticate"].lower().startswith("bearer")
    assert rejected.value.body is not None
    assert isinstance(json.loads(rejected.value.body)["detail"], str)
    hub = sandbox.running.hub
    assert hub.stats["refused_unauthenticated"] == 1
    assert hub.stats["connected_trade"] == 0  # refused before, not after, the accept
    assert hub.connections(Channel.TRADE) == 0


# --- /trade: each user's own order and contract updates -------------------------------------------


async def test_trade_stream_carries_only_the_users_own_orders_and_contracts(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    users = ("alice", "bob", "carol")
    auth = {u: await bearer(http, u) for u in users}
    tokens = {u: auth[u]["Authorization"].removeprefix("Bearer ") for u in users}

    async with (
        connect(sandbox, "trade", access_token=tokens["alice"]) as ws_alice,
        connect(sandbox, "trade", access_token=tokens["bob"]) as ws_bob,
        connect(sandbox, "trade", access_token=tokens["carol"]) as ws_carol,
    ):
        sockets = {"alice": ws_alice, "bob": ws_bob, "carol": ws_carol}
        for ws in sockets.values():
            assert await recv(ws) == CONTROL

        a1 = await place(http, auth["alice"], order_body("buy", 1000.0, 0.30))
        b1 = await place(http, auth["bob"], order_body("sell", 1000.0, 0.25))  # trades with a1
        c1 = await place(http, auth["carol"], order_body("sell", 500.0, 0.20, baseline=False))
        r = await http.post(
            "/api/v1/verification/baseline",
            json={
                "order_id": c1["order_id"],
                "measurement_type": "baseline",
                "metering_data": meter_reading(),
            },
            headers=auth["carol"],
        )
        assert r.status_code == 200, r.text
        b2 = await place(http, auth["bob"], order_body("buy", 500.0, 0.25))  # trades with c1
        a2 = await place(http, auth["alice"], order_body("buy", 700.0, 0.05))
        r = await http.delete(f"/api/v1/order/{a2['order_id']}", headers=auth["alice"])
        assert r.status_code == 200, r.text
        # A last order each: once its update arrives, everything before it has arrived too.
        sentinels = {
            u: await place(http, auth[u], order_body("buy", 100.0, 0.01, start=START2, end=END2))
            for u in users
        }

        received = {
            u: await recv_until(ws, is_order(sentinels[u]["order_id"], "matching_active"))
            for u, ws in sockets.items()
        }

    k1 = {c["contract_id"] for c in (await get_order(http, auth["bob"], b1))["contracts"]}
    k2 = {c["contract_id"] for c in (await get_order(http, auth["bob"], b2))["contracts"]}
    assert len(k1) == len(k2) == 1
    expected_orders = {
        "alice": {
            a1["order_id"]: ["accepted", "matching_active", "filled"],
            a2["order_id"]: ["accepted", "matching_active", "cancelled"],
        },
        "bob": {
            b1["order_id"]: ["accepted", "matching_active", "filled"],
            b2["order_id"]: ["accepted", "matching_active", "filled"],
        },
        "carol": {
            c1["order_id"]: ["awaiting_baseline_data", "accepted", "matching_active", "filled"],
        },
    }
    expected_contracts = {"alice": k1, "bob": k1 | k2, "carol": k2}
    for user in users:
        expected_orders[user][sentinels[user]["order_id"]] = ["accepted", "matching_active"]
        names: defaultdict[str, list[str]] = defaultdict(list)
        contracts: set[str] = set()
        for message in received[user]:
            assert set(message) == {"type", "name", "created_at", "data"}, message
            if message["type"] == "order_status_update":
                assert message["data"]["status"] == message["name"]
                names[message["data"]["order_id"]].append(message["name"])
            else:
                assert message["type"] == "contract_status_update", message
                assert message["name"] == message["data"]["status"] == "created"
                contracts.add(message["data"]["contract_id"])
        assert dict(names) == expected_orders[user], user
        assert contracts == expected_contracts[user], user


async def get_order(
    http: httpx.AsyncClient, auth: dict[str, str], order: dict[str, Any]
) -> dict[str, Any]:
    r = await http.get(f"/api/v1/order/{order['order_id']}", headers=auth)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def test_contract_lifecycle_events_reach_both_parties(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    async with (
        connect(sandbox, "trade", access_token=alice["Authorization"][7:]) as ws_alice,
        connect(sandbox, "trade", access_token=bob["Authorization"][7:]) as ws_bob,
    ):
        for ws in (ws_alice, ws_bob):
            assert await recv(ws) == CONTROL
        # Baseline 0.5 kWh per quarter hour is 2 kW; the sale is 1 kW of flexibility.
        sell = await place(http, alice, order_body("sell", 1000.0, 0.20))
        buy = await place(http, bob, order_body("buy", 1000.0, 0.30))

        sandbox.advance(2 * 3600 + 1)  # 12:00:01, past delivery end
        sandbox.market.tick()
        alice = await bearer(http, "alice")  # the first token has expired meanwhile
        # Metering 0.25 kWh per quarter hour: 1 kWh delivered of 1 kWh scheduled, 100 %.
        r = await http.post(
            "/api/v1/verification/metering",
            json={
                "order_id": sell["order_id"],
                "measurement_type": "metering",
                "metering_data": meter_reading(kwh=0.25),
            },
            headers=alice,
        )
        assert r.status_code == 200, r.text
        sandbox.advance(300)  # the settlement delay
        sandbox.market.tick()

        done = is_contract("settlement_completed_success")
        seen = {"alice": await recv_until(ws_alice, done), "bob": await recv_until(ws_bob, done)}

    lifecycle = [
        "created",
        "verification_initiated",
        "verification_completed_success",
        "settlement_initiated",
        "settlement_completed_success",
    ]
    for user, messages in seen.items():
        contract_updates = [m for m in messages if m["type"] == "contract_status_update"]
        assert [m["name"] for m in contract_updates] == lifecycle, user
        assert {m["data"]["contract_id"] for m in contract_updates} == {
            buy["contracts"][0]["contract_id"]
        }
        for m in contract_updates:
            assert m["data"]["sell_order_id"] == sell["order_id"]
            assert m["data"]["buy_order_id"] == buy["order_id"]
            assert m["data"]["status"] == m["name"]
        final = contract_updates[-1]["data"]
        assert final["verification_result"]["status"] == "completed_success"
        assert final["verification_result"]["result"]["delivered_percentage"] == 100
        assert final["settlement"]["status"] == "completed_success"
        assert final["settlement"]["amount_eur"] == pytest.approx(0.20)
    # The seller's order mirrors the verification; the buyer's order has none.
    alice_orders = [m for m in seen["alice"] if m["type"] == "order_status_update"]
    verifications = [
        m["data"]["verification"]["status"] for m in alice_orders if m["data"]["verification"]
    ]
    assert verifications == ["initiated", "completed_success"]
    bob_orders = [m for m in seen["bob"] if m["type"] == "order_status_update"]
    assert [m["name"] for m in bob_orders] == ["accepted", "matching_active", "filled"]
    assert all(m["data"]["verification"] is None for m in bob_orders)


# --- /ticker --------------------------------------------------------------------------------------


async def test_ticker_update_follows_each_trade_at_the_resting_orders_price(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    async with connect(sandbox, "ticker") as ws:
        assert await recv(ws) == CONTROL
        await place(http, alice, order_body("sell", 1000.0, 0.20))
        await place(http, alice, order_body("sell", 500.0, 0.25, country=""))
        # One buy takes both resting sells, best price first: two trades, two tickers.
        await place(http, bob, order_body("buy", 1500.0, 0.30))
        first, second = await recv(ws), await recv(ws)
        # A resting buy taken by an incoming sell trades at the buy's price.
        sandbox.advance(60)
        await place(http, bob, order_body("buy", 1000.0, 0.40, start=START2, end=END2))
        await place(http, alice, order_body("sell", 1000.0, 0.10, start=START2, end=END2))
        third = await recv(ws)

    now = MARKET_START
    expected = [
        (first, 0.20, 1000, 1000, START, END, "DE", now),
        (second, 0.25, 500, 500, START, END, "DE", now),  # the buyer's country fills the gap
        (third, 0.40, 1000, 500, START2, END2, "DE", now + timedelta(seconds=60)),
    ]
    for message, price, power, energy, start, end, country, closed_at in expected:
        assert message["type"] == "ticker_update"
        assert set(message) == {"type", "created_at", "data"}
        data = message["data"]
        assert data["price"] == price
        assert data["power"] == power
        assert data["energy"] == energy
        assert (data["delivery_start"], data["delivery_end"]) == (start, end)
        assert data["location"]["country_code"] == country
        assert data["location"]["location_id"] == ["loc-1"]
        assert parse_ts(data["closed_at"]) == closed_at
        assert parse_ts(message["created_at"]) == closed_at


@pytest.mark.parametrize("trigger", ["rest", "tick"])
async def test_expired_order_update_follows_an_expiry(
    sandbox: Sandbox, http: httpx.AsyncClient, trigger: str
) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")

    async def trigger_market() -> None:
        if trigger == "rest":
            r = await http.get("/sandbox/orders")
            assert r.status_code == 200
        else:
            sandbox.market.tick()

    async with connect(sandbox, "ticker") as ws:
        assert await recv(ws) == CONTROL
        await place(http, alice, order_body("buy", 1200.0, 0.15, expiry="2026-11-23T10:10:00Z"))
        await place(http, alice, order_body("sell", 800.0, 0.35, expiry="2026-11-23T10:20:00Z"))
        # A buy that fills in part, then expires with the rest.
        later: dict[str, Any] = {"start": START2, "end": END2, "expiry": "2026-11-23T10:20:00Z"}
        await place(http, bob, order_body("buy", 1500.0, 0.30, **later))
        await place(http, alice, order_body("sell", 1000.0, 0.20, **later))
        assert (await recv(ws))["type"] == "ticker_update"
        sandbox.advance(601)  # 10:10:01: only the first buy is due
        await trigger_market()
        first = await recv(ws)
        sandbox.advance(600)  # 10:20:01: the sell and the rest of the partly filled buy
        await trigger_market()
        second, third = await recv(ws), await recv(ws)

    for message, price, power, energy, window, expired_at in (
        (first, 0.15, 1200, 1200, (START, END), "2026-11-23T10:10:00Z"),
        (second, 0.35, 800, 800, (START, END), "2026-11-23T10:20:00Z"),
        (third, 0.30, 500, 250, (START2, END2), "2026-11-23T10:20:00Z"),
    ):
        assert message["type"] == "expired_order_update"
        assert set(message) == {"type", "created_at", "data"}
        data = message["data"]
        assert parse_ts(data["expired_at"]) == parse_ts(expired_at)
        assert data["price"] == price
        assert data["power"] == power  # what was left in the book
        assert data["energy"] == energy
        assert (data["delivery_start"], data["delivery_end"]) == window
        assert data["location"] == {"location_id": ["loc-1"], "country_code": "DE"}


# --- /orderbook -----------------------------------------------------------------------------------


def _entry_key(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True)


def expected_groups(orders: Sequence[dict[str, Any]]) -> dict[str, list[list[str]]]:
    """The book as `GET /sandbox/orders` says it should be: per (window, country) group and side,
    the resting orders in price-time priority, as canonical entry strings."""
    resting = [o for o in orders if o["status"] in ("matching_active", "partial_filled")]
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for o in resting:
        key = (o["side"], o["delivery_start"], o["delivery_end"], o["location"]["country_code"])
        groups[key].append(o)
    out: dict[str, list[list[str]]] = {"bids": [], "asks": []}
    for (side, start, end, _), members in groups.items():
        sign = -1 if side == "buy" else 1
        members.sort(key=lambda o: (sign * Decimal(str(o["price"])), parse_ts(o["created_at"])))
        hours = (parse_ts(end) - parse_ts(start)).total_seconds() / 3600
        entries = [
            _entry_key(
                {
                    "side": o["side"],
                    "power": o["remaining_power"],
                    "price": o["price"],
                    "delivery_start": o["delivery_start"],
                    "delivery_end": o["delivery_end"],
                    "location": o["location"],
                    "energy": o["remaining_power"] * hours,
                }
            )
            for o in members
        ]
        out["bids" if side == "buy" else "asks"].append(entries)
    return {side: sorted(lists) for side, lists in out.items()}


def check_book_shape(data: dict[str, Any]) -> None:
    assert set(data) == {"bids", "asks"}
    for side, wanted in (("bids", "buy"), ("asks", "sell")):
        groups = data[side]
        assert isinstance(groups, dict)
        for key, entries in groups.items():
            assert isinstance(key, str)
            assert key.isdigit(), key  # an opaque decimal-string group id (spec §4 [A])
            assert entries, "no empty groups"
            for e in entries:
                assert set(e) == {
                    "side",
                    "power",
                    "price",
                    "delivery_start",
                    "delivery_end",
                    "location",
                    "energy",
                }
                assert e["side"] == wanted
            # One group is one window and one country.
            assert len({(e["delivery_start"], e["delivery_end"]) for e in entries}) == 1
            assert len({e["location"]["country_code"] for e in entries}) == 1
            prices = [Decimal(str(e["price"])) for e in entries]
            assert prices == sorted(prices, reverse=side == "bids"), (side, prices)


async def test_orderbook_update_after_each_book_change_matches_the_market_state(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    group_ids: dict[tuple[str, str, str], str] = {}

    async def expect_update() -> dict[str, Any]:
        message = await recv(ws)
        assert message["type"] == "orderbook_update"
        assert set(message) == {"type", "created_at", "data"}
        data: dict[str, Any] = message["data"]
        check_book_shape(data)
        orders = (await http.get("/sandbox/orders")).json()
        flat = {
            side: sorted([_entry_key(e) for e in entries] for entries in data[side].values())
            for side in ("bids", "asks")
        }
        assert flat == expected_groups(orders)
        # A group keeps its id for as long as it exists.
        for side in ("bids", "asks"):
            for key, entries in data[side].items():
                e = entries[0]
                group = (e["delivery_start"], e["delivery_end"], e["location"]["country_code"])
                assert group_ids.setdefault(group, key) == key
        return data

    async with connect(sandbox, "orderbook") as ws:
        assert await recv(ws) == CONTROL
        assert (await recv(ws))["data"] == {"bids": {}, "asks": {}}

        steps: list[tuple[dict[str, str], dict[str, Any]]] = [
            (alice, order_body("buy", 1000.0, 0.20)),
            (alice, order_body("buy", 1100.0, 0.25)),
            (bob, order_body("buy", 1200.0, 0.20)),  # same price as the first: after it
            (alice, order_body("sell", 1300.0, 0.40)),
            (bob, order_body("sell", 1400.0, 0.35)),
            (bob, order_body("sell", 1500.0, 0.40)),  # same price as alice's sell: after it
            (alice, order_body("buy", 1600.0, 0.30, start=START2, end=END2, country="FR")),
            (bob, order_body("buy", 1700.0, 0.22, country="")),
            (alice, order_body("buy", 900.0, 0.20)),  # the third at 0.20, in time order
        ]
        placed = []
        for auth, body in steps:
            sandbox.advance(1)  # distinct creation times make time priority visible
            placed.append(await place(http, auth, body))
            await expect_update()
        # A cancel takes an order out.
        r = await http.delete(f"/api/v1/order/{placed[1]['order_id']}", headers=alice)
        assert r.status_code == 200
        await expect_update()
        # A buy that takes bob's 0.35 sell and rests with what is left (a partial fill).
        sandbox.advance(1)
        await place(http, alice, order_body("buy", 3000.0, 0.36))
        data = await expect_update()
        best_bid = max(
            (e for entries in data["bids"].values() for e in entries),
            key=lambda e: e["price"],
        )
        assert (best_bid["price"], best_bid["power"]) == (0.36, 1600)
        # A sell that takes the whole best bid it fits (1600 W at 0.36) leaves the book too.
        await place(http, bob, order_body("sell", 1600.0, 0.30))
        await expect_update()
        # Expiry empties the book.
        sandbox.advance(3600)
        sandbox.market.tick()
        data = await expect_update()
        assert data == {"bids": {}, "asks": {}}


# --- flow control: a slow client is cut off, the others are not slowed ----------------------------


@with_server(ws_queue_size=8)
async def test_a_client_that_never_reads_is_cut_off_and_the_others_get_everything(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    hub = sandbox.running.hub
    fill_book(sandbox)

    received: list[dict[str, Any]] = []
    got = trio.Condition()

    async with (
        connect(sandbox, "orderbook", message_queue_size=1) as slow,
        connect(sandbox, "orderbook", receive_buffer_size=None) as fast,
    ):

        async def read_fast() -> None:
            while True:
                message = json.loads(await fast.get_message())
                async with got:
                    received.append(message)
                    got.notify_all()

        async def until_received(count: int) -> None:
            async with got:
                while len(received) < count:
                    await got.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_fast)
            await connected(sandbox, Channel.ORDERBOOK, 2)
            with trio.fail_after(TIMEOUT):
                await until_received(2)  # control and snapshot
            published = 0
            with trio.fail_after(15):
                while not hub.stats["closed_overflow"]:
                    sandbox.advance(1)  # each snapshot carries a new created_at
                    hub.on_events([BookChanged()])
                    published += 1
                    # The reading client's server queue drains before the next message...
                    await until_received(2 + published)
                    assert published < 2000, "the slow client was never cut off"
            # ...and keeps receiving after the slow one is cut.
            for _ in range(5):
                sandbox.advance(1)
                hub.on_events([BookChanged()])
                published += 1
            with trio.fail_after(TIMEOUT):
                await until_received(2 + published)
            nursery.cancel_scope.cancel()

        assert hub.stats["closed_overflow"] == 1
        stats = (await http.get("/sandbox/stats")).json()
        assert stats["websocket"]["closed_overflow"] >= 1
        # The reading client got every message, in order, none twice, none malformed.
        assert received[0] == CONTROL
        stamps = [parse_ts(m["created_at"]) for m in received[1:]]
        assert stamps == [MARKET_START + timedelta(seconds=s) for s in range(published + 1)]
        assert all(m["type"] == "orderbook_update" for m in received[1:])

        # The slow client, reading at last, gets what was queued for it and then the close. This
        # is reliable: the server sends the frames it had queued, then closes with 1008; nothing
        # is discarded by the kernel, so the close frame always arrives after the data.
        frames: list[str | bytes] = []

        async def drain() -> None:
            while True:
                frames.append(await slow.get_message())

        with trio.fail_after(TIMEOUT), pytest.raises(ConnectionClosed) as closed:
            await drain()
        assert closed.value.reason is not None
        assert (closed.value.reason.code, closed.value.reason.reason) == (
            1008,
            "send queue overflow",
        )
        assert 2 <= len(frames) < 2 + published
    await connected(sandbox, Channel.ORDERBOOK, 0)


def fill_book(sandbox: Sandbox, orders: int = 1200) -> None:
    """A big book (about 0.4 MB a snapshot), so that a client that does not read fills its socket
    buffers in a few dozen messages. Placed on the engine directly: no snapshot is made meanwhile.
    """
    market = sandbox.market
    for i in range(orders):
        request = model.OrderRequest(
            side=model.Side.BUY,
            power=Decimal(1000 + i),
            price=Decimal("0.10") + Decimal(i) / 10000,
            delivery_start=parse_ts(START),
            delivery_end=parse_ts(END),
            expiry_time=parse_ts(EXPIRY),
            location=model.Location(location_id=(f"site-{i:06d}-padding",), country_code="DE"),
        )
        market.matcher.submit("alice", request, market.clock.now())


@with_server(ws_queue_size=8, ws_ping_interval_s=0.05, ws_missed_pongs=3, stall_timeout_s=0.5)
async def test_a_client_that_stops_reading_for_good_is_disconnected(sandbox: Sandbox) -> None:
    # Its socket buffers fill up and the server's write blocks; the kernel's stall timeout
    # (TCP_USER_TIMEOUT) is what cuts it off, since hypercorn shields that write from cancellation.
    hub = sandbox.running.hub
    fill_book(sandbox)
    async with RawClient.open(ws_url(sandbox, "orderbook")):  # reads nothing after the handshake
        await connected(sandbox, Channel.ORDERBOOK, 1)
        with trio.fail_after(TIMEOUT):
            # Until it is cut off (or, once this is fixed, possibly dropped even earlier).
            while not hub.stats["closed_overflow"] and hub.connections(Channel.ORDERBOOK):
                sandbox.advance(1)
                hub.on_events([BookChanged()])
                await trio.sleep(0.01)  # let the server write until the socket is full
        # Cut off (overflow), then dropped once the stalled write times out.
        with trio.fail_after(5.0):
            await connected(sandbox, Channel.ORDERBOOK, 0)


# --- liveness: pings ------------------------------------------------------------------------------


class RawClient:
    """A bare wsproto client that never answers pings: a peer whose pongs are lost."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.pings = 0
        self.messages: list[str] = []
        self.close: CloseConnection | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str) -> AsyncIterator[RawClient]:
        parts = urlsplit(url)
        assert parts.hostname is not None
        assert parts.port is not None
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
        async with stream:
            client = cls(stream, f"{parts.hostname}:{parts.port}")
            await client._send(Request(host=client.host, target=parts.path))
            with trio.fail_after(TIMEOUT):
                while not await client._pump(accept_only=True):
                    pass
            yield client

    async def _send(self, event: Any) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def _pump(self, *, accept_only: bool = False) -> bool:
        data = await self.stream.receive_some(65536)
        self.ws.receive_data(data or None)
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                return True
            if isinstance(event, RejectConnection):
                pytest.fail(f"handshake rejected with {event.status_code}")
            if isinstance(event, Ping):
                self.pings += 1  # and no pong
            elif isinstance(event, TextMessage):
                self.messages.append(event.data)
            elif isinstance(event, CloseConnection):
                self.close = event
                return True
        if not data:
            return True
        return False if accept_only else self.close is not None

    async def until_closed(self) -> CloseConnection | None:
        while not await self._pump():
            pass
        return self.close


@with_server(ws_ping_interval_s=0.05, ws_missed_pongs=3)
async def test_server_closes_a_client_whose_pongs_never_arrive_and_keeps_a_live_one(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    hub = sandbox.running.hub
    async with connect(sandbox, "ticker") as live:
        assert await recv(live) == CONTROL
        for round_ in (1, 2):
            opened = trio.current_time()
            async with RawClient.open(ws_url(sandbox, "ticker")) as raw:
                with trio.fail_after(TIMEOUT):
                    close = await raw.until_closed()
                elapsed = trio.current_time() - opened
            assert close is not None
            assert (close.code, close.reason) == (1011, "ping timeout")
            assert raw.pings == 3  # exactly the missed-pong allowance, then the close
            assert elapsed >= 3 * 0.05
            assert json.loads(raw.messages[0]) == CONTROL
            assert hub.stats["closed_ping_timeout"] == round_
            # The trio-websocket client answers the same pings and stays connected throughout.
            await connected(sandbox, Channel.TICKER, 1)
            with trio.fail_after(TIMEOUT):
                await live.ping()
        # And it still receives what the market publishes.
        alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
        await place(http, alice, order_body("sell", 1000.0, 0.20))
        await place(http, bob, order_body("buy", 1000.0, 0.30))
        assert (await recv(live))["type"] == "ticker_update"
    assert hub.stats["closed_ping_timeout"] == 2


@pytest.mark.parametrize("channel", ["trade", "ticker", "orderbook"])
async def test_server_answers_client_pings(
    sandbox: Sandbox, http: httpx.AsyncClient, channel: str
) -> None:
    access = await token(http, "alice") if channel == "trade" else None
    async with connect(sandbox, channel, access_token=access) as ws:
        # trio-websocket reads pongs in the task that queues messages: take the initial frames
        # first, or its one-slot queue would stall it.
        assert await recv(ws) == CONTROL
        if channel == "orderbook":
            assert (await recv(ws))["type"] == "orderbook_update"
        for _ in range(3):
            with trio.fail_after(TIMEOUT):
                await ws.ping()
        with trio.fail_after(TIMEOUT):
            await ws.ping(b"custom payload")


# --- fan-out --------------------------------------------------------------------------------------


async def test_fan_out_serializes_each_message_once_and_sends_identical_frames(
    sandbox: Sandbox, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[str] = Counter()
    original = streams._text

    def counting_text(message: object) -> str:
        calls[type(message).__name__] += 1
        return original(message)

    monkeypatch.setattr(streams, "_text", counting_text)
    alice = await bearer(http, "alice")
    access = alice["Authorization"][7:]

    async with (
        connect(sandbox, "orderbook") as b1,
        connect(sandbox, "orderbook") as b2,
        connect(sandbox, "orderbook") as b3,
        connect(sandbox, "orderbook") as b4,
        connect(sandbox, "trade", access_token=access) as t1,
        connect(sandbox, "trade", access_token=access) as t2,
        connect(sandbox, "trade", access_token=access) as t3,
    ):
        books, trades = (b1, b2, b3, b4), (t1, t2, t3)
        snapshots = set()
        for ws in books:
            assert await recv(ws) == CONTROL
            with trio.fail_after(TIMEOUT):
                snapshots.add(await ws.get_message())
        for ws in trades:
            assert await recv(ws) == CONTROL
        assert len(snapshots) == 1
        assert calls == {"OrderBookUpdate": 1}  # one snapshot text for four connections
        calls.clear()

        order = await place(http, alice, order_body("buy", 1000.0, 0.20))

        book_frames = set()
        for ws in books:
            with trio.fail_after(TIMEOUT):
                book_frames.add(await ws.get_message())
        trade_frames = set()
        for ws in trades:
            with trio.fail_after(TIMEOUT):
                trade_frames.add((await ws.get_message(), await ws.get_message()))

    assert len(book_frames) == 1  # identical for every client
    assert len(trade_frames) == 1
    [(accepted, active)] = trade_frames
    assert json.loads(accepted)["name"] == "accepted"
    assert json.loads(active)["name"] == "matching_active"
    assert json.loads(active)["data"]["order_id"] == order["order_id"]
    # One serialization per message: 1 book + 2 order updates, not one per connection (4 + 6).
    assert calls == {"OrderBookUpdate": 1, "OrderStatusUpdate": 2}
