"""Conformance of the sandbox's HTTP face to the GLocalFlex API reference (spec §2, §3, §5-§7, §9).

Every test talks to an in-process sandbox over real loopback HTTP (the `sandbox` and `http` fixtures
of conftest.py). Time is a manual wall clock: token lifetimes, rate limits and order expiry are
driven with `sandbox.advance(seconds)`, never by sleeping.
"""

from __future__ import annotations

import copy
import io
import json
import ssl
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import trio
from cryptography import x509

from flexbot import logs
from flexbot.sandbox.market import MarketSettings
from flexbot.sandbox.ratelimit import RateLimit
from flexbot.sandbox.server import ServerSettings
from tests.conftest import MARKET_START, USERS, Sandbox
from tests.logging_state import logging_restored

pytestmark = pytest.mark.anyio

TOKEN_PATH = "/auth/oauth/v2/token"
CLIENT_ID = "glocalflexmarket_public_api"
TOKEN_TTL_S = 300
REFRESH_TTL_S = 1800

# Spec §9, a real capture of the official client's order body, byte for byte as the spec prints it
# (line breaks included). Market time starts at 2026-11-23T10:00:00Z, so its times (expiry
# 10:37:49.371, delivery 11:30-12:30) lie in the sandbox's future as they are.
OFFICIAL_ORDER_BODY = (
    b'{"side":"buy","power":1400.0,"price":0.65,"delivery_start":"2026-11-23T11:30:00.000Z",\n'
    b' "delivery_end":"2026-11-23T12:30:00.000Z","expiry_time":"2026-11-23T10:37:49.371Z",\n'
    b' "location":{"location_id":[null],"country_code":"CH"},"baseline":null}'
)
# The same on one line, and as requests' `json=` serialises it (", " and ": " separators).
OFFICIAL_ORDER_ONE_LINE = b"".join(line.strip() for line in OFFICIAL_ORDER_BODY.splitlines())
OFFICIAL_ORDER_REQUESTS = json.dumps(json.loads(OFFICIAL_ORDER_BODY)).encode()

# Spec §9: the stale legacy baseline every official sell order carries.
LEGACY_BASELINE: dict[str, Any] = {
    "metering_id": "ce15bc33-2bda-4d26-8ddd-b958b22b569b",
    "created_at": "2019-08-24T14:15:00Z",
    "reading_start": "2019-08-24T14:15:00Z",
    "reading_end": "2019-08-24T14:30:00Z",
    "resolution": 1,
    "direction": "consumption",
    "quality": "estimated",
    "energy_product": "apparent",
    "unit_measured": "kWh",
    "data_points": [{"2019-08-24T14:15:00Z": 1}],
}

# A delivery window of one hour, an hour ahead of the market start; expiry half an hour ahead.
START = "2026-11-23T11:00:00Z"
END = "2026-11-23T12:00:00Z"
EXPIRY = "2026-11-23T10:30:00Z"


# --- settings -------------------------------------------------------------------------------------


@pytest.fixture
def market_settings(request: pytest.FixtureRequest) -> MarketSettings:
    """No rate limit unless a test asks for one (parametrize indirectly with a dict of overrides):
    the manual wall clock never moves on its own, so the default 10/1 would trip long flows."""
    overrides: dict[str, Any] = getattr(request, "param", {})
    settings: dict[str, Any] = {"users": USERS, "seed": 7, "rate_limit": None}
    return MarketSettings(**(settings | overrides))


