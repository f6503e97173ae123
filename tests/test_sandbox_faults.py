"""The sandbox's switchable faults (flexbot/sandbox/faults.py), the engine's invariants under them,
and the simulated counterparties.

HTTP and WebSocket tests run the in-process sandbox of conftest.py on a real loopback port; token
lifetimes and outages run on its manual wall clock, while WebSocket drops, pings and injected
latency run on real trio time and are awaited with bounded waits. The property and counterparty
tests drive a `SandboxMarket` synchronously, without a server.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, ConnectionRejected

from flexbot import model, wire
from flexbot.clock import ManualWall, MarketClock
from flexbot.problems import Invalid
from flexbot.rules import may_meet
from flexbot.sandbox.counterparties import Counterparties
from flexbot.sandbox.faults import FAULT_NAMES, FaultSettings, parse_fault_option
from flexbot.sandbox.market import MarketSettings, SandboxMarket
from flexbot.sandbox.matching import BookOrder, MatchingError
from flexbot.sandbox.server import ServerSettings
from tests.conftest import MARKET_START, USERS, Sandbox
from tests.test_sandbox_streams import (
    CONTROL,
    TIMEOUT,
    bearer,
    connect,
    meter_reading,
    order_body,
    place,
    recv,
    token,
)

pytestmark = pytest.mark.anyio

TOKEN_PATH = "/auth/oauth/v2/token"
PASSWORD_FORM = {
    "client_id": "glocalflexmarket_public_api",
    "grant_type": "password",
    "username": "alice",
    "password": "alice-pw",
}
DEFAULTS = wire.CONVERTER.unstructure(FaultSettings())


# --- settings -------------------------------------------------------------------------------------


@pytest.fixture
def market_settings(request: pytest.FixtureRequest) -> MarketSettings:
    """No rate limit (the manual wall clock never refills the buckets); faults switchable over
    HTTP without the admin token; overrides come from an indirect parametrization with a dict."""
    overrides: dict[str, Any] = getattr(request, "param", {})
    base: dict[str, Any] = {
        "users": USERS,
        "seed": 7,
        "rate_limit": None,
        "faults_switchable": True,
    }
    return MarketSettings(**(base | overrides))


@pytest.fixture
def server_settings() -> ServerSettings:
    return ServerSettings(port=0, graceful_timeout_s=0.1, ws_ping_interval_s=None)


def with_market(**overrides: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("market_settings", [overrides], indirect=True, ids=[""])


async def set_faults(http: httpx.AsyncClient, **changes: Any) -> dict[str, Any]:
    r = await http.post("/sandbox/faults", json=changes)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def injected(http: httpx.AsyncClient) -> dict[str, int]:
    r = await http.get("/sandbox/stats")
    assert r.status_code == 200
    counts: dict[str, int] = r.json()["faults"]["injected"]
    return counts


# --- POST /sandbox/faults -------------------------------------------------------------------------


async def test_faults_endpoint_reports_and_updates_settings(http: httpx.AsyncClient) -> None:
    r = await http.get("/sandbox/faults")
    assert r.status_code == 200
    assert r.json() == {"settings": DEFAULTS, "injected": {}}
    assert set(DEFAULTS) == set(FAULT_NAMES)

    body = await set_faults(http, rest_error_rate=0.25, ws_no_pong=True, ambiguous_mode="hang")
    expected = DEFAULTS | {"rest_error_rate": 0.25, "ws_no_pong": True, "ambiguous_mode": "hang"}
    assert body["settings"] == expected
    # A partial update changes only what it names.
    body = await set_faults(http, rest_latency_ms=5)
    assert body["settings"] == expected | {"rest_latency_ms": 5}
    assert (await http.get("/sandbox/faults/")).json()["settings"] == body["settings"]
    # An empty update changes nothing; 0 and false turn faults off.
    assert (await set_faults(http))["settings"] == body["settings"]
    off = await set_faults(
        http, rest_error_rate=0, ws_no_pong=False, rest_latency_ms=0, ambiguous_mode="504"
    )
    assert off["settings"] == DEFAULTS
    stats = (await http.get("/sandbox/stats")).json()
    assert stats["faults"] == {"settings": DEFAULTS, "injected": {}}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"no_such_fault": 1}, ["body", "no_such_fault"]),
        ({"rest_error_rate": 0.5, "typo_rate": 1}, ["body", "typo_rate"]),
        ({"rest_error_rate": 1.5}, ["body", "rest_error_rate"]),
        ({"rest_429_rate": -0.1}, ["body", "rest_429_rate"]),
        ({"ws_malformed_rate": 2}, ["body", "ws_malformed_rate"]),
        ({"ambiguous_rate": "0.5"}, ["body", "ambiguous_rate"]),
        ({"ws_no_pong": "yes"}, ["body", "ws_no_pong"]),
        ({"ws_no_pong": 1}, ["body", "ws_no_pong"]),
        ({"ws_no_pong": None}, ["body", "ws_no_pong"]),
        ({"ws_drop_every": True}, ["body", "ws_drop_every"]),
        ({"ws_drop_every": -1}, ["body", "ws_drop_every"]),
        ({"token_ttl": "30"}, ["body", "token_ttl"]),
        ({"rest_latency_ms": [100]}, ["body", "rest_latency_ms"]),
        ({"ambiguous_mode": "reset"}, ["body", "ambiguous_mode"]),
        ({"ambiguous_mode": 504}, ["body", "ambiguous_mode"]),
        ([{"rest_error_rate": 1}], ["body"]),
        ("rest_error_rate=1", ["body"]),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict | str) else None,
)
async def test_faults_endpoint_refuses_bad_updates_with_located_422_and_changes_nothing(
    http: httpx.AsyncClient, body: Any, loc: list[str]
) -> None:
    await set_faults(http, rest_latency_ms=1)
    before = (await http.get("/sandbox/faults")).json()

    r = await http.post("/sandbox/faults", json=body)

    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert [p["loc"] for p in detail] == [loc]
    assert all(isinstance(p["msg"], str) and p["msg"] for p in detail)
    assert (await http.get("/sandbox/faults")).json() == before


async def test_faults_endpoint_refuses_a_body_that_is_not_json(http: httpx.AsyncClient) -> None:
    r = await http.post("/sandbox/faults", content=b"rest_error_rate=1")
    assert r.status_code == 422
    assert (await http.get("/sandbox/faults")).json()["settings"] == DEFAULTS


# --- WebSocket faults -----------------------------------------------------------------------------

DROP_EVERY_S = 0.3


@with_market(faults=FaultSettings(ws_drop_every=DROP_EVERY_S))
async def test_ws_drop_every_closes_every_connection_with_1012_and_reconnecting_works(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    access = await token(http, "alice")
    for _ in range(2):  # the second round is the reconnect after a drop
        async with (
            connect(sandbox, "trade", access_token=access) as trade,
            connect(sandbox, "ticker") as ticker,
            connect(sandbox, "orderbook") as orderbook,
        ):
            opened = trio.current_time()
            assert await recv(trade) == CONTROL
            assert await recv(ticker) == CONTROL
            assert await recv(orderbook) == CONTROL
            assert (await recv(orderbook))["type"] == "orderbook_update"
            for ws in (trade, ticker, orderbook):
                # The drop comes at the next tick of the fault, at most one interval away.
                with trio.fail_after(DROP_EVERY_S + 1.0), pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason is not None
                assert closed.value.reason.code == 1012
                assert closed.value.reason.reason == "sandbox fault: ws_drop_every"
            assert trio.current_time() - opened < DROP_EVERY_S + 1.0
    assert (await injected(http))["ws_drop"] >= 6


async def test_ws_drop_every_switched_on_and_off_while_running(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    async with connect(sandbox, "ticker") as ws:
        assert await recv(ws) == CONTROL
        await set_faults(http, ws_drop_every=0.2)
        # While off, the fault looks at its setting once a second, so the first drop comes within
        # that second plus one interval.
        with trio.fail_after(1.0 + 0.2 + 1.0), pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason is not None
        assert closed.value.reason.code == 1012

    await set_faults(http, ws_drop_every=0)
    dropped = (await injected(http))["ws_drop"]
    async with connect(sandbox, "ticker") as ws:
        assert await recv(ws) == CONTROL
        # Off again: the connection outlives several former intervals, and receives normally.
        with trio.move_on_after(3 * 0.2) as quiet:
            await ws.get_message()
        assert quiet.cancelled_caught
        alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
        await place(http, alice, order_body("sell", 1000.0, 0.20))
        await place(http, bob, order_body("buy", 1000.0, 0.30))
        assert (await recv(ws))["type"] == "ticker_update"
    assert (await injected(http))["ws_drop"] == dropped


async def test_ws_no_pong_leaves_client_pings_unanswered_and_counts_them(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    async with connect(sandbox, "ticker") as ws:
        assert await recv(ws) == CONTROL
        with trio.fail_after(TIMEOUT):
            await ws.ping()
        await set_faults(http, ws_no_pong=True)

        with trio.move_on_after(0.5) as unanswered:
            await ws.ping(b"first")
        assert unanswered.cancelled_caught
        with trio.move_on_after(0.2) as unanswered:
            await ws.ping(b"second")
        assert unanswered.cancelled_caught
        assert (await injected(http))["ws_ping_unanswered"] == 2
        # The connection itself still works: it is half-open, not closed.
        alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
        await place(http, alice, order_body("sell", 1000.0, 0.20))
        await place(http, bob, order_body("buy", 1000.0, 0.30))
        assert (await recv(ws))["type"] == "ticker_update"

        await set_faults(http, ws_no_pong=False)
        with trio.fail_after(TIMEOUT):
            await ws.ping(b"third")
    assert (await injected(http))["ws_ping_unanswered"] == 2


async def test_ws_malformed_rate_sends_a_broken_frame_after_each_message(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    async with connect(sandbox, "orderbook") as book, connect(sandbox, "ticker") as ticker:
        assert await recv(book) == CONTROL
        assert (await recv(book))["type"] == "orderbook_update"  # no broken frame after these
        assert await recv(ticker) == CONTROL
        await set_faults(http, ws_malformed_rate=1)

        await place(http, alice, order_body("sell", 1000.0, 0.20))
        await place(http, bob, order_body("buy", 1000.0, 0.30))

        async def frames(ws: Any, count: int) -> list[str]:
            with trio.fail_after(TIMEOUT):
                return [await ws.get_message() for _ in range(count)]

        book_frames = await frames(book, 4)
        ticker_frames = await frames(ticker, 2)
        for stream_frames, kind in (
            (book_frames, "orderbook_update"),
            (ticker_frames, "ticker_update"),
        ):
            for good, bad in zip(stream_frames[::2], stream_frames[1::2], strict=True):
                assert json.loads(good)["type"] == kind
                with pytest.raises(json.JSONDecodeError):
                    json.loads(bad)
        # One roll per message (two book snapshots and one ticker), not one per connection.
        assert (await injected(http))["ws_malformed_frame"] == 3

        await set_faults(http, ws_malformed_rate=0)
        await place(http, alice, order_body("sell", 700.0, 0.50))
        await place(http, alice, order_body("sell", 600.0, 0.60))
        first, second = await frames(book, 2)
        assert json.loads(first)["type"] == json.loads(second)["type"] == "orderbook_update"
    assert (await injected(http))["ws_malformed_frame"] == 3


# --- token faults ---------------------------------------------------------------------------------


async def test_token_ttl_shortens_the_lifetime_of_tokens_issued_from_then_on(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    before = (await http.post(TOKEN_PATH, data=PASSWORD_FORM)).json()
    assert before["expires_in"] == 300
    await set_faults(http, token_ttl=5)

    short = (await http.post(TOKEN_PATH, data=PASSWORD_FORM)).json()
    assert short["expires_in"] == 5
    form = {
        "client_id": PASSWORD_FORM["client_id"],
        "grant_type": "refresh_token",
        "refresh_token": short["refresh_token"],
    }
    refreshed = (await http.post(TOKEN_PATH, data=form)).json()
    assert refreshed["expires_in"] == 5

    def auth(tokens: dict[str, Any]) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens['access_token']}"}

    sandbox.advance(4)
    assert (await http.get("/api/v1/order", headers=auth(short))).status_code == 200
    sandbox.advance(2)  # 6 s after the grant
    assert (await http.get("/api/v1/order", headers=auth(short))).status_code == 401
    assert (await http.get("/api/v1/order", headers=auth(refreshed))).status_code == 401
    with pytest.raises(ConnectionRejected) as rejected:
        async with connect(sandbox, "trade", access_token=short["access_token"]):
            pytest.fail("an expired token must not open /trade")  # pragma: no cover
    assert rejected.value.status_code == 401
    # Tokens issued before the fault keep their own lifetime.
    assert (await http.get("/api/v1/order", headers=auth(before))).status_code == 200

    await set_faults(http, token_ttl=0)
    assert (await http.post(TOKEN_PATH, data=PASSWORD_FORM)).json()["expires_in"] == 300


async def test_token_fail_for_makes_the_token_endpoint_answer_503_for_that_long(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    working = await bearer(http, "alice")
    await set_faults(http, token_fail_for=10)

    for _ in range(2):
        r = await http.post(TOKEN_PATH, data=PASSWORD_FORM)
        assert r.status_code == 503
        body = r.json()
        assert body["error"] == "temporarily_unavailable"
        assert isinstance(body["error_description"], str)
        assert "access_token" not in body
    # The rest of the API is up; only the token endpoint is down.
    assert (await http.get("/api/v1/order", headers=working)).status_code == 200
    sandbox.advance(9.5)
    assert (await http.post(TOKEN_PATH, data=PASSWORD_FORM)).status_code == 503
    sandbox.advance(1)  # 10.5 s after the fault was set
    r = await http.post(TOKEN_PATH, data=PASSWORD_FORM)
    assert r.status_code == 200
    assert r.json()["token_type"] == "Bearer"
    assert (await injected(http))["token_fail"] == 3
    # Switched off early, the outage ends at once.
    await set_faults(http, token_fail_for=100)
    assert (await http.post(TOKEN_PATH, data=PASSWORD_FORM)).status_code == 503
    await set_faults(http, token_fail_for=0)
    assert (await http.post(TOKEN_PATH, data=PASSWORD_FORM)).status_code == 200


@with_market(faults=FaultSettings(token_fail_for=60))
async def test_token_fail_for_set_at_start_counts_from_the_start(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    assert (await http.post(TOKEN_PATH, data=PASSWORD_FORM)).status_code == 503
    sandbox.advance(61)
    assert (await http.post(TOKEN_PATH, data=PASSWORD_FORM)).status_code == 200


# --- REST faults ----------------------------------------------------------------------------------


async def test_rest_error_rate_answers_5xx_untouched_until_switched_off(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    alice = await bearer(http, "alice")
    await set_faults(http, rest_error_rate=1)

    statuses = set()
    for i in range(40):
        if i % 2:
            r = await http.post("/api/v1/order", json=order_body("buy", 1000.0, 0.2), headers=alice)
        else:
            r = await http.get("/api/v1/order", headers=alice)
        statuses.add(r.status_code)
        assert isinstance(r.json()["detail"], str)
    assert statuses == {500, 502, 503}
    assert (await http.get("/sandbox/orders")).json() == []  # nothing was placed
    # The token endpoint and the introspection routes are not part of /api/v1.
    assert (await http.post(TOKEN_PATH, data=PASSWORD_FORM)).status_code == 200
    assert (await injected(http))["rest_5xx"] == 40

    await set_faults(http, rest_error_rate=0)
    await place(http, alice, order_body("buy", 1000.0, 0.2))
    assert (await http.get("/api/v1/order", headers=alice)).status_code == 200
    assert len((await http.get("/sandbox/orders")).json()) == 1
    assert (await injected(http))["rest_5xx"] == 40


async def test_rest_429_rate_answers_429_with_retry_after_1(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    alice = await bearer(http, "alice")
    await set_faults(http, rest_429_rate=1)
    for _ in range(3):
        r = await http.post("/api/v1/order/", json=order_body("buy", 1000.0, 0.2), headers=alice)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert isinstance(r.json()["detail"], str)
    assert (await http.get("/sandbox/orders")).json() == []
    assert (await injected(http))["rest_429"] == 3

    await set_faults(http, rest_429_rate=0)
    assert (await http.get("/api/v1/order/", headers=alice)).status_code == 200


async def test_rest_latency_ms_delays_every_api_call(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    alice = await bearer(http, "alice")
    await set_faults(http, rest_latency_ms=200)
    for call in (
        http.get("/api/v1/order", headers=alice),
        http.post("/api/v1/order", json=order_body("buy", 1000.0, 0.2), headers=alice),
    ):
        started = trio.current_time()
        r = await call
        assert r.status_code == 200
        assert trio.current_time() - started >= 0.2
    assert (await injected(http))["rest_latency"] == 2


async def test_ambiguous_504_places_the_order_but_loses_the_answer(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    alice = await bearer(http, "alice")
    await set_faults(http, ambiguous_rate=1, ambiguous_mode="504")
    body = order_body("buy", 1234.0, 0.21)

    r = await http.post("/api/v1/order/", json=body, headers=alice)

    assert r.status_code == 504
    assert "order_id" not in r.json()
    [order] = (await http.get("/sandbox/orders")).json()
    assert order["owner"] == "alice"
    assert (order["side"], order["power"], order["price"]) == ("buy", 1234, 0.21)
    assert order["status"] == "matching_active"
    # The client can find it again (sandbox-only list) and read it.
    r = await http.get("/api/v1/order", headers=alice)
    assert [o["order_id"] for o in r.json()] == [order["order_id"]]
    assert (await http.get(f"/api/v1/order/{order['order_id']}", headers=alice)).status_code == 200
    # An invalid order is refused as usual: nothing placed, nothing ambiguous.
    r = await http.post("/api/v1/order/", json=body | {"power": -1}, headers=alice)
    assert r.status_code == 422
    assert len((await http.get("/sandbox/orders")).json()) == 1
    assert (await injected(http))["ambiguous_504"] == 1


async def test_ambiguous_hang_places_the_order_and_the_client_times_out(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    alice = await bearer(http, "alice")
    await set_faults(http, ambiguous_rate=1, ambiguous_mode="hang")

    with pytest.raises(httpx.TimeoutException):
        await http.post(
            "/api/v1/order/", json=order_body("sell", 900.0, 0.33), headers=alice, timeout=0.5
        )

    [order] = (await http.get("/sandbox/orders")).json()
    assert (order["owner"], order["side"], order["power"]) == ("alice", "sell", 900)
    assert (await injected(http))["ambiguous_hang"] == 1


# --- --fault NAME=VALUE ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ws_drop_every=5", ("ws_drop_every", 5.0)),
        ("ws_drop_every=0.25", ("ws_drop_every", 0.25)),
        ("token_ttl=30", ("token_ttl", 30.0)),
        ("rest_error_rate=1", ("rest_error_rate", 1.0)),
        ("rest_latency_ms=1e3", ("rest_latency_ms", 1000.0)),
        ("ws_no_pong=true", ("ws_no_pong", True)),
        ("ws_no_pong=TRUE", ("ws_no_pong", True)),
        ("ws_no_pong=1", ("ws_no_pong", True)),
        ("ws_no_pong=on", ("ws_no_pong", True)),
        ("ws_no_pong=yes", ("ws_no_pong", True)),
        ("ws_no_pong=false", ("ws_no_pong", False)),
        ("ws_no_pong=0", ("ws_no_pong", False)),
        ("ws_no_pong=Off", ("ws_no_pong", False)),
        ("ws_no_pong=no", ("ws_no_pong", False)),
        ("ambiguous_mode=hang", ("ambiguous_mode", "hang")),
        ("ambiguous_mode=504", ("ambiguous_mode", "504")),
    ],
)
def test_parse_fault_option_types_the_value_by_its_field(
    text: str, expected: tuple[str, Any]
) -> None:
    name, value = parse_fault_option(text)
    assert (name, value) == expected
    assert type(value) is type(expected[1])  # a float field gets a float, a bool a bool
    # What it returns is exactly what FaultSettings takes.
    assert getattr(wire.structure({name: value}, FaultSettings), name) == value


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("no_such_fault=1", "NAME=VALUE"),
        ("WS_DROP_EVERY=1", "NAME=VALUE"),
        ("ws_drop_every", "NAME=VALUE"),
        ("=5", "NAME=VALUE"),
        ("", "NAME=VALUE"),
        ("ws_drop_every=", "number"),
        ("ws_drop_every=fast", "number"),
        ("rest_error_rate=50%", "number"),
        ("ws_no_pong=maybe", "true or false"),
        ("ws_no_pong=", "true or false"),
        ("ws_no_pong=2", "true or false"),
    ],
)
def test_parse_fault_option_refuses_bad_names_and_values(text: str, mentions: str) -> None:
    with pytest.raises(ValueError, match=mentions):
        parse_fault_option(text)


@pytest.mark.parametrize(
    "name", ["ws_drop_every", "token_ttl", "token_fail_for", "rest_latency_ms"]
)
def test_a_non_finite_fault_value_is_refused(name: str) -> None:
    def as_the_cli_reads_it(text: str) -> FaultSettings:
        return wire.structure(dict([parse_fault_option(text)]), FaultSettings)

    # From either step (Invalid is a ValueError too); any message naming the bad value will do.
    with pytest.raises(ValueError, match=r"(?i)nan|finite"):
        as_the_cli_reads_it(f"{name}=nan")


# --- the engine's invariants under a random schedule ----------------------------------------------

# Two windows that share a start (so only window identity keeps them apart) and a later one; the
# first is drawn most often, so that orders meet and trade.
WINDOWS = [
    (MARKET_START + timedelta(hours=1), MARKET_START + timedelta(hours=2)),
    (MARKET_START + timedelta(hours=1), MARKET_START + timedelta(hours=1, minutes=30)),
    (MARKET_START + timedelta(hours=3), MARKET_START + timedelta(hours=3, minutes=15)),
]
TRADERS = ("alice", "bob", "carol")
RESTING = (model.OrderStatus.MATCHING_ACTIVE, model.OrderStatus.PARTIAL_FILLED)

fault_changes = st.fixed_dictionaries(
    {},
    optional={
        "ws_drop_every": st.sampled_from([0.0, 0.5, 30.0]),
        "ws_no_pong": st.booleans(),
        "ws_malformed_rate": st.sampled_from([0.0, 0.5, 1.0]),
        "token_ttl": st.sampled_from([0.0, 5.0]),
        "token_fail_for": st.sampled_from([0.0, 10.0]),
        "rest_error_rate": st.sampled_from([0.0, 0.3, 1.0]),
        "rest_429_rate": st.sampled_from([0.0, 1.0]),
        "rest_latency_ms": st.sampled_from([0.0, 50.0]),
        "ambiguous_rate": st.sampled_from([0.0, 1.0]),
        "ambiguous_mode": st.sampled_from(["504", "hang"]),
    },
)
submit = st.tuples(
    st.just("submit"),
    st.sampled_from(TRADERS),
    st.sampled_from(list(model.Side)),
    st.sampled_from([500, 1000, 1500, 2000, 3000]),
    st.sampled_from(["0.10", "0.15", "0.20", "0.25", "0.30"]),
    st.sampled_from([0, 0, 0, 1, 2]),  # index into WINDOWS
    st.sampled_from(["", "DE", "FR"]),
    st.integers(1, 50),  # expiry, minutes after now
    st.sampled_from([True, True, True, False]),  # a sell carries its baseline inline
)
other_operation = st.one_of(
    st.none(),
    st.tuples(st.just("cancel"), st.integers(0, 200)),
    st.tuples(st.just("baseline"), st.integers(0, 200)),
    st.tuples(st.just("advance"), st.sampled_from([1, 30, 120, 300])),
    st.tuples(st.just("faults"), fault_changes),
)
# Each step is an order and maybe something else, so that orders are many and meet and trade.
operations = st.lists(st.tuples(submit, other_operation), min_size=10, max_size=40).map(
    lambda steps: [op for pair in steps for op in pair if op is not None]
)


def new_market(**overrides: Any) -> tuple[SandboxMarket, ManualWall]:
    wall = ManualWall()
    base: dict[str, Any] = {"users": USERS, "seed": 3, "rate_limit": None}
    settings = MarketSettings(**(base | overrides))
    clock = MarketClock(settings.time_scale, wall=wall, start=MARKET_START)
    return SandboxMarket(settings, clock=clock), wall


def baseline_for(start: Any, end: Any) -> model.MeterReading:
    return wire.structure(
        meter_reading(wire.format_datetime(start), wire.format_datetime(end)), model.MeterReading
    )


def could_trade(buy: BookOrder, sell: BookOrder, now: Any) -> bool:
    return (
        buy.window == sell.window
        and buy.price >= sell.price
        and buy.owner != sell.owner
        and may_meet(buy.request, sell.request)
        and sell.remaining_w <= buy.remaining_w
        and buy.expires_at > now
        and sell.expires_at > now
    )


def check_invariants(market: SandboxMarket) -> None:
    matcher = market.matcher
    now = market.clock.now()
    orders = matcher.orders()
    buys = list(matcher.resting(model.Side.BUY))
    sells = list(matcher.resting(model.Side.SELL))
    # The book holds exactly the live, matching orders, each once.
    assert {o.order_id for o in buys + sells} == {o.order_id for o in orders if o.status in RESTING}
    assert len(buys + sells) == len({o.order_id for o in buys + sells})
    # Not crossed: no two resting orders could still trade together.
    for buy in buys:
        for sell in sells:
            assert not could_trade(buy, sell, now), (buy, sell)
    for order in orders:
        contracts = [matcher.contracts[c] for c in order.contract_ids]
        # Filled power equals the sum of the order's contracts, and never exceeds the order.
        assert order.filled_w == sum((c.power for c in contracts), Decimal(0))
        assert 0 <= order.remaining_w <= order.request.power
        assert (order.status is model.OrderStatus.FILLED) == (order.remaining_w == 0)
        if order.side is model.Side.SELL:
            # All or nothing: a sell is untouched or taken whole, by one contract.
            assert order.remaining_w in (order.request.power, 0)
            assert order.status is not model.OrderStatus.PARTIAL_FILLED
            assert len(contracts) <= 1
    for contract in matcher.contracts.values():
        buy, sell = matcher.order(contract.buy_order_id), matcher.order(contract.sell_order_id)
        assert buy.owner != sell.owner
        assert buy.price >= contract.price >= sell.price
        assert contract.power == sell.request.power


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(operations)
def test_matching_invariants_hold_under_random_faults_orders_cancels_and_time(
    ops: list[tuple[Any, ...]],
) -> None:
    market, wall = new_market()
    for op in ops:
        kind = op[0]
        try:
            if kind == "submit":
                _, user, side, power, price, w, country, expiry_min, with_baseline = op
                start, end = WINDOWS[w]
                now = market.clock.now()
                sell_baseline = side is model.Side.SELL and with_baseline
                request = model.OrderRequest(
                    side=side,
                    power=Decimal(power),
                    price=Decimal(price),
                    delivery_start=start,
                    delivery_end=end,
                    expiry_time=min(now + timedelta(minutes=expiry_min), start)
                    - timedelta(seconds=1),
                    location=model.Location(location_id=("site",), country_code=country),
                    baseline=baseline_for(start, end) if sell_baseline else None,
                )
                market.place(user, request)
            elif kind in ("cancel", "baseline"):
                orders = market.matcher.orders()
                if orders:
                    order = orders[op[1] % len(orders)]
                    if kind == "cancel":
                        market.cancel_order(order.owner, order.order_id)
                    elif order.side is model.Side.SELL:
                        start, end = order.window
                        request_v = model.VerificationRequest(
                            order_id=order.order_id,
                            measurement_type=model.MeasurementType.BASELINE,
                            metering_data=baseline_for(start, end),
                        )
                        market.record_verification(order.owner, request_v)
            elif kind == "advance":
                wall.advance(op[1])
            else:
                market.faults.update(op[1])
        except (Invalid, MatchingError):
            pass  # refused (past window or expiry, final order, baseline locked): no change
        check_invariants(market)
    market.tick()
    check_invariants(market)
    target(len(market.matcher.contracts), label="contracts")  # steer towards busy markets


# --- simulated counterparties ---------------------------------------------------------------------


def run_counterparties(seed: int, steps: int = 1500) -> tuple[SandboxMarket, list[dict[str, Any]]]:
    market, wall = new_market(users={}, seed=seed)
    traders = Counterparties(market, 5, seed=seed)
    for i in range(steps):
        wall.advance(20)  # 1500 steps cover 8 h 20 min of market time
        market.tick()
        traders.act(traders.users[i % len(traders.users)])
        traders.submit_metering()
    return market, market.introspect_orders()


def test_counterparties_trade_and_complete_verifications_deterministically() -> None:
    market, first = run_counterparties(seed=1)
    _, again = run_counterparties(seed=1)
    _, other = run_counterparties(seed=2)

    assert first == again  # the same seed, the same market, id for id
    assert first != other
    owners = {o["owner"] for o in first}
    assert owners == {f"counterparty-{i}" for i in range(1, 6)}
    statuses = {o["status"] for o in first}
    assert {"filled", "cancelled", "expired"} <= statuses
    assert {o["side"] for o in first} == {"buy", "sell"}
    contracts = list(market.matcher.contracts.values())
    assert len(contracts) >= 10
    by_status = Counter(str(c.status) for c in contracts)
    # They meter what they sold: most verifications succeed and settle, a few fail (half metered).
    assert by_status["settlement_completed_success"] >= 10
    assert by_status["verification_completed_failed"] >= 1
    for contract in contracts:
        if contract.status == "settlement_completed_success":
            assert contract.verification_result is not None
            assert contract.verification_result.status == "completed_success"
            assert contract.settlement is not None
            assert contract.settlement.amount_eur is not None
            assert contract.settlement.amount_eur > 0
    assert sum(market.verifications[o].get("metering", 0) for o in market.verifications) >= 10
    check_invariants(market)


def test_counterparty_orders_are_valid_market_orders() -> None:
    market, _ = run_counterparties(seed=5, steps=200)
    for order in market.matcher.orders():
        req = order.request
        assert req.delivery_start < req.delivery_end
        assert req.expiry_time < req.delivery_start
        assert (req.delivery_end - req.delivery_start) in {
            timedelta(minutes=m) for m in (15, 30, 60)
        }
        assert (req.baseline is not None) == (req.side is model.Side.SELL)
        assert req.power in {Decimal(p) for p in (500, 1000, 2000, 5000)}
        assert not math.isnan(float(req.price))
