"""The official example clients' way of talking, against the sandbox over TLS (spec §9).

The official REST client is built on requests and its WebSocket client on websocket-client; both
are used here exactly as those clients use them (form-encoded token request, the captured order
body, `Authorization` and `Origin` headers on the upgrade, certificate checks off for the socket),
so the sandbox is shown to accept them unchanged. They are blocking libraries: each conversation
runs in a worker thread while the sandbox serves from the test's trio loop.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import pytest
import requests
import trio
import websocket

from flexbot.sandbox.market import MarketSettings
from flexbot.sandbox.server import ServerSettings
from tests.conftest import USERS, Sandbox

pytestmark = pytest.mark.anyio

# The captured order body of spec §9, byte for byte (its times suit MARKET_START, 10:00Z).
CAPTURED_BUY = (
    b'{"side":"buy","power":1400.0,"price":0.65,"delivery_start":"2026-11-23T11:30:00.000Z",'
    b'"delivery_end":"2026-11-23T12:30:00.000Z","expiry_time":"2026-11-23T10:37:49.371Z",'
    b'"location":{"location_id":[null],"country_code":"CH"},"baseline":null}'
)
CLIENT_ID = "glocalflexmarket_public_api"


@pytest.fixture
def market_settings() -> MarketSettings:
    return MarketSettings(users=USERS, seed=11, rate_limit=None)


@pytest.fixture
def server_settings(tmp_path: Path) -> ServerSettings:
    return ServerSettings(port=0, tls=True, tls_dir=tmp_path, graceful_timeout_s=0.1)


def _token(base: str, ca: str, user: str) -> str:
    form = {"client_id": CLIENT_ID, "grant_type": "password", "username": user}
    form["password"] = USERS[user]
    response = requests.post(f"{base}/auth/oauth/v2/token", data=form, verify=ca, timeout=5)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def _post_order(base: str, ca: str, token: str, body: bytes) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return requests.post(f"{base}/api/v1/order/", data=body, headers=headers, verify=ca, timeout=5)


def _sell_body() -> bytes:
    """A sell that crosses the captured buy, with a baseline, as the official client sends one."""
    sell: dict[str, Any] = json.loads(CAPTURED_BUY)
    sell.update(side="sell", price=0.5, power=1400.0)
    sell["baseline"] = {
        "metering_id": "m-1",
        "created_at": "2019-08-24T14:15:00Z",
        "reading_start": "2019-08-24T14:15:00Z",
        "reading_end": "2019-08-24T14:30:00Z",
        "resolution": 1,
        "unit_measured": "kWh",
        "direction": "up",
        "quality": "measured",
        "energy_product": "flex",
        "data_points": [{"2019-08-24T14:15:00Z": 1}],
    }
    return json.dumps(sell).encode()


async def test_the_official_rest_client_places_the_captured_order_unchanged(
    sandbox: Sandbox,
) -> None:
    base, ca = sandbox.base_url, str(sandbox.running.ca)

    def official_rest_client() -> requests.Response:
        return _post_order(base, ca, _token(base, ca, "alice"), CAPTURED_BUY)

    response = await trio.to_thread.run_sync(official_rest_client)
    assert response.status_code == 200
    order = response.json()
    assert order["status"] == "matching_active"
    assert order["power"] == 1400.0
    assert order["location"] == {"location_id": [None], "country_code": "CH"}


async def test_the_official_websocket_client_gets_control_then_live_trade_events(
    sandbox: Sandbox,
) -> None:
    base, ca = sandbox.base_url, str(sandbox.running.ca)
    ws_base = sandbox.running.ws_url

    def official_ws_client() -> list[dict[str, Any]]:
        token = _token(base, ca, "alice")
        ws = websocket.create_connection(
            f"{ws_base}/api/v1/ws/trade/",
            header=[f"Authorization: Bearer {token}"],
            origin=base,
            sslopt={"cert_reqs": ssl.CERT_NONE},  # as the official client: checks off
            timeout=5,
        )
        try:
            frames = [json.loads(ws.recv())]
            ws.ping()  # the official client pings every second; the server must not mind
            assert _post_order(base, ca, token, CAPTURED_BUY).status_code == 200
            bob = _token(base, ca, "bob")
            assert _post_order(base, ca, bob, _sell_body()).status_code == 200
            while len(frames) < 5:
                frames.append(json.loads(ws.recv()))
            return frames
        finally:
            ws.close()

    frames = await trio.to_thread.run_sync(official_ws_client)
    assert frames[0] == {
        "type": "control",
        "status": "success",
        "data": {"message": "Connected to the WebSocket API"},
    }
    kinds = [(f["type"], f.get("name")) for f in frames[1:]]
    assert kinds == [
        ("order_status_update", "accepted"),
        ("order_status_update", "matching_active"),
        ("contract_status_update", "created"),
        ("order_status_update", "filled"),
    ]
    assert all(f["data"]["order_id"] for f in frames[1:] if f["type"] == "order_status_update")


async def test_the_official_websocket_client_reads_the_public_ticker_without_trusting_the_cert(
    sandbox: Sandbox,
) -> None:
    ws_base = sandbox.running.ws_url

    def public_ticker() -> dict[str, Any]:
        ws = websocket.create_connection(
            f"{ws_base}/api/v1/ws/ticker",
            sslopt={"cert_reqs": ssl.CERT_NONE},
            origin=sandbox.base_url,
            timeout=5,
        )
        try:
            frame: dict[str, Any] = json.loads(ws.recv())
            return frame
        finally:
            ws.close()

    assert (await trio.to_thread.run_sync(public_ticker))["type"] == "control"