def with_market(**overrides: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("market_settings", [overrides], indirect=True, ids=[""])


# --- helpers --------------------------------------------------------------------------------------


def password_form(username: str, password: str) -> bytes:
    """The token request exactly as the docs and the official client encode it (spec §2)."""
    return (
        f"client_id={CLIENT_ID}&grant_type=password&username={username}&password={password}"
    ).encode()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def grant(http: httpx.AsyncClient, username: str = "alice") -> dict[str, Any]:
    r = await http.post(TOKEN_PATH, content=password_form(username, USERS[username]), headers=FORM)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def refresh(http: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    form = f"client_id={CLIENT_ID}&grant_type=refresh_token&refresh_token={refresh_token}"
    return await http.post(TOKEN_PATH, content=form.encode(), headers=FORM)


async def bearer(http: httpx.AsyncClient, username: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {(await grant(http, username))['access_token']}"}


def meter_reading(start: str = START, end: str = END, kwh: float = 0.25) -> dict[str, Any]:
    """A well-formed `metering_data` object (spec §7): four quarter hours, stamped at their ends."""
    t0 = datetime.fromisoformat(start)
    points = [
        {"timestamp": (t0 + timedelta(minutes=15 * i)).strftime("%Y-%m-%dT%H:%M:%SZ"), "value": kwh}
        for i in range(1, 5)
    ]
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
    side: str = "sell",
    power: float = 1000.0,
    price: float = 0.30,
    *,
    start: str = START,
    end: str = END,
    expiry: str = EXPIRY,
    country: str = "DE",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "side": side,
        "power": power,
        "price": price,
        "delivery_start": start,
        "delivery_end": end,
        "expiry_time": expiry,
        "location": {"location_id": ["loc-1"], "country_code": country},
        **extra,
    }


async def submit(http: httpx.AsyncClient, auth: dict[str, str], body: Any) -> dict[str, Any]:
    r = await http.post("/api/v1/order/", json=body, headers=auth)
    assert r.status_code == 200, r.text
    order: dict[str, Any] = r.json()
    return order


async def get_order(http: httpx.AsyncClient, auth: dict[str, str], order_id: str) -> dict[str, Any]:
    r = await http.get(f"/api/v1/order/{order_id}", headers=auth)
    assert r.status_code == 200, r.text
    order: dict[str, Any] = r.json()
    return order


def verification(order_id: str, kind: str = "baseline", **reading: Any) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "measurement_type": kind,
        "metering_data": meter_reading(**reading),
    }


def locs(response: httpx.Response) -> list[list[str | int]]:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list)
    assert detail
    for problem in detail:
        assert set(problem) >= {"loc", "msg", "type"}
        assert isinstance(problem["msg"], str)
        assert problem["msg"]
    return [problem["loc"] for problem in detail]


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    """An exception and everything it was raised from."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- §2 token grants ------------------------------------------------------------------------------


async def test_password_grant_with_the_official_form_encoding_returns_bearer_tokens(
    http: httpx.AsyncClient,
) -> None:
    r = await http.post(TOKEN_PATH, content=password_form("alice", "alice-pw"), headers=FORM)

    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == TOKEN_TTL_S
    assert body["refresh_expires_in"] == REFRESH_TTL_S
    assert isinstance(body["access_token"], str)
    assert isinstance(body["refresh_token"], str)
    assert body["access_token"]
    assert body["refresh_token"]
    assert body["access_token"] != body["refresh_token"]


async def test_token_path_with_trailing_slash_is_served_without_redirect(
    http: httpx.AsyncClient,
) -> None:
    r = await http.post(
        TOKEN_PATH + "/",
        content=password_form("bob", "bob-pw"),
        headers=FORM,
        follow_redirects=False,
    )
    assert r.status_code == 200
    assert r.json()["token_type"] == "Bearer"


async def test_refresh_grant_rotates_the_refresh_token_and_keeps_the_old_one_valid(
    http: httpx.AsyncClient,
) -> None:
    first = await grant(http)

    r = await refresh(http, first["refresh_token"])
    assert r.status_code == 200
    second = r.json()
    assert second["token_type"] == "Bearer"
    assert second["expires_in"] == TOKEN_TTL_S
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    # The new access token works, and so does the old one (it has not expired).
    for token in (second["access_token"], first["access_token"]):
        r = await http.get("/api/v1/order", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
    # By default (spec §8) a used refresh token stays valid until it expires.
    again = await refresh(http, first["refresh_token"])
    assert again.status_code == 200
    assert again.json()["refresh_token"] not in (first["refresh_token"], second["refresh_token"])


@with_market(strict_refresh=True)
async def test_strict_refresh_rejects_a_used_refresh_token(http: httpx.AsyncClient) -> None:
    first = await grant(http)
    r = await refresh(http, first["refresh_token"])
    assert r.status_code == 200
    rotated = r.json()["refresh_token"]

    reused = await refresh(http, first["refresh_token"])
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    # The rotated token is the one that works.
    assert (await refresh(http, rotated)).status_code == 200


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        pytest.param(password_form("alice", "wrong"), 401, "invalid_grant", id="bad-password"),
        pytest.param(password_form("mallory", "alice-pw"), 401, "invalid_grant", id="bad-user"),
        pytest.param(
            b"client_id=someone_else&grant_type=password&username=alice&password=alice-pw",
            401,
            "invalid_client",
            id="unknown-client-id",
        ),
        pytest.param(
            b"grant_type=password&username=alice&password=alice-pw",
            401,
            "invalid_client",
            id="missing-client-id",
        ),
        pytest.param(
            f"client_id={CLIENT_ID}&grant_type=client_credentials".encode(),
            400,
            "unsupported_grant_type",
            id="unknown-grant",
        ),
        pytest.param(
            f"client_id={CLIENT_ID}&username=alice&password=alice-pw".encode(),
            400,
            "invalid_request",
            id="missing-grant-type",
        ),
        pytest.param(
            f"client_id={CLIENT_ID}&grant_type=refresh_token&refresh_token=nope".encode(),
            400,
            "invalid_grant",
            id="unknown-refresh-token",
        ),
        pytest.param(
            f"client_id={CLIENT_ID}&grant_type=refresh_token".encode(),
            400,
            "invalid_grant",
            id="missing-refresh-token",
        ),
    ],
)
async def test_token_errors_are_oauth_error_bodies(
    http: httpx.AsyncClient, form: bytes, status: int, error: str
) -> None:
    r = await http.post(TOKEN_PATH, content=form, headers=FORM)

    assert r.status_code == status
    body = r.json()
    assert body["error"] == error
    assert isinstance(body["error_description"], str)
    assert "access_token" not in body


@with_market(users={"carol": "p&ss=w+rd %/"})
async def test_password_grant_decodes_a_url_encoded_password(http: httpx.AsyncClient) -> None:
    """The official client posts with requests' `data=`, which percent-encodes the fields."""
    form = {"client_id": CLIENT_ID, "grant_type": "password", "username": "carol"}
    r = await http.post(
        TOKEN_PATH, content=urlencode(form | {"password": "p&ss=w+rd %/"}).encode(), headers=FORM
    )
    assert r.status_code == 200, r.text
    raw = f"client_id={CLIENT_ID}&grant_type=password&username=carol&password=p&ss=w+rd %/"
    r = await http.post(TOKEN_PATH, content=raw.encode(), headers=FORM)
    assert r.status_code == 401  # unencoded, the password is cut at its `&`


@with_market(users={"alice": "alice-pw", "jörg": "pässwörd"})
async def test_non_ascii_passwords_are_checked_not_crashed_on(http: httpx.AsyncClient) -> None:
    def form(username: str, password: str) -> bytes:
        fields = {"client_id": CLIENT_ID, "grant_type": "password"}
        return urlencode(fields | {"username": username, "password": password}).encode()

    wrong = await http.post(TOKEN_PATH, content=form("alice", "älice-pw"), headers=FORM)
    right = await http.post(TOKEN_PATH, content=form("jörg", "pässwörd"), headers=FORM)
    assert (wrong.status_code, right.status_code) == (401, 200)
    assert wrong.json()["error"] == "invalid_grant"


async def test_an_access_token_is_not_a_refresh_token(http: httpx.AsyncClient) -> None:
    tokens = await grant(http)
    r = await refresh(http, tokens["access_token"])
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"


async def test_refresh_token_dies_after_the_refresh_ttl(
    http: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    tokens = await grant(http)
    sandbox.advance(REFRESH_TTL_S - 1)
    r = await refresh(http, tokens["refresh_token"])
    assert r.status_code == 200  # still alive one second before its end
    fresh = r.json()["refresh_token"]

    sandbox.advance(2)
    r = await refresh(http, tokens["refresh_token"])
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"
    # The rotated refresh token has its own, later, expiry.
    assert (await refresh(http, fresh)).status_code == 200


async def test_access_token_expires_after_its_ttl_and_a_refreshed_one_works(
    http: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    tokens = await grant(http)
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert (await http.get("/api/v1/order", headers=auth)).status_code == 200
    sandbox.advance(TOKEN_TTL_S - 1)
    assert (await http.get("/api/v1/order", headers=auth)).status_code == 200

    sandbox.advance(2)  # now TOKEN_TTL_S + 1 after the grant
    r = await http.get("/api/v1/order", headers=auth)
    assert r.status_code == 401
    assert isinstance(r.json()["detail"], str)
    assert r.headers["www-authenticate"].lower().startswith("bearer")

    r = await refresh(http, tokens["refresh_token"])
    assert r.status_code == 200
    auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert (await http.get("/api/v1/order", headers=auth)).status_code == 200


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """The sandbox's log lines, configured as the CLI does (JSON), written to a buffer.

    `logs.configure` sets process-wide state: restored afterwards."""
    buffer = io.StringIO()
    with logging_restored():
        logs.configure(json=True, stream=buffer)
        yield buffer


async def test_tokens_and_passwords_never_reach_the_log(
    http: httpx.AsyncClient, log_output: io.StringIO
) -> None:
    tokens = await grant(http)
    r = await refresh(http, tokens["refresh_token"])
    rotated = r.json()
    await http.post(TOKEN_PATH, content=password_form("bob", "not-bobs-pw"), headers=FORM)
    auth = {"Authorization": f"Bearer {rotated['access_token']}"}
    await http.get("/api/v1/order", headers=auth)
    await http.get("/api/v1/order", headers={"Authorization": "Bearer some-unknown-token-xyz"})

    # The request log line is written once the response has gone out: wait for the last one.
    with trio.fail_after(5):
        while True:
            if log_output.getvalue().count('"http.request"') == 5:
                break
            await trio.sleep(0.01)
    text = log_output.getvalue()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    requests = [line for line in lines if line.get("event") == "http.request"]
    assert [(r["method"], r["path"], r["status"]) for r in requests] == [
        ("POST", TOKEN_PATH, 200),
        ("POST", TOKEN_PATH, 200),
        ("POST", TOKEN_PATH, 401),
        ("GET", "/api/v1/order", 200),
        ("GET", "/api/v1/order", 401),
    ]
    assert requests[0]["user"] == "alice"
    assert requests[3]["user"] == "alice"
    secrets = [
        "alice-pw",
        "not-bobs-pw",
        "some-unknown-token-xyz",
        tokens["access_token"],
        tokens["refresh_token"],
        rotated["access_token"],
        rotated["refresh_token"],
    ]
    for secret in secrets:
        assert secret not in text


# --- §2 Bearer auth on every /api/v1 route --------------------------------------------------------

API_ROUTES = [
    ("GET", "/api/v1/order"),
    ("POST", "/api/v1/order"),
    ("GET", "/api/v1/order/some-id"),
    ("DELETE", "/api/v1/order/some-id"),
    ("POST", "/api/v1/verification/metering"),
    ("POST", "/api/v1/verification/baseline"),
]
API_ROUTES_BOTH = [(m, p + s) for m, p in API_ROUTES for s in ("", "/")]


@pytest.mark.parametrize(("method", "path"), API_ROUTES_BOTH, ids=lambda v: v)
async def test_api_route_without_a_valid_bearer_token_is_401_with_a_detail(
    http: httpx.AsyncClient, method: str, path: str
) -> None:
    attempts: list[dict[str, str]] = [
        {},
        {"Authorization": "Basic YWxpY2U6YWxpY2UtcHc="},
        {"Authorization": "Basic x"},
        {"Authorization": "Bearer"},
        {"Authorization": "Token abc"},
        {"Authorization": "Bearer not-a-token-we-issued"},
    ]
    for headers in attempts:
        r = await http.request(method, path, headers=headers, content=b"{}", follow_redirects=False)
        assert r.status_code == 401, (headers, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")
        detail = r.json()["detail"]
        assert isinstance(detail, str)
        assert detail


async def test_curl_style_authorization_header_without_a_space_after_the_colon_works(
    http: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    """The docs' curl writes `-H 'Authorization:Bearer <tok>'`; send those exact bytes."""
    token = (await grant(http))["access_token"]
    url = httpx.URL(sandbox.base_url)
    assert url.port is not None
    stream = await trio.open_tcp_stream(url.host, url.port)
    async with stream:
        await stream.send_all(
            (
                f"GET /api/v1/order HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
                f"Authorization:Bearer {token}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            ).encode()
        )
        raw = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                raw += chunk
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line.split()[1] == b"200", raw
    assert rest.endswith(b"[]")


@pytest.mark.parametrize("form", ["bearer {}", "BEARER {}", "Bearer  {}"])
async def test_bearer_scheme_is_case_insensitive_and_spacing_tolerant(
    http: httpx.AsyncClient, form: str
) -> None:
    token = (await grant(http))["access_token"]
    r = await http.get("/api/v1/order", headers={"Authorization": form.format(token)})
    assert r.status_code == 200


# --- §3 trailing slashes, never a redirect --------------------------------------------------------


@pytest.mark.parametrize("slash", ["", "/"], ids=["no-slash", "slash"])
async def test_every_rest_route_answers_with_and_without_trailing_slash(
    http: httpx.AsyncClient, sandbox: Sandbox, slash: str
) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")

    async def call(
        method: str, path: str, body: Any = None, auth: dict[str, str] | None = None
    ) -> httpx.Response:
        r = await http.request(
            method, path + slash, json=body, headers=auth or alice, follow_redirects=False
        )
        assert not 300 <= r.status_code < 400, (method, path, r.status_code)
        assert r.status_code == 200, (method, path, r.status_code, r.text)
        return r

    order = (await call("POST", "/api/v1/order", order_body())).json()
    order_id = order["order_id"]
    assert order["status"] == "awaiting_baseline_data"
    assert (await call("GET", f"/api/v1/order/{order_id}")).json()["order_id"] == order_id
    listed = (await call("GET", "/api/v1/order")).json()
    assert [o["order_id"] for o in listed] == [order_id]
    r = await call("POST", "/api/v1/verification/baseline", verification(order_id, "baseline"))
    assert r.json()["measurement_type"] == "baseline"
    # Metering needs a contract and the end of its delivery: Bob's buy takes the sell, the rest
    # of the buy is cancelled, then market time passes the delivery end.
    buy = (await call("POST", "/api/v1/order", order_body("buy", 2000.0, 0.50), bob)).json()
    assert buy["status"] == "partial_filled"
    r = await call("DELETE", f"/api/v1/order/{buy['order_id']}", auth=bob)
    assert r.json()["status"] == "cancelled"
    sandbox.advance((parse_ts(END) - MARKET_START).total_seconds())
    alice = await bearer(http, "alice")  # the first token has expired meanwhile
    metering = verification(order_id, "metering", kwh=0.0)
    r = await call("POST", "/api/v1/verification/metering", metering)
    assert r.json()["measurement_type"] == "metering"
    for path in ("/sandbox/clock", "/sandbox/orders", "/sandbox/stats"):
        await call("GET", path)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1/no-such-route", 404),
        ("PUT", "/api/v1/order", 405),
        ("PATCH", "/api/v1/order/some-id", 405),
        ("GET", TOKEN_PATH, 405),
    ],
)
async def test_unknown_routes_and_methods_answer_with_a_json_detail(
    http: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    alice = await bearer(http)
    r = await http.request(method, path, headers=alice, follow_redirects=False)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/json")
    assert isinstance(r.json()["detail"], str)


# --- §9 the official client's request shapes ------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [OFFICIAL_ORDER_BODY, OFFICIAL_ORDER_ONE_LINE, OFFICIAL_ORDER_REQUESTS],
    ids=["as-printed", "one-line", "requests-json"],
)
async def test_the_official_clients_order_body_byte_for_byte_is_accepted(
    http: httpx.AsyncClient, content: bytes
) -> None:
    # The spec's capture fits the sandbox's market time as it is: expiry < delivery, all ahead.
    assert MARKET_START < parse_ts("2026-11-23T10:37:49.371Z") < parse_ts(START)
    alice = await bearer(http)
    headers = {**alice, "Content-Type": "application/json"}

    r = await http.post("/api/v1/order/", content=content, headers=headers, follow_redirects=False)

    assert r.status_code == 200, r.text
    order = r.json()
    assert isinstance(order["order_id"], str)
    assert order["order_id"]
    assert order["status"] == "matching_active"  # a buy goes straight to matching
    assert order["side"] == "buy"
    assert order["power"] == 1400.0
    assert order["price"] == 0.65
    assert order["energy"] == 1400.0  # 1400 W over one hour, in Wh
    assert parse_ts(order["delivery_start"]) == parse_ts("2026-11-23T11:30:00Z")
    assert parse_ts(order["delivery_end"]) == parse_ts("2026-11-23T12:30:00Z")
    assert parse_ts(order["expiry_time"]) == parse_ts("2026-11-23T10:37:49.371Z")
    assert order["location"]["location_id"] == [None]
    assert order["location"]["country_code"] == "CH"
    assert order["baseline"] is None
    assert order["contracts"] == []
    assert await get_order(http, alice, order["order_id"]) == order


@pytest.mark.parametrize(
    "content_type",
    [None, "application/x-www-form-urlencoded", "text/plain"],
    ids=["no-content-type", "curl-form", "text"],
)
async def test_json_body_is_parsed_whatever_the_content_type_says(
    http: httpx.AsyncClient, content_type: str | None
) -> None:
    alice = await bearer(http)
    headers = dict(alice)
    if content_type is not None:
        headers["Content-Type"] = content_type
    r = await http.post("/api/v1/order", content=OFFICIAL_ORDER_BODY, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "matching_active"

    sell = await submit(http, alice, order_body())
    body = json.dumps(verification(sell["order_id"], "baseline")).encode()
    r = await http.post("/api/v1/verification/metering", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert (await get_order(http, alice, sell["order_id"]))["status"] == "matching_active"


async def test_official_sell_with_the_legacy_baseline_shape_is_accepted(
    http: httpx.AsyncClient,
) -> None:
    alice = await bearer(http)
    body = {
        "side": "sell",
        "power": 2300.0,
        "price": 0.42,
        "delivery_start": "2026-11-23T11:30:00.000Z",
        "delivery_end": "2026-11-23T12:30:00.000Z",
        "expiry_time": "2026-11-23T10:37:49.371Z",
        "location": {"location_id": [None], "country_code": ""},
        "baseline": copy.deepcopy(LEGACY_BASELINE),
    }

    r = await http.post("/api/v1/order/", json=body, headers=alice)

    assert r.status_code == 200, r.text
    order = r.json()
    # With a baseline the sell skips awaiting_baseline_data (spec §5).
    assert order["status"] == "matching_active"
    assert order["location"] == {"location_id": [None], "country_code": ""}
    assert order["baseline"] is not None
    assert parse_ts(order["baseline"]["reading_start"]).year == 2019


@pytest.mark.parametrize(
    "location",
    [
        {"location_id": [None], "country_code": ""},
        {"location_id": [None], "country_code": None},
        {"location_id": [], "country_code": "FI"},
        {"location_id": ["a", "b"]},
    ],
    ids=["null-id-empty-country", "null-country", "no-ids", "no-country"],
)
async def test_tolerated_location_shapes_are_accepted(
    http: httpx.AsyncClient, location: dict[str, Any]
) -> None:
    alice = await bearer(http)
    body = order_body("buy", baseline=None) | {"location": location}
    r = await http.post("/api/v1/order", json=body, headers=alice)
    assert r.status_code == 200, r.text


async def test_a_sell_with_baseline_null_awaits_its_baseline(http: httpx.AsyncClient) -> None:
    alice = await bearer(http)
    order = await submit(http, alice, order_body("sell", baseline=None))
    assert order["status"] == "awaiting_baseline_data"
    assert order["baseline"] is None


# --- §3 validation: 422 with a located detail list ------------------------------------------------

INVALID_ORDERS: list[Any] = [
    pytest.param({"start": "2026-11-23T11:10:00Z"}, ["delivery_start"], id="start-off-grid"),
    pytest.param({"end": "2026-11-23T12:05:00Z"}, ["delivery_end"], id="end-off-grid"),
    pytest.param({"start": "2026-11-23T11:00:30Z"}, ["delivery_start"], id="start-seconds"),
    pytest.param({"end": "2026-11-23T12:00:00.500Z"}, ["delivery_end"], id="end-fraction"),
    pytest.param(
        {"start": "2026-11-23T11:00:00.000000001Z"},
        ["delivery_start"],
        id="start-one-nanosecond-off-grid",
    ),
    pytest.param(
        {"start": "2026-11-23T09:00:00Z", "end": "2026-11-23T09:45:00Z"},
        ["delivery_start"],
        id="past-delivery",
    ),
    pytest.param({"end": "2026-11-23T09:45:00Z"}, ["delivery_end"], id="past-delivery-end"),
    pytest.param({"expiry": START}, ["expiry_time"], id="expiry-equals-delivery-start"),
    pytest.param({"expiry": "2026-11-23T11:15:00Z"}, ["expiry_time"], id="expiry-after-start"),
    pytest.param({"expiry": "2026-11-23T09:59:59.999Z"}, ["expiry_time"], id="expiry-past"),
    pytest.param({"expiry": "2026-11-23T10:00:00Z"}, ["expiry_time"], id="expiry-now"),
    pytest.param({"end": START}, ["delivery_end"], id="start-equals-end"),
    pytest.param({"end": "2026-11-23T10:45:00Z"}, ["delivery_end"], id="end-before-start"),
    pytest.param({"power": 0.0}, ["power"], id="power-zero"),
    pytest.param({"power": -100.0}, ["power"], id="power-negative"),
    pytest.param({"price": -0.01}, ["price"], id="price-negative"),
    pytest.param({"country": "IT"}, ["location", "country_code"], id="country-IT"),
    pytest.param({"country": "de"}, ["location", "country_code"], id="country-lowercase"),
    pytest.param({"side": "hold"}, ["side"], id="side-unknown"),
    pytest.param({"side": "BUY"}, ["side"], id="side-uppercase"),
    pytest.param({"side": "buy", "baseline": meter_reading()}, ["baseline"], id="buy-baseline"),
]


@pytest.mark.parametrize(("changes", "where"), INVALID_ORDERS)
async def test_invalid_order_is_422_locating_the_problem(
    http: httpx.AsyncClient, changes: dict[str, Any], where: list[str]
) -> None:
    alice = await bearer(http)
    args = {"side": "sell", **changes}
    body = order_body(args.pop("side"), **args)

    r = await http.post("/api/v1/order/", json=body, headers=alice)

    found = locs(r)
    for problem in found:
        assert problem[0] == "body"
    assert ["body", *where] in found, found
    assert (await http.get("/api/v1/order", headers=alice)).json() == []


async def test_past_delivery_start_is_reported_as_in_the_past(http: httpx.AsyncClient) -> None:
    alice = await bearer(http)
    body = order_body(start="2026-11-23T09:00:00Z", expiry="2026-11-23T08:00:00Z")
    r = await http.post("/api/v1/order", json=body, headers=alice)
    detail = {tuple(p["loc"]): p["msg"] for p in r.json()["detail"]}
    assert r.status_code == 422
    assert "future" in detail["body", "delivery_start"]
    assert "future" in detail["body", "expiry_time"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("power", "1000"),
        ("power", True),
        ("power", None),
        ("price", "0.3"),
        ("price", [0.3]),
        ("delivery_start", 1763895600),
        ("delivery_start", "2026-11-23 11:00"),
        ("delivery_start", "2026-11-23T11:00:00"),  # no zone
        ("delivery_end", "tomorrow"),
        ("expiry_time", "2026-11-23T10:00:00:100Z"),  # the docs' typo (spec §3)
        ("side", 1),
        ("location", "DE"),
        pytest.param(
            "location",
            {"location_id": "loc-1", "country_code": "DE"},
            id="location-id-string",
        ),
        ("baseline", "yes"),
    ],
)
async def test_wrong_types_are_422_at_their_location(
    http: httpx.AsyncClient, field: str, value: Any
) -> None:
    alice = await bearer(http)
    body = order_body() | {field: value}
    r = await http.post("/api/v1/order", json=body, headers=alice)
    found = locs(r)
    assert any(loc[:2] == ["body", field] for loc in found), found


@pytest.mark.parametrize(
    "field", ["side", "power", "price", "delivery_start", "delivery_end", "expiry_time"]
)
async def test_missing_required_field_is_422_at_its_location(
    http: httpx.AsyncClient, field: str
) -> None:
    alice = await bearer(http)
    body = order_body()
    del body[field]
    r = await http.post("/api/v1/order", json=body, headers=alice)
    found = locs(r)
    assert ["body", field] in found, found
    assert r.json()["detail"][found.index(["body", field])]["type"] == "missing"


async def test_several_missing_fields_are_reported_together(http: httpx.AsyncClient) -> None:
    alice = await bearer(http)
    r = await http.post("/api/v1/order", json={"side": "sell"}, headers=alice)
    found = locs(r)
    for field in ("power", "price", "delivery_start", "delivery_end", "expiry_time"):
        assert ["body", field] in found, found


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b'{"side":"sell",', b"\xff\xfe", b"[1, 2]", b'"sell"', b"null"],
    ids=["garbage", "empty", "truncated", "not-utf8", "list", "string", "null"],
)
async def test_body_that_is_not_a_json_object_is_422(
    http: httpx.AsyncClient, content: bytes
) -> None:
    alice = await bearer(http)
    headers = {**alice, "Content-Type": "application/json"}
    for path in ("/api/v1/order", "/api/v1/verification/metering"):
        r = await http.post(path, content=content, headers=headers)
        found = locs(r)
        assert all(loc[:1] == ["body"] for loc in found), found


async def test_several_rule_violations_are_reported_at_once(http: httpx.AsyncClient) -> None:
    alice = await bearer(http)
    body = order_body(
        "buy",
        power=0.0,
        price=-1.0,
        start="2026-11-23T11:07:00Z",
        end="2026-11-23T12:00:00Z",
        expiry="2026-11-23T09:00:00Z",
        country="XX",
        baseline=meter_reading(),
    )
    r = await http.post("/api/v1/order", json=body, headers=alice)
    found = locs(r)
    expected = [
        ["body", "power"],
        ["body", "price"],
        ["body", "delivery_start"],
        ["body", "expiry_time"],
        ["body", "location", "country_code"],
        ["body", "baseline"],
    ]
    for loc in expected:
        assert loc in found, (loc, found)


async def test_several_type_errors_are_reported_at_once(http: httpx.AsyncClient) -> None:
    alice = await bearer(http)
    body = order_body() | {"power": "lots", "price": None, "side": "both"}
    body["location"] = {"location_id": [1], "country_code": 2}
    r = await http.post("/api/v1/order", json=body, headers=alice)
    found = locs(r)
    for loc in (["body", "power"], ["body", "price"], ["body", "side"]):
        assert loc in found, found
    assert any(loc[:3] == ["body", "location", "country_code"] for loc in found), found
    assert any(loc[:3] == ["body", "location", "location_id"] for loc in found), found


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"measurement_type": "forecast"}, ["measurement_type"]),
        ({"measurement_type": None}, ["measurement_type"]),
        ({"order_id": 5}, ["order_id"]),
        ({"metering_data": None}, ["metering_data"]),
        ({"metering_data": {"data_points": "none"}}, ["metering_data", "data_points"]),
    ],
    ids=["unknown-kind", "null-kind", "int-order-id", "null-data", "points-not-list"],
)
async def test_verification_with_bad_types_is_422(
    http: httpx.AsyncClient, change: dict[str, Any], where: list[str]
) -> None:
    alice = await bearer(http)
    sell = await submit(http, alice, order_body())
    body = verification(sell["order_id"], "metering") | change
    r = await http.post("/api/v1/verification/metering", json=body, headers=alice)
    found = locs(r)
    assert any(loc[: len(where) + 1] == ["body", *where] for loc in found), found


# --- §3 404 / 409 / 422 for orders that cannot be touched -----------------------------------------


async def test_another_users_order_and_an_unknown_id_are_404(http: httpx.AsyncClient) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    order = await submit(http, alice, order_body())
    order_id = order["order_id"]

    for path in (f"/api/v1/order/{order_id}", "/api/v1/order/no-such-order"):
        for method in ("GET", "DELETE"):
            auth = bob if order_id in path else alice
            r = await http.request(method, path, headers=auth)
            assert r.status_code == 404, (method, path, r.text)
            assert isinstance(r.json()["detail"], str)
    # Bob's DELETE did not touch it.
    assert (await get_order(http, alice, order_id))["status"] == "awaiting_baseline_data"


async def test_cancelling_a_final_order_is_409(http: httpx.AsyncClient) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    lone = await submit(http, alice, order_body("buy", price=0.10))
    r = await http.delete(f"/api/v1/order/{lone['order_id']}", headers=alice)
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    r = await http.delete(f"/api/v1/order/{lone['order_id']}", headers=alice)
    assert r.status_code == 409
    assert isinstance(r.json()["detail"], str)

    sell = await submit(http, alice, order_body("sell", baseline=meter_reading()))
    buy = await submit(http, bob, order_body("buy", price=0.50))
    assert buy["status"] == "filled"
    for auth, order_id in ((alice, sell["order_id"]), (bob, buy["order_id"])):
        r = await http.delete(f"/api/v1/order/{order_id}", headers=auth)
        assert r.status_code == 409
        assert (await get_order(http, auth, order_id))["status"] == "filled"


async def test_verification_for_a_buy_order_is_422(http: httpx.AsyncClient) -> None:
    alice = await bearer(http)
    buy = await submit(http, alice, order_body("buy"))
    for path, kind in (
        ("/api/v1/verification/baseline", "baseline"),
        ("/api/v1/verification/metering", "metering"),
    ):
        r = await http.post(path, json=verification(buy["order_id"], kind), headers=alice)
        assert ["body", "order_id"] in locs(r)


async def test_verification_for_a_foreign_or_unknown_order_is_404(http: httpx.AsyncClient) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    sell = await submit(http, alice, order_body())
    for order_id in (sell["order_id"], "no-such-order"):
        for kind in ("baseline", "metering"):
            r = await http.post(
                f"/api/v1/verification/{kind}", json=verification(order_id, kind), headers=bob
            )
            assert r.status_code == 404, r.text
    # Bob's baseline did not activate Alice's sell.
    assert (await get_order(http, alice, sell["order_id"]))["status"] == "awaiting_baseline_data"


@with_market(token_ttl_s=86400)
async def test_baseline_can_be_replaced_until_the_order_matches_then_409(
    http: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    sell = await submit(http, alice, order_body())
    sell_id = sell["order_id"]
    path = "/api/v1/verification/baseline"
    r = await http.post(path, json=verification(sell_id, kwh=0.25), headers=alice)
    assert r.status_code == 200
    r = await http.post(path, json=verification(sell_id, kwh=0.5), headers=alice)
    assert r.status_code == 200  # replaced while still unmatched
    order = await get_order(http, alice, sell_id)
    assert order["status"] == "matching_active"
    assert {p["value"] for p in order["baseline"]["data_points"]} == {0.5}

    await submit(http, bob, order_body("buy", price=0.50))
    for route in ("/api/v1/verification/baseline", "/api/v1/verification/metering"):
        r = await http.post(route, json=verification(sell_id, kwh=0.75), headers=alice)
        assert r.status_code == 409, r.text
        assert isinstance(r.json()["detail"], str)
    # The current baseline again is no change: 200, and counted as a duplicate.
    r = await http.post(path, json=verification(sell_id, kwh=0.5), headers=alice)
    assert r.status_code == 200, r.text
    order = await get_order(http, alice, sell_id)
    assert {p["value"] for p in order["baseline"]["data_points"]} == {0.5}
    stats = (await http.get("/sandbox/stats")).json()
    assert stats["verification_submissions"] == {sell_id: {"baseline": 2}}
    assert stats["verification_duplicates"] == {sell_id: {"baseline": 1}}
    # Metering is still welcome after the match, once the delivery has ended.
    metering = verification(sell_id, "metering", kwh=0.25)
    r = await http.post("/api/v1/verification/metering", json=metering, headers=alice)
    assert ["body", "measurement_type"] in locs(r)
    sandbox.advance((parse_ts(END) - MARKET_START).total_seconds())
    r = await http.post("/api/v1/verification/metering", json=metering, headers=alice)
    assert r.status_code == 200, r.text
    order = await get_order(http, alice, sell_id)
    assert {p["value"] for p in order["baseline"]["data_points"]} == {0.5}


# --- §3 rate limiting ----------------------------------------------------------------------------


@with_market(rate_limit=RateLimit(5, 1.0))
async def test_rate_limit_is_per_user_with_retry_after_and_recovers(
    http: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    for _ in range(4):
        assert (await http.get("/api/v1/order", headers=alice)).status_code == 200
    assert (await http.post("/api/v1/order", json=order_body(), headers=alice)).status_code == 200

    r = await http.get("/api/v1/order", headers=alice)
    assert r.status_code == 429
    retry_after = r.headers["retry-after"]
    assert retry_after.isdigit(), retry_after
    assert int(retry_after) >= 1
    assert isinstance(r.json()["detail"], str)
    # Every route shares the user's budget.
    r = await http.post("/api/v1/order", json=order_body(), headers=alice)
    assert r.status_code == 429
    # Bob has his own budget.
    for _ in range(5):
        assert (await http.get("/api/v1/order", headers=bob)).status_code == 200
    assert (await http.get("/api/v1/order", headers=bob)).status_code == 429
    # The token endpoint still answers: a limited client can log in again.
    await grant(http, "alice")

    sandbox.advance(int(retry_after))
    r = await http.get("/api/v1/order", headers=alice)
    assert r.status_code == 200
    assert len(r.json()) == 1


# --- §5 the order lifecycle through REST ---------------------------------------------------------


async def test_sell_waits_for_its_baseline_from_either_verification_path(
    http: httpx.AsyncClient,
) -> None:
    alice = await bearer(http)
    first = await submit(http, alice, order_body(price=0.30))
    second = await submit(http, alice, order_body(price=0.31))
    assert first["status"] == second["status"] == "awaiting_baseline_data"

    r = await http.post(
        "/api/v1/verification/baseline", json=verification(first["order_id"]), headers=alice
    )
    assert r.status_code == 200
    assert r.json() == {
        "order_id": first["order_id"],
        "measurement_type": "baseline",
        "status": "received",
    }
    # The docs' baseline example posts to /metering with measurement_type "baseline".
    r = await http.post(
        "/api/v1/verification/metering", json=verification(second["order_id"]), headers=alice
    )
    assert r.status_code == 200
    assert r.json()["measurement_type"] == "baseline"

    for order in (first, second):
        now = await get_order(http, alice, order["order_id"])
        assert now["status"] == "matching_active"
        assert now["baseline"]["data_points"][0]["value"] == 0.25


async def test_crossing_orders_of_two_users_make_a_contract_at_the_resting_price(
    http: httpx.AsyncClient,
) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    sell = await submit(http, alice, order_body("sell", 1000.0, 0.30, baseline=meter_reading()))
    assert sell["status"] == "matching_active"

    buy = await submit(http, bob, order_body("buy", 1500.0, 0.40))

    assert buy["status"] == "partial_filled"
    (contract,) = buy["contracts"]
    assert contract["buy_order_id"] == buy["order_id"]
    assert contract["sell_order_id"] == sell["order_id"]
    assert contract["price"] == 0.30  # the resting sell's price
    assert contract["power"] == 1000.0
    assert contract["energy"] == 1000.0  # 1000 W for one hour, in Wh
    assert parse_ts(contract["delivery_start"]) == parse_ts(START)
    assert parse_ts(contract["delivery_end"]) == parse_ts(END)
    assert contract["status"] == "created"
    sell_now = await get_order(http, alice, sell["order_id"])
    assert sell_now["status"] == "filled"
    assert sell_now["contracts"] == [contract]
    assert await get_order(http, bob, buy["order_id"]) == buy

    # A second sell that undercuts the resting buy trades at the buy's price and fills it.
    second = await submit(http, alice, order_body("sell", 500.0, 0.20, baseline=meter_reading()))
    assert second["status"] == "filled"
    (contract2,) = second["contracts"]
    assert contract2["price"] == 0.40  # now the buy was resting
    assert contract2["power"] == 500.0
    assert contract2["energy"] == 500.0
    buy_now = await get_order(http, bob, buy["order_id"])
    assert buy_now["status"] == "filled"
    assert [c["contract_id"] for c in buy_now["contracts"]] == [
        contract["contract_id"],
        contract2["contract_id"],
    ]


async def test_orders_that_do_not_cross_keep_matching(http: httpx.AsyncClient) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    sell = await submit(http, alice, order_body("sell", 1000.0, 0.50, baseline=meter_reading()))
    cheap = await submit(http, bob, order_body("buy", 1000.0, 0.49))
    own = await submit(http, alice, order_body("buy", 1000.0, 0.60))  # no self-trade
    other_window = await submit(
        http,
        bob,
        order_body("buy", 1000.0, 0.90, start="2026-11-23T12:00:00Z", end="2026-11-23T13:00:00Z"),
    )
    other_country = await submit(http, bob, order_body("buy", 1000.0, 0.90, country="FR"))
    for auth, order in (
        (alice, sell),
        (bob, cheap),
        (alice, own),
        (bob, other_window),
        (bob, other_country),
    ):
        now = await get_order(http, auth, order["order_id"])
        assert now["status"] == "matching_active", order
        assert now["contracts"] == []


async def test_a_sell_without_baseline_does_not_match_until_its_baseline_arrives(
    http: httpx.AsyncClient,
) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    sell = await submit(http, alice, order_body("sell", 1000.0, 0.30))
    buy = await submit(http, bob, order_body("buy", 1000.0, 0.40))
    assert buy["status"] == "matching_active"

    r = await http.post(
        "/api/v1/verification/baseline", json=verification(sell["order_id"]), headers=alice
    )
    assert r.status_code == 200
    sell_now = await get_order(http, alice, sell["order_id"])
    buy_now = await get_order(http, bob, buy["order_id"])
    assert sell_now["status"] == buy_now["status"] == "filled"
    # The sell entered the book last: it is the aggressor and pays the resting buy's price.
    assert sell_now["contracts"][0]["price"] == 0.40
    assert sell_now["contracts"] == buy_now["contracts"]


async def test_cancel_returns_the_cancelled_order_and_keeps_its_contracts(
    http: httpx.AsyncClient,
) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    await submit(http, alice, order_body("sell", 1000.0, 0.30, baseline=meter_reading()))
    buy = await submit(http, bob, order_body("buy", 3000.0, 0.40))
    assert buy["status"] == "partial_filled"

    r = await http.delete(f"/api/v1/order/{buy['order_id']}", headers=bob)

    assert r.status_code == 200
    cancelled = r.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["contracts"] == buy["contracts"]
    assert await get_order(http, bob, buy["order_id"]) == cancelled
    # A cancelled buy no longer matches.
    late = await submit(http, alice, order_body("sell", 500.0, 0.30, baseline=meter_reading()))
    assert late["status"] == "matching_active"


@with_market(token_ttl_s=3600)
async def test_an_order_reads_expired_once_market_time_passes_its_expiry(
    http: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    expiry = "2026-11-23T10:10:00.500Z"
    sell = await submit(http, alice, order_body(expiry=expiry, baseline=meter_reading()))
    waiting = await submit(http, alice, order_body(expiry=expiry))
    later = await submit(http, alice, order_body(expiry="2026-11-23T10:20:00Z"))
    sandbox.advance(600)
    assert (await get_order(http, alice, sell["order_id"]))["status"] == "matching_active"

    sandbox.advance(1)  # 10:10:01, past the expiry

    for order in (sell, waiting):
        now = await get_order(http, alice, order["order_id"])
        assert now["status"] == "expired"
    assert (await get_order(http, alice, later["order_id"]))["status"] == "awaiting_baseline_data"
    # An expired sell has left the book, and cannot be cancelled.
    buy = await submit(http, bob, order_body("buy", price=0.90))
    assert buy["status"] == "matching_active"
    assert (
        await http.delete(f"/api/v1/order/{sell['order_id']}", headers=alice)
    ).status_code == 409
    # An order submitted now must expire in the new future.
    r = await http.post("/api/v1/order", json=order_body(expiry=expiry), headers=alice)
    assert ["body", "expiry_time"] in locs(r)


@with_market(token_ttl_s=86400)
async def test_metering_submission_is_received(http: httpx.AsyncClient, sandbox: Sandbox) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    sell = await submit(http, alice, order_body(baseline=meter_reading()))
    await submit(http, bob, order_body("buy", price=0.50))
    body = verification(sell["order_id"], "metering", kwh=0.2)
    # Metering is taken after the delivery end (spec §7 "metering goes after delivery").
    sandbox.advance((parse_ts(END) - MARKET_START).total_seconds())

    r = await http.post("/api/v1/verification/metering", json=body, headers=alice)

    assert r.status_code == 200
    assert r.json() == {
        "order_id": sell["order_id"],
        "measurement_type": "metering",
        "status": "received",
    }
    # Metering does not replace the baseline.
    order = await get_order(http, alice, sell["order_id"])
    assert {p["value"] for p in order["baseline"]["data_points"]} == {0.25}


async def test_list_orders_shows_only_the_callers_orders(http: httpx.AsyncClient) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    a1 = await submit(http, alice, order_body())
    b1 = await submit(http, bob, order_body("buy", price=0.1))
    a2 = await submit(http, alice, order_body("buy", price=0.1, country="FR"))
    mine = (await http.get("/api/v1/order/", headers=alice)).json()
    assert [o["order_id"] for o in mine] == [a1["order_id"], a2["order_id"]]
    theirs = (await http.get("/api/v1/order", headers=bob)).json()
    assert [o["order_id"] for o in theirs] == [b1["order_id"]]


# --- introspection --------------------------------------------------------------------------------


async def test_sandbox_clock_reports_market_time_and_scale(
    http: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    r = await http.get("/sandbox/clock")
    assert r.status_code == 200
    assert parse_ts(r.json()["now"]) == MARKET_START
    assert r.json()["time_scale"] == 1

    sandbox.advance(90.25)
    r = await http.get("/sandbox/clock/")
    assert parse_ts(r.json()["now"]) == MARKET_START + timedelta(seconds=90.25)


async def test_sandbox_orders_shows_every_users_orders(http: httpx.AsyncClient) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    sell = await submit(http, alice, order_body("sell", 1000.0, 0.30, baseline=meter_reading()))
    buy = await submit(http, bob, order_body("buy", 2500.0, 0.40))
    waiting = await submit(http, bob, order_body("sell", 700.0, 0.90))

    r = await http.get("/sandbox/orders")

    assert r.status_code == 200
    orders = {o["order_id"]: o for o in r.json()}
    assert set(orders) == {sell["order_id"], buy["order_id"], waiting["order_id"]}
    seen = {
        oid: (o["owner"], o["status"], o["filled_power"], len(o["contracts"]))
        for oid, o in orders.items()
    }
    assert seen == {
        sell["order_id"]: ("alice", "filled", 1000.0, 1),
        buy["order_id"]: ("bob", "partial_filled", 1000.0, 1),
        waiting["order_id"]: ("bob", "awaiting_baseline_data", 0.0, 0),
    }
    assert orders[buy["order_id"]]["contracts"] == buy["contracts"]


@with_market(token_ttl_s=86400)
async def test_sandbox_stats_count_what_happened(http: httpx.AsyncClient, sandbox: Sandbox) -> None:
    alice, bob = await bearer(http, "alice"), await bearer(http, "bob")
    sell = await submit(http, alice, order_body())
    sell_id = sell["order_id"]
    baseline = verification(sell_id)
    metering = verification(sell_id, "metering", kwh=0.0)
    await http.post("/api/v1/verification/metering", json=baseline, headers=alice)
    await http.post("/api/v1/verification/baseline", json=baseline, headers=alice)  # duplicate
    await http.post("/api/v1/verification/metering", json=metering, headers=alice)  # 409 unmatched
    buy = await submit(http, bob, order_body("buy", price=0.5))
    await get_order(http, bob, buy["order_id"])
    await http.get(f"/api/v1/order/{buy['order_id']}/", headers=alice)  # 404
    other = await submit(http, bob, order_body("buy", price=0.1))
    await http.delete(f"/api/v1/order/{other['order_id']}", headers=bob)
    await http.post("/api/v1/order", json={"side": "sell"}, headers=alice)  # 422
    await http.get("/api/v1/order")  # 401
    await http.get("/no/such/route")
    await http.post("/api/v1/verification/metering", json=metering, headers=alice)  # 422 early
    sandbox.advance((parse_ts(END) - MARKET_START).total_seconds())
    await http.post("/api/v1/verification/metering", json=metering, headers=alice)
    await http.post("/api/v1/verification/metering", json=metering, headers=alice)  # duplicate

    r = await http.get("/sandbox/stats")

    assert r.status_code == 200
    stats = r.json()
    assert set(stats) == {
        "requests",
        "orders_by_status",
        "contracts",
        "verification_submissions",
        "verification_duplicates",
        "contracts_by_status",
        "faults",
        "websocket",
    }
    assert stats["requests"] == {
        "POST /auth/oauth/v2/token": {"200": 2},
        "POST /api/v1/order": {"200": 3, "422": 1},
        "GET /api/v1/order": {"401": 1},
        "GET /api/v1/order/{order_id}": {"200": 1, "404": 1},
        "DELETE /api/v1/order/{order_id}": {"200": 1},
        "POST /api/v1/verification/metering": {"200": 3, "409": 1, "422": 1},
        "POST /api/v1/verification/baseline": {"200": 1},
        "GET unmatched": {"404": 1},
    }
    assert stats["orders_by_status"] == {"cancelled": 1, "filled": 2}
    assert stats["contracts"] == 1
    # Each measurement is counted once; identical resubmissions are counted apart.
    assert stats["verification_submissions"] == {sell_id: {"baseline": 1, "metering": 1}}
    assert stats["verification_duplicates"] == {sell_id: {"baseline": 1, "metering": 1}}
    # The metering showed the promised reduction: verified, settlement under way.
    assert stats["contracts_by_status"] == {"settlement_initiated": 1}
    assert stats["faults"]["injected"] == {}
    assert set(stats["faults"]["settings"]) >= {"rest_error_rate", "ws_drop_every"}


# --- TLS ------------------------------------------------------------------------------------------


class TestOverTls:
    @pytest.fixture
    def server_settings(self, tmp_path: Path) -> ServerSettings:
        return ServerSettings(port=0, tls=True, tls_dir=tmp_path, graceful_timeout_s=0.1)

    async def test_token_order_and_get_work_over_tls(
        self, http: httpx.AsyncClient, sandbox: Sandbox, tmp_path: Path
    ) -> None:
        assert sandbox.base_url.startswith("https://")
        assert sandbox.running.ws_url.startswith("wss://")
        assert sandbox.running.ca == tmp_path / "ca.pem"
        headers = {**(await bearer(http)), "Content-Type": "application/json"}
        r = await http.post("/api/v1/order/", content=OFFICIAL_ORDER_BODY, headers=headers)
        assert r.status_code == 200, r.text
        order = r.json()
        assert (await get_order(http, headers, order["order_id"])) == order

    async def test_plain_http_to_the_tls_port_fails(self, sandbox: Sandbox) -> None:
        url = httpx.URL(sandbox.base_url).copy_with(scheme="http")
        async with httpx.AsyncClient(timeout=5) as plain:
            with pytest.raises(httpx.TransportError):
                await plain.get(url.join("/sandbox/clock"))

    async def test_a_client_that_does_not_trust_the_ca_fails(self, sandbox: Sandbox) -> None:
        async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=5) as untrusting:
            with pytest.raises(httpx.ConnectError) as failed:
                await untrusting.get("/sandbox/clock")
        assert any(isinstance(e, ssl.SSLCertVerificationError) for e in causes(failed.value))

    async def test_certificate_is_valid_for_localhost_and_127_0_0_1(
        self, sandbox: Sandbox, tmp_path: Path
    ) -> None:
        cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "localhost" in san.get_values_for_type(x509.DNSName)
        assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}

        port = httpx.URL(sandbox.base_url).port
        assert port is not None
        context = ssl.create_default_context(cafile=str(sandbox.running.ca))
        for name in ("localhost", "127.0.0.1"):
            # Connect to the loopback address the server binds, verifying the certificate as
            # a client that dialled `name` would (hostname checks included).
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            stream = trio.SSLStream(tcp, context, server_hostname=name)
            with trio.fail_after(5):
                await stream.do_handshake()
            await stream.aclose()
        # The checks are real: another name is refused.
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, context, server_hostname="example.com")
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as refused:
            await stream.do_handshake()
        assert any(isinstance(e, ssl.SSLCertVerificationError) for e in causes(refused.value))
        await tcp.aclose()
        # And a full request by name.
        async with httpx.AsyncClient(verify=context, timeout=5) as by_name:
            r = await by_name.get(f"https://localhost:{port}/sandbox/clock")
            assert r.status_code == 200
